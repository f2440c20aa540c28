"""The `keras-kd` command line: `keras-kd demo` distils a CNN into a small MLP on real MNIST.

The demo's regime (the defaults), and why. A teacher CNN (422k parameters) is
trained on all 60,000 labelled training images for 2 epochs. The student, an MLP
with one hidden layer of 128 units (102k parameters), is trained twice from the
same initial weights, on the same 5,000 labelled images (a random subset drawn
from the seed), with the same batches in the same order for 30 epochs: once from
the labels alone ("scratch") and once by `keras_kd.Distiller` (T=4, alpha=0.1).
Both are scored on the 10,000 test images.

The labelled subset is the deliberate choice. Distillation pays where the
student, trained on its labels, over-fits: Hinton et al. (2015, section 6)
report soft targets preventing over-fitting when only 3 % of the data is
labelled. Measured here (TensorFlow, one seed): on the full training set an
MLP with 800 hidden units gains 0.3 points (98.26 % -> 98.54 %, 15 epochs, T=8,
as in their section 3), small next to seed noise and several minutes on two CPU
cores; a capacity-limited student on a short budget loses (16 hidden units, 3
epochs: 90.9 % -> 88.7 %); an under-trained one gains nothing (64 units, 15
epochs of the subset at batch 128: 92.6 % either way).
Here the scratch student fits its 5,000 images perfectly and stops at 94.4 %
on the test set; the distilled one reaches 96.3 % (3 seeds with TensorFlow,
gain 1.9 +- 0.1 points, `benchmarks/mnist_quality.py`). Part of that gain is
the teacher's knowledge of all 60,000 labels reaching the student through its
soft targets, which is what distillation is for; the students' own budgets
(images, batches, epochs) are identical. The distilled student's time includes
the teacher's forward passes.

`run_demo` is the demo as a function (`benchmarks/mnist_quality.py` calls it).
Keras is imported inside the functions, never at module level, so that
`--backend` takes effect before the first `import keras`.
"""

import argparse
import json
import os
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULTS = {
    "epochs": 30,  # of each student, over the labelled subset
    "teacher_epochs": 2,  # over the full training set
    "labelled": 5000,  # labelled images the students train on
    "hidden": 128,  # units of the student's hidden layer
    "temperature": 4.0,
    "alpha": 0.1,
    "batch_size": 64,  # students; the teacher uses 128
    "learning_rate": 1e-3,
}
# --fast: tiny slices and one epoch, so that a test runs the whole command in seconds.
FAST = {"epochs": 1, "teacher_epochs": 1, "labelled": 256, "teacher_images": 1024, "test_images": 1000}


def build_teacher():
    """The demo's teacher for 28x28x1 images: a strided CNN (two convolutions, a 128-unit layer) returning 10 logits.

    >>> teacher = build_teacher()
    >>> teacher.output_shape
    (None, 10)
    """
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 5, strides=2, padding="same", activation="relu"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(10),
        ],
        name="teacher",
    )


def build_student(hidden=DEFAULTS["hidden"]):
    """The demo's student for 28x28x1 images: an MLP with one hidden layer of `hidden` units, returning 10 logits.

    >>> student = build_student(hidden=32)
    >>> len(student.layers), student.output_shape
    (3, (None, 10))
    """
    import keras
    from keras import layers

    return keras.Sequential(
        [keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(hidden, activation="relu"), layers.Dense(10)],
        name="student",
    )


def shuffled_batches(x, y, batch_size, seed):
    """`(x, y)` batches as a `keras.utils.PyDataset`, reshuffled each epoch by its own RNG.

    Two `fit(..., shuffle=False)` calls on two such datasets of one seed see the same
    batches in the same order on every backend; Keras's own shuffling draws from the global
    RNG, and a plain model's first `fit` draws from it once more than a built distiller's.

    >>> import numpy as np
    >>> x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    >>> a, b = shuffled_batches(x, y, 2, seed=0), shuffled_batches(x, y, 2, seed=0)
    >>> len(a), [a[i][1].tolist() for i in range(3)] == [b[i][1].tolist() for i in range(3)]
    (3, True)
    """
    import keras
    import numpy as np

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self):
            return -(-len(x) // batch_size)

        def __getitem__(self, index):
            rows = self.order[index * batch_size : (index + 1) * batch_size]
            return x[rows], y[rows]

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(x))

    return Batches()


def accuracy(model, x, y):
    """Fraction of `x` whose arg-max logit is the label."""
    import numpy as np

    return float(np.mean(np.argmax(model.predict(x, batch_size=1000, verbose=0), axis=-1) == y))


def run_demo(seed=0, data_dir=None, fast=False, out=None, verbose=2, **settings):
    """Trains teacher, scratch student and distilled student; returns the report dict.

    `settings` override `DEFAULTS` (epochs, teacher_epochs, labelled, hidden,
    temperature, alpha, batch_size, learning_rate). With `out`, writes
    `student.keras` (the distilled student) and `report.json` there. `verbose`:
    0 silent, 1 phase headers and table, 2 also Keras's one line per epoch.
    """
    import keras
    import numpy as np

    from keras_kd import Distiller
    from keras_kd.demo.datasets import load_mnist

    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"Unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **settings, **({k: v for k, v in FAST.items() if k in DEFAULTS} if fast else {})}
    say = print if verbose else (lambda *args, **kwargs: None)
    fit_verbose = 2 if verbose >= 2 else 0
    start = time.perf_counter()

    data = load_mnist(data_dir)
    (x_train, y_train), (x_test, y_test) = data
    if fast:
        x_train, y_train = x_train[: FAST["teacher_images"]], y_train[: FAST["teacher_images"]]
        x_test, y_test = x_test[: FAST["test_images"]], y_test[: FAST["test_images"]]
    labelled = np.random.default_rng(seed).choice(len(x_train), min(cfg["labelled"], len(x_train)), replace=False)
    x_lab, y_lab = x_train[labelled], y_train[labelled]
    say(f"keras-kd demo: backend {keras.backend.backend()}, seed {seed}, MNIST from {data.source}", flush=True)

    def fit(model, *inputs, epochs, **kwargs):
        t0 = time.perf_counter()
        model.fit(*inputs, epochs=epochs, verbose=fit_verbose, **kwargs)
        return time.perf_counter() - t0

    def scratch_compile(model):
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=keras.optimizers.Adam(cfg["learning_rate"]), loss=loss, metrics=["accuracy"])

    keras.utils.set_random_seed(seed)
    teacher = build_teacher()
    scratch = build_student(cfg["hidden"])
    distilled = build_student(cfg["hidden"])
    distilled.set_weights(scratch.get_weights())  # the same initial student twice
    models, seconds = {"teacher": teacher, "student_scratch": scratch, "student_distilled": distilled}, {}

    say(f"[1/3] teacher CNN: {len(x_train):,} labelled images, epochs: {cfg['teacher_epochs']}", flush=True)
    scratch_compile(teacher)
    seconds["teacher"] = fit(teacher, x_train, y_train, epochs=cfg["teacher_epochs"], batch_size=128)

    say(f"[2/3] student from scratch: {len(x_lab):,} labelled images, epochs: {cfg['epochs']}", flush=True)
    scratch_compile(scratch)
    batches = shuffled_batches(x_lab, y_lab, cfg["batch_size"], seed)
    seconds["student_scratch"] = fit(scratch, batches, epochs=cfg["epochs"], shuffle=False)

    say(f"[3/3] student distilled: same images and batches, T={cfg['temperature']}, alpha={cfg['alpha']}", flush=True)
    distiller = Distiller(teacher, distilled, temperature=cfg["temperature"], alpha=cfg["alpha"])
    distiller.compile(optimizer=keras.optimizers.Adam(cfg["learning_rate"]), metrics=["accuracy"])
    batches = shuffled_batches(x_lab, y_lab, cfg["batch_size"], seed)  # the same batches again
    seconds["student_distilled"] = fit(distiller, batches, epochs=cfg["epochs"], shuffle=False)

    report = {
        "backend": keras.backend.backend(),
        "seed": seed,
        "fast": fast,
        "settings": cfg,
        "data_source": data.source,
        "data": {"train_images": len(x_train), "labelled_images": len(x_lab), "test_images": len(x_test)},
        "models": {
            name: {
                "params": int(model.count_params()),
                "test_accuracy": accuracy(model, x_test, y_test),
                "seconds": round(seconds[name], 2),
            }
            for name, model in models.items()
        },
    }
    report["total_seconds"] = round(time.perf_counter() - start, 2)
    say(format_table(report))
    if out is not None:
        os.makedirs(out, exist_ok=True)
        distilled.save(os.path.join(out, "student.keras"))
        with open(os.path.join(out, "report.json"), "w") as file:
            json.dump(report, file, indent=2)
        say(f"wrote {os.path.join(out, 'student.keras')} and {os.path.join(out, 'report.json')}")
    return report


def format_table(report):
    """The report's models as a text table."""
    n_test = report["data"]["test_images"]
    lines = [f"{'model':<20}{'parameters':>12}{f'accuracy ({n_test:,} test)':>24}{'train seconds':>15}"]
    for name, row in report["models"].items():
        acc = f"{100 * row['test_accuracy']:.2f} %"
        lines.append(f"{name:<20}{row['params']:>12,}{acc:>24}{row['seconds']:>15.1f}")
    lines.append(f"total wall time {report['total_seconds']:.1f} s ({report['backend']})")
    return "\n".join(lines)


def _parser():
    parser = argparse.ArgumentParser(prog="keras-kd", description="Knowledge distillation for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="distil a CNN into a small MLP on real MNIST",
        description="Train a teacher CNN, a student MLP from scratch and the same student by "
        "distillation on real MNIST; print a table, write student.keras and report.json.",
    )
    demo.add_argument("--backend", choices=BACKENDS, help="Keras backend (wins over KERAS_BACKEND)")
    demo.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="epochs of each student")
    demo.add_argument("--teacher-epochs", type=int, default=DEFAULTS["teacher_epochs"])
    demo.add_argument("--labelled", type=int, default=DEFAULTS["labelled"], help="labelled images of the students")
    demo.add_argument("--temperature", type=float, default=DEFAULTS["temperature"])
    demo.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="weight of the hard-label loss")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="./kd-demo", help="output directory (default: ./kd-demo)")
    demo.add_argument("--fast", action="store_true", help="tiny subset, 1 epoch (for tests)")
    demo.add_argument("--data-dir", help="TensorFlow Datasets data directory holding a prepared mnist")
    return parser


def _use_backend(backend):
    """Sets KERAS_BACKEND; refuses when keras is already imported with another backend.

    `import keras_kd` does not import keras, so the console script and `python -m keras_kd`
    always reach this point before keras loads.
    """
    os.environ["KERAS_BACKEND"] = backend
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != backend:
        raise RuntimeError(
            f"keras is already imported with backend {keras.backend.backend()!r}; set "
            f"KERAS_BACKEND={backend} before the first `import keras`."
        )


def main(argv=None):
    """Entry point of the `keras-kd` console script and of `python -m keras_kd`."""
    args = _parser().parse_args(argv)
    if args.backend:
        _use_backend(args.backend)
    settings = {k: getattr(args, k) for k in ("epochs", "teacher_epochs", "labelled", "temperature", "alpha")}
    run_demo(seed=args.seed, data_dir=args.data_dir, fast=args.fast, out=args.out, **settings)
    return 0
