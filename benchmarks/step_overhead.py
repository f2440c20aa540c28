"""Per-step overhead of distillation: ours against the student alone, the teacher alone, and Keras core.

Measures milliseconds per training step, per backend, of

    A   the student's plain `fit` (SparseCategoricalCrossentropy(from_logits=True), Adam)
    A'  a second, identical copy of A: the control (A'/A should be 1)
    B   the teacher's forward pass alone: `teacher.predict` on the same batches, i.e. the
        compiled `predict_step` and the same epoch iterator/data adapter that `fit` uses
    C   `keras_kd.Distiller(teacher, student, temperature=4.0, alpha=0.1).compile(opt).fit(...)`
    K   `keras.distillation.Distiller(teacher, student, LogitsDistillation(4.0, KLDivergence()),
        student_loss_weight=0.1)`, compiled with the same optimizer and student loss

and reports the medians over rounds of the per-round ratios C/(A+B), C/K and A'/A with bootstrap
95 % intervals. Targets: C/(A+B) <= 1.05 and C/K <= 1.00; a control off 1 by more than 2 % makes
the verdicts INCONCLUSIVE. Only ratios are judged, never absolute times.

One sample of an item is the wall time of `--steps` consecutive steps inside one `fit` (or
`predict`) call of `skip + steps + 1` batches over in-memory NumPy arrays, read in a callback's
`on_{train,predict}_batch_begin` at batches `skip` and `skip + steps` after waiting for the work
dispatched so far (JAX dispatches asynchronously). What a call pays once (data adapter and
iterator set-up, the first steps, the state sync and metric read-out at the end of the epoch) lies
outside the window for every item alike; only `*_batch_begin` hooks are overridden, so Keras keeps
its asynchronous dispatch of `*_batch_end` callbacks as in a plain `fit`.

Usage:

    python benchmarks/step_overhead.py                      # all three backends, one subprocess each
    python benchmarks/step_overhead.py --backend jax        # one backend
    python benchmarks/step_overhead.py --quick              # smoke run (< 60 s per backend)

See benchmarks/README.md for the protocol.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
ITEMS = ("A", "A2", "B", "C", "K")
ITEM_LABELS = {
    "A": "A   student fit",
    "A2": "A'  student fit (control copy)",
    "B": "B   teacher predict",
    "C": "C   keras_kd.Distiller fit",
    "K": "K   keras.distillation.Distiller fit",
}
TARGETS = {"C/(A+B)": 1.05, "C/K": 1.00}
CONTROL_TOLERANCE = 0.02
PROTOCOL_MIN_ROUNDS = 15
PROTOCOL_MIN_STEPS = 100
DEFAULT_OUT = os.path.join("benchmarks", "results", "step_overhead_{backend}.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS + ("all",), default="all")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (protocol: >= 15)")
    parser.add_argument("--steps", type=int, default=100, help="steps N per sample (protocol: >= 100)")
    parser.add_argument(
        "--skip-steps",
        type=int,
        default=3,
        help="untimed steps at the start of every call before the timed window",
    )
    parser.add_argument("--warmup-rounds", type=int, default=1, help="untimed rounds after compilation")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="intra-op and inter-op threads (default 1)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the rounds")
    parser.add_argument("--seed", type=int, default=0, help="seeds data, weights, round order, bootstrap")
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="JSON output; '{backend}' is replaced by the backend name (default: %(default)s)",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's dynamic malloc thresholds (see fix_malloc)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 rounds of 20 steps, 200 resamples; verdicts are INCONCLUSIVE",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup_rounds, args.bootstrap = 3, 20, 0, 200
    if args.rounds < 2 or args.steps < 1 or args.skip_steps < 1 or args.threads < 1:
        parser.error("need --rounds >= 2, --steps >= 1, --skip-steps >= 1, --threads >= 1")
    return args


# Thread settings: everything that must happen before a framework is imported.


def pin_threads(threads):
    """Fixes the size of every compute thread pool of the three frameworks, before import.

    - OMP/MKL/OpenBLAS threads (torch's intra-op pool, any BLAS);
    - TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS (set again through tf.config later);
    - XLA_FLAGS `--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=N` for JAX
      (checked: with N=1 a large jitted conv or matmul uses 1.0 CPU-second per second, 2.0
      without the flag on 2 cores).

    CPU affinity is left alone: the Python thread, JAX's dispatch and tf.data's input threads
    may run beside the compute pool, as in any user's `fit`.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    value = str(threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = value
    os.environ["TF_NUM_INTRAOP_THREADS"] = value
    os.environ["TF_NUM_INTEROP_THREADS"] = value
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    xla_flags = os.environ.get("XLA_FLAGS", "")
    xla_flags += f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = xla_flags.strip()
    return {
        "threads": threads,
        "cpu_affinity": cpus or None,
        "cpus_available": len(cpus) or os.cpu_count(),
        "env": {
            name: os.environ[name]
            for name in (
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS",
                "XLA_FLAGS",
            )
        },
    }


def fix_malloc():
    """Fixes glibc's malloc thresholds so that large tensors are reused, not re-faulted.

    By default glibc serves allocations above a *dynamic* threshold with mmap and returns them
    on free, so depending on the allocation history a step re-faults megabytes of fresh pages.
    On PyTorch (CPU tensors come from malloc) the teacher's activations cost 0 to ~2,400 minor
    page faults per step that way, and `teacher.predict` swung between ~15 and ~30 ms/step with
    the history of what ran before it. A fixed mmap threshold (32 MiB, glibc's maximum) and a
    high trim threshold make every item reuse heap memory after warm-up. Linux/glibc only;
    elsewhere this does nothing and says so.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
    except (OSError, AttributeError):
        ok = False
    return {"mallopt": "M_MMAP_THRESHOLD=32MiB, M_TRIM_THRESHOLD=1GiB" if ok else "unavailable"}


def configure_framework_threads(backend, threads):
    """The settings that need the framework imported (before it runs any op)."""
    settings = {}
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        settings["tf_intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        settings["tf_inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
        settings["torch_num_threads"] = torch.get_num_threads()
        settings["torch_num_interop_threads"] = torch.get_num_interop_threads()
    elif backend == "jax":
        import jax

        settings["jax_devices"] = [str(d) for d in jax.devices()]
    return settings


# Models and the five timed items.


def build_teacher(keras):
    """An MNIST-style CNN (strided convolutions): ~1 MMAC per example, ~0.13 GMAC per batch of 128."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, strides=2, activation="relu", name="t_conv1"),
            layers.Conv2D(64, 3, strides=2, activation="relu", name="t_conv2"),
            layers.Flatten(name="t_flatten"),
            layers.Dense(128, activation="relu", name="t_dense"),
            layers.Dense(10, name="t_logits"),
        ],
        name="teacher",
    )


def build_student(keras):
    """A small CNN (one narrow conv, one small dense layer)."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(8, 3, strides=2, activation="relu", name="s_conv"),
            layers.Flatten(name="s_flatten"),
            layers.Dense(32, activation="relu", name="s_dense"),
            layers.Dense(10, name="s_logits"),
        ],
        name="student",
    )


def make_items(keras, keras_kd, teacher, student_weights, x, y, batch_size):
    """Returns `{name: (model, run(steps) -> None)}`; every run is a full fit/predict call."""

    def student_copy():
        student = build_student(keras)
        student.set_weights(student_weights)
        return student

    def optimizer():
        return keras.optimizers.Adam(learning_rate=1e-3)

    def hard_loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    student_a = student_copy()
    student_a.compile(optimizer=optimizer(), loss=hard_loss())
    student_a2 = student_copy()
    student_a2.compile(optimizer=optimizer(), loss=hard_loss())

    ours = keras_kd.Distiller(teacher, student_copy(), temperature=4.0, alpha=0.1)
    ours.compile(optimizer())

    core = keras.distillation.Distiller(
        teacher=teacher,
        student=student_copy(),
        distillation_losses=keras.distillation.LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence()),
        student_loss_weight=0.1,
    )
    core.compile(optimizer=optimizer(), loss=hard_loss())

    def fitter(model):
        return make_fitter(model, x, y, batch_size)

    def run_teacher(steps, callbacks):
        teacher.predict(x, batch_size=batch_size, steps=steps, verbose=0, callbacks=callbacks)

    return {
        "A": (student_a, fitter(student_a)),
        "A2": (student_a2, fitter(student_a2)),
        "B": (teacher, run_teacher),
        "C": (ours, fitter(ours)),
        "K": (core, fitter(core)),
    }


def make_fitter(model, x, y, batch_size):
    """`run(steps, callbacks)`: one `fit` call of `steps` batches over the in-memory arrays, in order."""

    def run(steps, callbacks):
        model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=1,
            steps_per_epoch=steps,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )

    return run


def make_window_class(keras, sync):
    """A callback class that times steps `[start, start + steps)` of one `fit`/`predict` call.

    It reads the clock in `on_{train,predict}_batch_begin` of batches `start` and
    `start + steps`, after waiting for all work dispatched so far (`sync`). Only `*_batch_begin`
    hooks are overridden, so Keras keeps dispatching its own `*_batch_end` callbacks
    asynchronously exactly as in a plain `fit`. (Defined here because `keras` is imported late.)
    """

    class StepWindow(keras.callbacks.Callback):
        def __init__(self, start, steps):
            super().__init__()
            self.start, self.stop = start, start + steps
            self.t_start = self.t_stop = None
            self.cpu_start = self.cpu_stop = None

        def _mark(self, batch):
            if batch == self.start:
                sync(self.model)
                self.t_start, self.cpu_start = time.perf_counter(), time.process_time()
            elif batch == self.stop:
                sync(self.model)
                self.t_stop, self.cpu_stop = time.perf_counter(), time.process_time()

        def on_train_batch_begin(self, batch, logs=None):
            self._mark(batch)

        def on_predict_batch_begin(self, batch, logs=None):
            self._mark(batch)

        def elapsed(self):
            if self.t_start is None or self.t_stop is None:
                raise RuntimeError("the timing window was not reached; pass more steps")
            return self.t_stop - self.t_start, self.cpu_stop - self.cpu_start

    return StepWindow


def make_sync(backend):
    """Waits for every computation dispatched so far; needed where dispatch is asynchronous.

    JAX dispatches jitted steps asynchronously: block on the state that the previous step
    returned (`model._jax_state`, which Keras sets after every step so that callbacks can read
    it; every array in it is an output of the jitted step). Keras stores it as a tracked
    dict/list, which JAX does not treat as a pytree (`jax.block_until_ready` would return at
    once), so its arrays are collected by hand. TensorFlow's eager calls of a `tf.function` and
    PyTorch's eager ops on CPU return only when done.
    """
    if backend == "jax":
        import jax

        def sync(model):
            arrays = list(_leaves(getattr(model, "_jax_state", None)))
            if not arrays:
                raise RuntimeError("no JAX state to wait for; the timing window would be wrong")
            jax.block_until_ready(arrays)

        return sync
    return lambda model: None


def _leaves(structure):
    if isinstance(structure, dict):
        for value in structure.values():
            yield from _leaves(value)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            yield from _leaves(value)
    elif structure is not None:
        yield structure


def sample(window_cls, run, steps, skip_steps):
    """One sample: ms/step of steps `skip_steps .. skip_steps + steps - 1` of one call."""
    gc.collect()
    window = window_cls(skip_steps, steps)
    start = time.perf_counter()
    run(skip_steps + steps + 1, [window])
    call_s = time.perf_counter() - start
    wall_s, cpu_s = window.elapsed()
    return {
        "ms_per_step": 1000.0 * wall_s / steps,
        "cpu_ms_per_step": 1000.0 * cpu_s / steps,
        "call_s": call_s,
    }


# Statistics.


def ratio_series(rounds):
    ms = {name: [r["samples"][name]["ms_per_step"] for r in rounds] for name in ITEMS}
    return {
        "C/(A+B)": [c / (a + b) for c, a, b in zip(ms["C"], ms["A"], ms["B"])],
        "C/K": [c / k for c, k in zip(ms["C"], ms["K"])],
        "A'/A": [a2 / a for a2, a in zip(ms["A2"], ms["A"])],
    }


def bootstrap_median(np, values, resamples, rng):
    values = np.asarray(values, dtype=float)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    medians = np.median(values[idx], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(values)), float(low), float(high)


def interval_verdict(met, low, high, target):
    """PASS or FAIL as `met` says, marked when the 95 % interval reaches the other side of `target`."""
    if met:
        return "PASS" + ("" if high <= target else " (interval straddles)")
    return "FAIL" + ("" if low > target else " (interval straddles)")


def summarize(np, rounds, args):
    series = ratio_series(rounds)
    ratios = {}
    for name, values in series.items():
        # The same seed for every ratio: all three are resampled with the same rounds.
        rng = np.random.default_rng(args.seed)
        median, low, high = bootstrap_median(np, values, args.bootstrap, rng)
        ratios[name] = {"median": median, "ci95": [low, high], "per_round": values}
    items = {}
    for name in ITEMS:
        values = np.asarray([r["samples"][name]["ms_per_step"] for r in rounds])
        q1, q3 = np.percentile(values, [25, 75])
        items[name] = {"median_ms": float(np.median(values)), "iqr_ms": [float(q1), float(q3)]}

    control = ratios["A'/A"]["median"]
    below_protocol = args.rounds < PROTOCOL_MIN_ROUNDS or args.steps < PROTOCOL_MIN_STEPS
    control_ok = abs(control - 1.0) <= CONTROL_TOLERANCE
    verdicts = {}
    for name, target in TARGETS.items():
        median = ratios[name]["median"]
        low, high = ratios[name]["ci95"]
        if below_protocol:
            verdict, reason = (
                "INCONCLUSIVE",
                (
                    f"below protocol ({args.rounds} rounds x {args.steps} steps; needs >= "
                    f"{PROTOCOL_MIN_ROUNDS} x {PROTOCOL_MIN_STEPS})"
                ),
            )
        elif not control_ok:
            verdict, reason = (
                "INCONCLUSIVE",
                (f"control A'/A median {control:.3f} is off 1 by more than {CONTROL_TOLERANCE:.0%}"),
            )
        elif median <= target:
            verdict = "PASS"
            reason = "interval within target" if high <= target else "median within target; interval straddles it"
        else:
            verdict = "FAIL"
            reason = "interval above target" if low > target else "median above target; interval straddles it"
        verdicts[name] = {"target": target, "verdict": verdict, "reason": reason}
    return {"items": items, "ratios": ratios, "verdicts": verdicts, "control_ok": control_ok}


def format_table(backend, summary, meta):
    lines = []
    lines.append(
        f"== {backend}  ({meta['rounds']} rounds x {meta['steps']} steps, batch {meta['batch_size']}, "
        f"{meta['threads']} threads, device {meta['device']}) =="
    )
    lines.append(f"{'item':40s} {'median ms/step':>15s} {'IQR':>17s}")
    for name in ITEMS:
        item = summary["items"][name]
        q1, q3 = item["iqr_ms"]
        lines.append(f"{ITEM_LABELS[name]:40s} {item['median_ms']:15.3f} {q1:8.3f}-{q3:<8.3f}")
    lines.append("")
    lines.append(f"{'ratio (per round)':18s} {'median':>8s} {'95% CI':>19s} {'target':>8s}  verdict")
    for name in ("C/(A+B)", "C/K", "A'/A"):
        ratio = summary["ratios"][name]
        low, high = ratio["ci95"]
        if name in summary["verdicts"]:
            verdict = summary["verdicts"][name]
            tail = f"<= {verdict['target']:.2f}  {verdict['verdict']} ({verdict['reason']})"
        else:
            status = "ok" if summary["control_ok"] else "OFF"
            tail = f"1+-{CONTROL_TOLERANCE:.2f}  control {status}"
        lines.append(f"{name:18s} {ratio['median']:8.3f} [{low:8.3f}, {high:8.3f}] {tail}")
    return "\n".join(lines)


# One backend, in this process.


def run_backend(args):
    backend = args.backend
    if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
        raise RuntimeError("keras was imported before the backend was chosen; run in a fresh process")
    os.environ["KERAS_BACKEND"] = backend
    thread_info = pin_threads(args.threads)
    if not args.default_malloc:
        thread_info.update(fix_malloc())
    wall_start = time.perf_counter()
    load_before = os.getloadavg()
    thread_info.update(configure_framework_threads(backend, args.threads))

    import keras
    import numpy as np

    import keras_kd

    assert keras.backend.backend() == backend, keras.backend.backend()
    keras.utils.set_random_seed(args.seed)
    data_rng = np.random.default_rng(args.seed)
    # Every call runs skip + steps + 1 batches: the window ends at the start of the last one.
    n = (args.skip_steps + args.steps + 1) * args.batch_size
    x = data_rng.random((n, 28, 28, 1), dtype=np.float32)
    y = data_rng.integers(0, 10, size=(n,)).astype("int32")

    teacher = build_teacher(keras)
    student_weights = build_student(keras).get_weights()
    items = make_items(keras, keras_kd, teacher, student_weights, x, y, args.batch_size)

    # Warm-up: traces/compiles every function both call lengths use, then untimed rounds.
    window_cls = make_window_class(keras, make_sync(backend))
    compile_start = time.perf_counter()
    for _, run in items.values():
        run(args.skip_steps + 2, [])
    compile_s = time.perf_counter() - compile_start
    for _ in range(args.warmup_rounds):
        for _, run in items.values():
            sample(window_cls, run, args.steps, args.skip_steps)

    order_rng = np.random.default_rng(args.seed + 1)
    rounds = []
    for index in range(args.rounds):
        order = [ITEMS[i] for i in order_rng.permutation(len(ITEMS))]
        samples = {name: sample(window_cls, items[name][1], args.steps, args.skip_steps) for name in order}
        rounds.append({"round": index, "order": order, "samples": samples})
        ms = "  ".join(f"{name}={samples[name]['ms_per_step']:.2f}" for name in ITEMS)
        print(f"[{backend}] round {index + 1:2d}/{args.rounds}: {ms} ms/step", flush=True)

    summary = summarize(np, rounds, args)
    device = "cpu"
    meta = {
        "backend": backend,
        "device": device,
        "rounds": args.rounds,
        "steps": args.steps,
        "skip_steps": args.skip_steps,
        "warmup_rounds": args.warmup_rounds,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "default_malloc": args.default_malloc,
        "bootstrap_resamples": args.bootstrap,
        "seed": args.seed,
        "quick": args.quick,
    }
    result = {
        "benchmark": "step_overhead",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": meta,
        "method": (
            "ms/step = wall time from the start of batch skip_steps to the start of batch "
            "skip_steps + steps of one fit/predict call of skip_steps + steps + 1 batches over "
            "in-memory NumPy arrays (clock read in on_*_batch_begin after a device sync), / steps; "
            "items in random order each round; ratios per round"
        ),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "keras": keras.__version__,
            "keras_kd": getattr(keras_kd, "__version__", None),
            "numpy": np.__version__,
            "framework": _framework_version(backend),
            "threading": thread_info,
            "jit_compile": {name: bool(model.jit_compile) for name, (model, _) in items.items()},
            "params": {"teacher": teacher.count_params(), "student": items["A"][0].count_params()},
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            "compile_and_first_calls_s": compile_s,
            "wall_s": time.perf_counter() - wall_start,
        },
        "rounds": rounds,
        "summary": summary,
    }
    print(format_table(backend, summary, meta), flush=True)
    out = args.out.format(backend=backend)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"[{backend}] wrote {out}; wall {result['environment']['wall_s']:.0f} s", flush=True)
    return result


def _framework_version(backend):
    if backend == "tensorflow":
        import tensorflow as tf

        return {"tensorflow": tf.__version__}
    if backend == "jax":
        import jax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
    import torch

    return {"torch": torch.__version__}


# All backends, each in a fresh subprocess (KERAS_BACKEND must be set before keras is imported).


def run_all(args, argv):
    passthrough = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--backend":
            skip = True
            continue
        if token.startswith("--backend="):
            continue
        passthrough.append(token)
    walls = {}
    codes = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend)
        start = time.perf_counter()
        codes[backend] = subprocess.call(
            [sys.executable, os.path.abspath(__file__), "--backend", backend, *passthrough], env=env
        )
        walls[backend] = time.perf_counter() - start
        print(f"[{backend}] exit {codes[backend]}, wall {walls[backend]:.0f} s\n", flush=True)
    print("== summary ==")
    for backend in BACKENDS:
        out = args.out.format(backend=backend)
        if codes[backend] != 0 or not os.path.exists(out):
            print(f"{backend:10s} failed (exit {codes[backend]})")
            continue
        with open(out) as f:
            summary = json.load(f)["summary"]
        parts = []
        for name in ("C/(A+B)", "C/K", "A'/A"):
            ratio = summary["ratios"][name]
            low, high = ratio["ci95"]
            verdict = summary["verdicts"].get(name, {}).get("verdict", "control")
            parts.append(f"{name} {ratio['median']:.3f} [{low:.3f}, {high:.3f}] {verdict}")
        print(f"{backend:10s} " + "; ".join(parts) + f"  (wall {walls[backend]:.0f} s)")
    print(f"total wall {sum(walls.values()):.0f} s")
    return 0 if all(code == 0 for code in codes.values()) else 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.backend == "all":
        return run_all(args, argv)
    run_backend(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
