"""Teacher assistants on real MNIST: a tiny student from scratch, distilled directly, and through an assistant.

Per seed: a teacher CNN (`keras_kd.demo.cli.build_teacher`, 422 k parameters) trains on the training
images; then a one-hidden-layer MLP student (`--student-hidden` units, 16 by default: 12.7 k
parameters) is trained three times from the same initial weights, on the same batches in the same
order (`keras_kd.demo.cli.shuffled_batches`; an assistant's second stage continues its sequence), for
`--epochs` epochs:

    scratch     the labels alone (plain fit)
    direct      keras_kd.recipes.progressive(teacher, [student]): distilled from the CNN
    assistant   keras_kd.recipes.progressive(teacher, [assistant, student]): the CNN is distilled
                into an MLP assistant (`--assistant-hidden` units, 64 by default), which is then
                distilled into the student (Mirzadeh et al. 2020); each stage `--epochs` epochs

All distillation uses T=4, alpha=0.1 (`--temperature`, `--alpha`). Prints the accuracy on the
10,000 test images (mean, std, min, max over seeds) and the per-seed differences.

Mirzadeh et al. report that the assistant helps when the teacher-student gap is large. To look
for the gap where it does, shrink the student (`--student-hidden 4`) or widen the assistant.

    KERAS_BACKEND=jax python benchmarks/mnist_progressive.py --seeds 0 1 2 --json progressive.json
    KERAS_BACKEND=jax python benchmarks/mnist_progressive.py --student-hidden 4   # a larger gap
"""

import argparse
import json
import os
import sys
import time

CONFIGS = ("scratch", "direct", "assistant")


def run_seed(seed, args, data):
    import keras
    import numpy as np

    import keras_kd
    from keras_kd.demo.cli import accuracy, build_student, build_teacher, shuffled_batches

    (x_train, y_train), (x_test, y_test) = data
    rows = np.random.default_rng(seed).permutation(len(x_train))[: args.train_images]
    x, y = x_train[rows], y_train[rows]

    def loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def student_model(hidden, name, weights=None):
        model = build_student(hidden)
        model.name = name
        if weights is not None:
            model.set_weights(weights)
        return model

    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    teacher = build_teacher()
    teacher.compile(keras.optimizers.Adam(args.learning_rate), loss())
    teacher.fit(x, y, batch_size=128, epochs=args.teacher_epochs, verbose=0)
    result = {"seed": seed, "teacher_accuracy": accuracy(teacher, x_test, y_test), "configs": {}}
    result["teacher_seconds"] = time.perf_counter() - start
    initial_student = student_model(args.student_hidden, "student").get_weights()
    initial_assistant = student_model(args.assistant_hidden, "assistant").get_weights()
    settings = dict(
        temperature=args.temperature,
        alpha=args.alpha,
        compile=dict(optimizer=keras.optimizers.Adam(args.learning_rate)),
        shuffle=False,  # the batches reshuffle themselves each epoch, from the seed
        cache=args.cache,
        verbose=0,
    )

    for config in CONFIGS:
        keras.utils.set_random_seed(seed)
        student = student_model(args.student_hidden, "student", initial_student)
        start = time.perf_counter()
        if config == "scratch":
            student.compile(keras.optimizers.Adam(args.learning_rate), loss())
            student.fit(shuffled_batches(x, y, args.batch_size, seed), epochs=args.epochs, shuffle=False, verbose=0)
            report = None
        else:
            chain = [student]
            if config == "assistant":
                chain = [student_model(args.assistant_hidden, "assistant", initial_assistant), student]
            batches = shuffled_batches(x, y, args.batch_size, seed)
            _, report = keras_kd.recipes.progressive(teacher, chain, batches, args.epochs, **settings)
        seconds = time.perf_counter() - start
        entry = {"test_accuracy": accuracy(student, x_test, y_test), "seconds": seconds}
        if config == "assistant":
            entry["assistant_accuracy"] = accuracy(chain[0], x_test, y_test)
        if report:
            entry["stages"] = list(report)
        result["configs"][config] = entry
        extra = f" (assistant {100 * entry['assistant_accuracy']:.2f} %)" if "assistant_accuracy" in entry else ""
        print(f"seed {seed} {config:10s} {100 * entry['test_accuracy']:.2f} %{extra}  {seconds:.0f} s", flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), help="set before keras is imported")
    parser.add_argument("--data-dir", help="TensorFlow Datasets data directory holding a prepared mnist")
    parser.add_argument("--train-images", type=int, default=60000, help="training images (a seeded subset)")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the scratch student and of every stage")
    parser.add_argument("--student-hidden", type=int, default=16)
    parser.add_argument("--assistant-hidden", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--cache", action="store_true", help="progressive(..., cache=True): each teacher runs once")
    parser.add_argument("--json", help="also write the per-seed results and the summary here")
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    from keras_kd.demo.datasets import load_mnist

    start = time.perf_counter()
    data = load_mnist(args.data_dir)
    results = [run_seed(seed, args, data) for seed in args.seeds]
    wall = time.perf_counter() - start
    teacher = 100 * np.array([r["teacher_accuracy"] for r in results])
    assistant = 100 * np.array([r["configs"]["assistant"]["assistant_accuracy"] for r in results])
    print(
        f"\nbackend {keras.backend.backend()}, data {data.source}, seeds {args.seeds}, {args.train_images} training "
        f"images, teacher {args.teacher_epochs} epochs, students {args.epochs} epochs per stage, batch "
        f"{args.batch_size}, T={args.temperature}, alpha={args.alpha}, student {args.student_hidden} hidden units, "
        f"assistant {args.assistant_hidden}; wall time {wall:.0f} s"
    )
    print(
        f"teacher CNN {teacher.mean():.2f} +- {teacher.std():.2f} %, assistant {assistant.mean():.2f} +- "
        f"{assistant.std():.2f} %"
    )
    acc = {c: 100 * np.array([r["configs"][c]["test_accuracy"] for r in results]) for c in CONFIGS}
    rows = [*acc.items(), ("assistant - direct", acc["assistant"] - acc["direct"])]
    rows += [
        ("assistant - scratch", acc["assistant"] - acc["scratch"]),
        ("direct - scratch", acc["direct"] - acc["scratch"]),
    ]
    print(f"{'student test accuracy (%)':<28}{'mean':>8}{'std':>7}{'min':>8}{'max':>8}   per seed")
    summary = {}
    for name, values in rows:
        summary[name] = {"mean": float(values.mean()), "std": float(values.std()), "per_seed": values.tolist()}
        per_seed = " ".join(f"{v:+.2f}" if "-" in name else f"{v:.2f}" for v in values)
        print(f"{name:<28}{values.mean():8.2f}{values.std():7.2f}{values.min():8.2f}{values.max():8.2f}   {per_seed}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {"args": vars(args), "wall_seconds": wall, "results": results, "summary": summary}, file, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
