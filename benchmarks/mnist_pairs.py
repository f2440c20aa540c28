"""Feature terms on real MNIST: logits only, + Hint, + AttentionTransfer, + Relational, and scratch.

Per seed: a teacher CNN (conv 32 -> conv 64 -> dense 128) trains on the 60,000 training images;
a small student CNN (conv 8 -> conv 16 -> dense 32, 26,698 parameters) trains on 5,000 labelled
images drawn from the seed, from the same initial weights and on the same batches in every
configuration:

    scratch      the labels alone (plain fit)
    logits       keras_kd.Distiller, T=4, alpha=0.1
    +hint        + Hint("t_block2", "s_block2")  (7x7 maps, 64 vs 16 channels: a 1x1 conv regressor)
    +attention   + AttentionTransfer([("t_block1", "s_block1"), ("t_block2", "s_block2")])
    +relational  + Relational("t_embedding", "s_embedding")  (distance 25, angle 50)

Prints the test accuracy on the 10,000 test images (mean, std, min, max over seeds) and each
configuration's training time relative to `logits` (median over seeds).

    KERAS_BACKEND=tensorflow python benchmarks/mnist_pairs.py --seeds 0 1 2 --json out.json
"""

import argparse
import json
import os
import sys
import time

CONFIGS = ("scratch", "logits", "+hint", "+attention", "+relational")


def build_teacher(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 5, strides=2, padding="same", activation="relu", name="t_block1"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="t_block2"),
            layers.Flatten(),
            layers.Dense(128, activation="relu", name="t_embedding"),
            layers.Dropout(0.3),
            layers.Dense(10, name="t_logits"),
        ],
        name="teacher",
    )


def build_student(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="s_block1"),
            layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="s_block2"),
            layers.Flatten(),
            layers.Dense(32, activation="relu", name="s_embedding"),
            layers.Dense(10, name="s_logits"),
        ],
        name="student",
    )


def pairs_for(keras_kd, config):
    if config == "+hint":
        return [keras_kd.Hint("t_block2", "s_block2")]
    if config == "+attention":
        return [keras_kd.AttentionTransfer([("t_block1", "s_block1"), ("t_block2", "s_block2")])]
    if config == "+relational":
        return [keras_kd.Relational("t_embedding", "s_embedding")]
    return []


def run_seed(seed, args):
    import keras
    import numpy as np

    import keras_kd
    from keras_kd.demo.cli import accuracy, shuffled_batches
    from keras_kd.demo.datasets import load_mnist

    (x_train, y_train), (x_test, y_test) = load_mnist(args.data_dir)
    rows = np.random.default_rng(seed).choice(len(x_train), args.labelled, replace=False)
    x_lab, y_lab = x_train[rows], y_train[rows]

    keras.utils.set_random_seed(seed)
    teacher = build_teacher(keras)
    teacher.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x_train, y_train, batch_size=128, epochs=args.teacher_epochs, verbose=0)
    initial = build_student(keras).get_weights()
    result = {"seed": seed, "teacher_accuracy": accuracy(teacher, x_test, y_test), "configs": {}}

    for config in CONFIGS:
        student = build_student(keras)
        student.set_weights(initial)
        if config == "scratch":
            model = student
            model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        else:
            model = keras_kd.Distiller(teacher, student, temperature=4.0, alpha=0.1, pairs=pairs_for(keras_kd, config))
            model.compile(keras.optimizers.Adam(1e-3))
        batches = shuffled_batches(x_lab, y_lab, args.batch_size, seed)
        start = time.perf_counter()
        model.fit(batches, epochs=args.epochs, shuffle=False, verbose=0)
        seconds = time.perf_counter() - start
        result["configs"][config] = {"test_accuracy": accuracy(student, x_test, y_test), "seconds": seconds}
        print(f"seed {seed} {config:12s} {100 * result['configs'][config]['test_accuracy']:.2f} %  {seconds:.0f} s")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--labelled", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    results = [run_seed(seed, args) for seed in args.seeds]
    teacher = 100 * np.array([r["teacher_accuracy"] for r in results])
    print(
        f"\nbackend {keras.backend.backend()}, seeds {args.seeds}, {args.labelled} labelled images, "
        f"{args.epochs} epochs, batch {args.batch_size}; teacher {teacher.mean():.2f} +- {teacher.std():.2f} %"
    )
    print(f"{'config':14s}{'mean %':>8s}{'std':>7s}{'min':>8s}{'max':>8s}{'time / logits':>15s}")
    summary = {}
    for config in CONFIGS:
        acc = 100 * np.array([r["configs"][config]["test_accuracy"] for r in results])
        time_ratio = np.median([r["configs"][config]["seconds"] / r["configs"]["logits"]["seconds"] for r in results])
        summary[config] = {
            "mean": float(acc.mean()),
            "std": float(acc.std()),
            "min": float(acc.min()),
            "max": float(acc.max()),
            "time_vs_logits": float(time_ratio),
        }
        print(f"{config:14s}{acc.mean():8.2f}{acc.std():7.2f}{acc.min():8.2f}{acc.max():8.2f}{time_ratio:15.2f}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"args": vars(args), "results": results, "summary": summary}, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
