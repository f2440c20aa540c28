"""What offline distillation costs: a cached epoch against the student's own epoch, a cache build against `predict`.

Per backend, with the models of `step_overhead.py` (teacher CNN ~0.13 GMAC per batch of 128, small
student CNN) on random `(28, 28, 1)` inputs, it times whole calls, interleaved in a random order
each round, after one untimed round (compilation excluded):

    S   the student's plain `fit`, one epoch over the data (Adam, cross-entropy from logits)
    D   `keras_kd.Distiller(cache, student)` fitting one epoch on `cache.dataset(batch_size,
        shuffle=True)`: no teacher forward pass; the batches come from the cache's shards
    P   `teacher.predict` over the same data
    B   `keras_kd.TeacherCache.build(teacher, (x, y), fresh directory)` over the same data

and reports the medians of the per-round ratios D/S (target <= 1.10) and B/P (target <= 1.10),
with bootstrap 95 % intervals. The cache lives on the local disk (`--directory`, default a
temporary directory). The data is 12,800 examples of 3 KB: 40 MB of inputs (stored with the
cache, and hashed for the fingerprints) and 0.25 MB of float16 logits.

`--teacher small` is `step_overhead.py`'s teacher (two strided convolutions, 3-4 ms a batch on one
core): its build is dominated by hashing and writing the inputs, not by the forward pass, so it
shows the build's fixed per-batch cost. `--teacher large` (the default) is a VGG-style CNN (~33
MMAC per example, ~4.3 GMAC per batch of 128) for which the forward pass dominates, as it does for
the teachers a cache is meant for. `--student mlp` (Flatten, Dense(128, relu), Dense(10)) instead of
`step_overhead.py`'s small CNN makes a student step so cheap that the cached epoch's own per-batch
cost shows. B times the build alone: deleting the previous build's directory is not timed.

    python benchmarks/cache_overhead.py --backend jax --rounds 10 --out benchmarks/results/cache_overhead_jax.json
    taskset -c 0 python benchmarks/cache_overhead.py --backend tensorflow --teacher small --student mlp --batches 128
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_overhead as so  # noqa: E402

TARGETS = {"D/S": 1.10, "B/P": 1.10}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=so.BACKENDS, default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batches", type=int, default=100, help="batches of data per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--directory", help="where the caches are written (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", choices=("large", "small"), default="large")
    parser.add_argument("--student", choices=("cnn", "mlp"), default="cnn", help="cnn: step_overhead.py's student")
    parser.add_argument("--out", help="write the rounds and the summary as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 10 batches, no verdicts")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batches = 2, 10
    return args


def build_large_teacher(keras):
    """A VGG-style CNN: ~33 MMAC per example, so that the forward pass dominates a cache build."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dense(10),
        ],
        name="large_teacher",
    )


def build_mlp_student(keras):
    """A 128-unit MLP: a student step costs little, so the cached epoch's per-batch overhead shows."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10),
        ],
        name="mlp_student",
    )


def timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    thread_info = so.pin_threads(args.threads)
    thread_info.update(so.fix_malloc())
    thread_info.update(so.configure_framework_threads(args.backend, args.threads))
    import keras
    import numpy as np

    import keras_kd

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    n = args.batches * args.batch_size
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=(n,)).astype("int32")
    teacher = build_large_teacher(keras) if args.teacher == "large" else so.build_teacher(keras)
    root = args.directory or tempfile.mkdtemp(prefix="keras_kd_cache_")
    cache = keras_kd.TeacherCache.build(
        teacher, (x, y), os.path.join(root, "cache"), batch_size=args.batch_size, verbose=0
    )

    build_student = build_mlp_student if args.student == "mlp" else so.build_student
    student = build_student(keras)
    student.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller = keras_kd.Distiller(cache, build_student(keras), temperature=4.0, alpha=0.1)
    distiller.compile(keras.optimizers.Adam(1e-3))
    cached_batches = cache.dataset(batch_size=args.batch_size, shuffle=True, seed=args.seed)
    build_directory = os.path.join(root, "build")

    def build():
        keras_kd.TeacherCache.build(teacher, (x, y), build_directory, batch_size=args.batch_size, verbose=0)

    def remove_build():  # after each timed build, outside the timing
        shutil.rmtree(build_directory)

    items = {
        "S": lambda: student.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0),
        "D": lambda: distiller.fit(cached_batches, epochs=1, verbose=0),
        "P": lambda: teacher.predict(x, batch_size=args.batch_size, verbose=0),
        "B": build,
    }
    after = {"B": remove_build}
    for name, run in items.items():  # compilation and first-epoch effects
        run()
        after.get(name, lambda: None)()
    order_rng = np.random.default_rng(args.seed + 1)
    rounds = []
    for index in range(args.rounds):
        sample = {}
        for name in order_rng.permutation(list(items)):
            sample[name] = timed(items[name])
            after.get(name, lambda: None)()
        rounds.append(sample)
        text = "  ".join(f"{name}={sample[name]:.2f}s" for name in items)
        print(f"[{args.backend}] round {index + 1:2d}/{args.rounds}: {text}", flush=True)
    shutil.rmtree(root, ignore_errors=True)

    seconds = {name: np.array([r[name] for r in rounds]) for name in items}
    print(
        f"== {args.backend}: {args.rounds} rounds, {args.batches} batches of {args.batch_size}, "
        f"{args.threads} thread(s)"
    )
    for name, values in seconds.items():
        print(f"{name}  median {np.median(values):.3f} s per epoch")
    summary = {"items": {name: {"median_s": float(np.median(v))} for name, v in seconds.items()}, "ratios": {}}
    summary["verdicts"] = {}
    for ratio, (a, b) in {"D/S": ("D", "S"), "B/P": ("B", "P")}.items():
        values = seconds[a] / seconds[b]
        median, low, high = so.bootstrap_median(np, values, 2000, np.random.default_rng(args.seed))
        verdict = so.interval_verdict(median <= TARGETS[ratio], low, high, TARGETS[ratio])
        if args.quick:
            verdict = "INCONCLUSIVE (quick)"
        summary["ratios"][ratio] = {"median": median, "ci95": [low, high], "per_round": values.tolist()}
        summary["verdicts"][ratio] = {"target": TARGETS[ratio], "verdict": verdict}
        print(f"{ratio}  {median:.3f} [{low:.3f}, {high:.3f}]  target <= {TARGETS[ratio]:.2f}  {verdict}")
    if args.out:
        result = {
            "benchmark": "cache_overhead",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "config": {**vars(args), "teacher_params": teacher.count_params()},
            "environment": {
                "keras": keras.__version__,
                "framework": so._framework_version(args.backend),
                "threading": thread_info,
            },
            "rounds": [{name: float(value) for name, value in r.items()} for r in rounds],
            "summary": summary,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
