"""Pseudo-labelling on real MNIST: 1,000 labelled images, the other 59,000 unlabelled.

Per seed, 1,000 of the 60,000 training images are drawn as the labelled set; the labels of the
other 59,000 are thrown away. No other label is used anywhere, by default:

    teacher     the CNN of `keras_kd.demo.cli.build_teacher` behind random translations and rotations
                (data augmentation), trained on the 1,000 labelled images (`--teacher-epochs`).
                A bigger model with augmentation where the labels are is the realistic source of a
                teacher in this setting; `--teacher-labels all` trains it on all 60,000 labels
                instead (a teacher from elsewhere, e.g. trained on a related labelled set).

The student is the demo's MLP (`keras_kd.demo.cli.build_student`, 128 hidden units), trained from
the same initial weights in every configuration:

    labelled only   the 1,000 labelled images (`--labelled-epochs`)
    + hard          + the 59,000 with the teacher's class ids, pseudo_label(soft=False)
    + hard q=0.9    + only those the teacher gives a top probability >= 0.9 (`--threshold`)
    + soft          + the 59,000 with the teacher's probabilities (categorical cross-entropy;
                    the 1,000 real labels one-hot), pseudo_label(soft=True)
    distiller       keras_kd.Distiller(teacher, student, T=4): all 60,000 images as unlabelled
                    batches (the soft term alone), then the 1,000 labelled ones (alpha=0.1),
                    alternating each epoch

The pseudo-labelled configurations and the distiller train for `--epochs` epochs of the 60,000
images. Prints accuracy on the 10,000 test images (mean, std, min, max over seeds), the teacher's,
and how many pseudo-labels the threshold kept and how many of them are right.

    KERAS_BACKEND=jax python benchmarks/mnist_pseudo_label.py --seeds 0 1 2 --json pseudo_label.json
"""

import argparse
import json
import os
import sys
import time

CONFIGS = ("labelled only", "+ hard", "+ hard q=0.9", "+ soft", "distiller")


def augmented(keras, model):
    """`model` behind random translations and rotations, to train it; `model` itself stays plain (fast inference)."""
    augment = [keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomRotation(0.05)]
    return keras.Sequential([keras.Input((28, 28, 1)), *augment, model], name=f"augmented_{model.name}")


def run_seed(seed, args, data):
    import keras
    import numpy as np

    import keras_kd
    from keras_kd.demo.cli import accuracy, build_student, build_teacher

    (x_train, y_train), (x_test, y_test) = data
    order = np.random.default_rng(seed).permutation(len(x_train))
    labelled, unlabelled = order[: args.labelled], order[args.labelled :]
    x_lab, y_lab = x_train[labelled], y_train[labelled]
    x_unl = x_train[unlabelled]  # its labels are only used to score the pseudo-labels

    def sparse():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    teacher = build_teacher()
    trainer = augmented(keras, teacher)
    trainer.compile(keras.optimizers.Adam(1e-3), sparse())
    if args.teacher_labels == "all":
        trainer.fit(x_train, y_train, batch_size=128, epochs=2, verbose=0)
    else:
        trainer.fit(x_lab, y_lab, batch_size=64, epochs=args.teacher_epochs, verbose=0)
    result = {"seed": seed, "teacher_accuracy": accuracy(teacher, x_test, y_test), "configs": {}}
    result["teacher_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    soft = keras_kd.recipes.pseudo_label(teacher, x_unl, soft=True, batch_size=256, verbose=0)
    hard = keras_kd.recipes.pseudo_label(teacher, x_unl, soft=False, batch_size=256, verbose=0)
    sure = keras_kd.recipes.pseudo_label(
        teacher, x_unl, threshold=args.threshold, soft=False, batch_size=256, verbose=0
    )
    result["pseudo_label_seconds"] = time.perf_counter() - start
    truth = y_train[unlabelled]
    result["pseudo_labels"] = {
        "hard_correct": float(np.mean(hard.y == truth)),
        "kept": sure.kept,
        "total": sure.total,
        "kept_correct": float(np.mean(sure.y == truth[sure.indices])),
    }
    print(
        f"seed {seed} {sure.summary()}; right: {100 * result['pseudo_labels']['kept_correct']:.2f} % of the kept, "
        f"{100 * result['pseudo_labels']['hard_correct']:.2f} % of all",
        flush=True,
    )

    initial = build_student().get_weights()
    one_hot = np.eye(10, dtype="float32")
    for config in CONFIGS:
        keras.utils.set_random_seed(seed)
        student = build_student()
        student.set_weights(initial)
        t0 = time.perf_counter()
        fit = dict(batch_size=args.batch_size, shuffle=True, verbose=0)
        if config == "distiller":
            distiller = keras_kd.Distiller(teacher, student, temperature=4.0, alpha=0.1)
            distiller.compile(keras.optimizers.Adam(1e-3))
            x_all = np.concatenate([x_lab, x_unl])
            for _ in range(args.epochs):
                distiller.fit(x_all, epochs=1, **fit)  # unlabelled batches: the soft term alone
                distiller.fit(x_lab, y_lab, epochs=1, **fit)
        elif config == "+ soft":
            student.compile(keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(from_logits=True))
            x = np.concatenate([x_lab, soft.x])
            y = np.concatenate([one_hot[y_lab], soft.y])
            student.fit(x, y, epochs=args.epochs, **fit)
        else:
            student.compile(keras.optimizers.Adam(1e-3), sparse())
            if config == "labelled only":
                student.fit(x_lab, y_lab, epochs=args.labelled_epochs, **fit)
            else:
                extra = hard if config == "+ hard" else sure
                student.fit(
                    np.concatenate([x_lab, extra.x]), np.concatenate([y_lab, extra.y]), epochs=args.epochs, **fit
                )
        seconds = time.perf_counter() - t0
        result["configs"][config] = {"test_accuracy": accuracy(student, x_test, y_test), "seconds": seconds}
        print(
            f"seed {seed} {config:14s} {100 * result['configs'][config]['test_accuracy']:.2f} %  {seconds:.0f} s",
            flush=True,
        )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), help="set before keras is imported")
    parser.add_argument("--data-dir", help="TensorFlow Datasets data directory holding a prepared mnist")
    parser.add_argument("--labelled", type=int, default=1000)
    parser.add_argument("--teacher-labels", choices=("labelled", "all"), default="labelled")
    parser.add_argument("--teacher-epochs", type=int, default=60, help="over the labelled images")
    parser.add_argument("--labelled-epochs", type=int, default=60, help="of the labelled-only student")
    parser.add_argument("--epochs", type=int, default=5, help="of the students on all 60,000 images")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=64)
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
    kept = np.array([r["pseudo_labels"]["kept"] / r["pseudo_labels"]["total"] for r in results])
    print(
        f"\nbackend {keras.backend.backend()}, data {data.source}, seeds {args.seeds}, {args.labelled} labelled "
        f"images, teacher on {args.teacher_labels} labels, students {args.epochs} epochs over 60,000 images "
        f"({args.labelled_epochs} for labelled only), batch {args.batch_size}; wall time {wall:.0f} s"
    )
    print(
        f"teacher {teacher.mean():.2f} +- {teacher.std():.2f} %; threshold {args.threshold} kept "
        f"{100 * kept.mean():.1f} % of the unlabelled images"
    )
    acc = {c: 100 * np.array([r["configs"][c]["test_accuracy"] for r in results]) for c in CONFIGS}
    print(f"{'student test accuracy (%)':<28}{'mean':>8}{'std':>7}{'min':>8}{'max':>8}   per seed")
    summary = {}
    for name, values in acc.items():
        summary[name] = {"mean": float(values.mean()), "std": float(values.std()), "per_seed": values.tolist()}
        per_seed = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<28}{values.mean():8.2f}{values.std():7.2f}{values.min():8.2f}{values.max():8.2f}   {per_seed}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {"args": vars(args), "wall_seconds": wall, "results": results, "summary": summary}, file, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
