"""Step time of the on-policy loop's `train_on_batch` steps against the same steps inside one `fit` (issue 19).

What. `Distiller(on_policy=...).fit(prompts)` cannot use Keras's `fit` loop: per batch it writes the
completions with the current student, then trains with `distiller.train_on_batch(x, y,
sample_weight=w, return_dict=True)` and reads the logs as floats (`keras_kd/on_policy/loop.py`). On
JAX this costs more than a step of `fit`: `fit` keeps the training state (trainable, non-trainable,
optimizer and metric variable values) apart from the model's variables for the whole epoch and
dispatches the next step while the current one runs, whereas every `train_on_batch` gathers the
state from the variables, runs the step, writes every value back into its variable
(`jax_state_sync`) and converts the logs to NumPy, which waits for the step to finish. TensorFlow and
PyTorch have no such state sync, but `train_on_batch` still skips `fit`'s data pipeline and pays its
own per-call work. This script measures what the loop's way of stepping costs, generation left out.

How. Per backend (one per process), on fixed token batches shaped as the on-policy loop makes them
(`keras_kd.on_policy.sequences.training_batch`: `x = {"token_ids", "padding_mask"}`, `y` the next
tokens, `sample_weight` 1.0 on the completion's predictions, 0.0 on the prompt's and on padding),
one `keras_kd.Distiller(teacher, student, temperature=1.0, alpha=0.0, soft_loss="reverse_kl")`
(chunk size the default, "auto"), compiled with `AdamW`, runs the same N steps two ways:

    F   one `distiller.fit(x, y, sample_weight=w, batch_size=B, epochs=1, shuffle=False, verbose=0)`
        over the N batches (N * B rows): ms/step = wall time of the call / N (fit's per-call set-up
        and tear-down included, spread over the N steps)
    T   N calls `logs = distiller.train_on_batch(x_i, y_i, sample_weight=w_i, return_dict=True)`,
        each followed by `{k: float(v) for k, v in logs.items()}`, as the on-policy loop does:
        ms/step = wall time of the N calls / N

Both end by reading a student weight to NumPy (on JAX: waits until the last step is done). F also
reports a steady-state figure, `F_steady` = the window from the start of its second batch to
`on_train_end` (each read in a callback after waiting for the work dispatched so far) / (N - 1):
steps 1 .. N-1 and the end of the epoch, without the call's set-up, step 0 and tear-down, i.e. what
a step of a long epoch costs. Teacher and student are KerasHub Llama 3 causal LMs built from config
(no download; random seeded float32 weights, tied embeddings, `preprocessor=None`). Both ways train
the same distiller (one compiled step, one set of variables), each warmed up once (compilation,
first-batch checks); then `--rounds` rounds time F and T once each, in a seeded random order per
round. Reported: per round the ratios T/F, T/F_steady and T/F_cpu (process CPU time, which a busy
machine inflates less than wall time), their medians over rounds, the median ms/step of each way;
on JAX also the ms per step that T spends inside `jax_state_sync` (a timer around the method) and
the number of variables it writes back (`state_variables`: the teacher's weights are among the
non-trainable ones). Compute threads are pinned (`--threads`, default 1) as in `step_overhead.py`,
and glibc's malloc thresholds fixed (`--default-malloc` keeps them). Only ratios are meant to be
compared, never the absolute times, which depend on the machine and its load.

Sizes (`--size`):

    small     hidden 128, intermediate 512, 4 query / 2 key-value heads, vocabulary 4,096, teacher 2
              layers, student 1; batch 8 x 64 positions; N = 20 steps per way per round
    smollm2   SmolLM2-135M's shapes: hidden 576, intermediate 1,536, 9 query / 3 key-value heads,
              vocabulary 49,152, teacher 4 layers, student 2; batch 8 x 128 positions; N = 4

    python benchmarks/on_policy_step_loop.py --backend jax --size small
    python benchmarks/on_policy_step_loop.py --backend all --size smollm2   # one subprocess per backend

Results go to `benchmarks/results/on_policy_step_loop_<backend>_<size>.json`.

Measured on a 2-core AMD EPYC VM shared with other jobs (load average 2-5 on 2 cores while these
ran, so wall times carry a lot of noise: compare the CPU-time ratio too), 1 compute thread, `nice
-n 10`; Keras 3.15.1, KerasHub 0.32.0, JAX 0.10.2, TensorFlow 2.21, PyTorch 2.13:

    KERAS_BACKEND=<backend> nice -n 10 python benchmarks/on_policy_step_loop.py --size small --rounds 21
    KERAS_BACKEND=<backend> nice -n 10 python benchmarks/on_policy_step_loop.py --size smollm2

    backend     size     F ms/step  F_steady  T ms/step   T/F (min-max)       T/F_steady  T/F_cpu
    jax         small        207.0     208.7      220.4   1.052 (0.90-1.25)   1.050       1.031
    tensorflow  small        130.7     119.0      124.5   0.928 (0.49-1.17)   1.001       0.977
    torch       small        195.1     193.5      191.1   0.969 (0.82-1.33)   0.980       1.006
    jax         smollm2     6431.0    6301.6     5709.3   0.927 (0.76-1.04)   0.920       1.006
    tensorflow  smollm2     4438.7    4253.7     4451.3   0.967 (0.84-1.03)   1.046       1.007
    torch       smollm2     8210.0    8238.0     8056.5   0.963 (0.91-1.04)   0.954       1.023

(small: 21 rounds of N = 20 steps; smollm2: 7 rounds of N = 4.) On JAX the state sync itself
(`jax_state_sync`, 59 variables written back per step at small, 104 at smollm2) took 1.9 ms of a
220 ms step at small (0.5 ms of 113 ms in an earlier, quieter 7-round run, where T/F was 1.023) and
1.0 ms of a ~5.7 s step at smollm2: the sync is well under 1 % of a step. All of `train_on_batch`'s
extra per-call work on JAX (gathering the state, the sync, waiting for the logs, which ends the
overlap of Python's dispatch with the step) comes to about 3 % more CPU time per step at small and
is lost in the noise at smollm2 (T/F_cpu 1.006). On TensorFlow and PyTorch T costs what a step of `fit`
costs. The wall-time ratios at smollm2 below 1 are noise (a step's wall time varied by 1.5x with
the machine's load); the CPU-time ratios are 1.006-1.023. One surprise on TensorFlow: in some `fit`
calls 1-3 s pass idle (no CPU time) after `on_train_end`, before `fit` returns, as its epoch
iterator is released (5 of 7 calls in an earlier run at small, 2 of 21 in the one above, 3 of 7 at
smollm2); a plain Keras model's `fit` does the same. F_steady leaves that out, F does not;
`train_on_batch` never pays it.
"""

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import types
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lm_memory  # noqa: E402
import step_overhead as so  # noqa: E402

SCRIPT = os.path.abspath(__file__)
BACKENDS = ("tensorflow", "jax", "torch")
WAYS = ("F", "T")
SIZES = {
    "small": dict(
        hidden_dim=128,
        intermediate_dim=512,
        query_heads=4,
        kv_heads=2,
        vocabulary=4096,
        teacher_layers=2,
        student_layers=1,
        batch_size=8,
        positions=64,
        steps=20,
    ),
    "smollm2": dict(
        hidden_dim=576,
        intermediate_dim=1536,
        query_heads=9,
        kv_heads=3,
        vocabulary=49152,
        teacher_layers=4,
        student_layers=2,
        batch_size=8,
        positions=128,
        steps=4,
    ),
}
DEFAULT_OUT = os.path.join("benchmarks", "results", "on_policy_step_loop_{backend}_{size}.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_backend = os.environ.get("KERAS_BACKEND") or "all"
    parser.add_argument(
        "--backend",
        choices=BACKENDS + ("all",),
        default=default_backend,
        help="one backend in this process, or 'all' (one subprocess each); default $KERAS_BACKEND, else all",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, help="steps N per way per round (default: the size's)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="intra-op and inter-op threads (default 1)")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the tokens and the round order")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's dynamic malloc thresholds")
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="JSON output; '{backend}' and '{size}' are replaced (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = SIZES[args.size]["steps"]
    if args.rounds < 1 or args.steps < 2 or args.threads < 1:
        parser.error("need --rounds >= 1, --steps >= 2, --threads >= 1")
    return args


# Data: the on-policy loop's training batches, fixed.


def make_batches(np, training_batch, vocabulary, batch_size, positions, steps, seed):
    """`(x, y, w)` of `steps * batch_size` rows as `training_batch` makes them from prompt + completion sequences.

    Each sequence has `positions + 1` token slots: a prompt of the first half, then a completion of
    random length (at least a quarter of the slots), then padding (id 0, mask False).
    """
    rng = np.random.default_rng(seed)
    rows, length = steps * batch_size, positions + 1
    prompt = length // 2
    ends = rng.integers(prompt + max(1, length // 4), length + 1, size=rows)
    slots = np.arange(length)[None, :]
    mask = slots < ends[:, None]
    token_ids = np.where(mask, rng.integers(1, vocabulary, size=(rows, length)), 0).astype("int32")
    completion = mask & (slots >= prompt)
    return training_batch({"token_ids": token_ids, "padding_mask": mask}, completion)


def batch_slices(x, y, w, batch_size, steps):
    """The N batches that `fit(batch_size=B, shuffle=False)` steps through, as separate arrays."""
    out = []
    for i in range(steps):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        out.append(({name: value[rows].copy() for name, value in x.items()}, y[rows].copy(), w[rows].copy()))
    return out


# The two ways.


def build_distiller(keras, keras_hub, keras_kd, dims, learning_rate):
    def causal_lm(layers, name):
        backbone = keras_hub.models.Llama3Backbone(
            vocabulary_size=dims["vocabulary"],
            num_layers=layers,
            num_query_heads=dims["query_heads"],
            num_key_value_heads=dims["kv_heads"],
            hidden_dim=dims["hidden_dim"],
            intermediate_dim=dims["intermediate_dim"],
            tie_word_embeddings=True,
            dtype="float32",
            name=f"{name}_backbone",
        )
        return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None, name=name)

    teacher = causal_lm(dims["teacher_layers"], "teacher")
    student = causal_lm(dims["student_layers"], "student")
    distiller = keras_kd.Distiller(teacher, student, temperature=1.0, alpha=0.0, soft_loss="reverse_kl")
    distiller.compile(optimizer=keras.optimizers.AdamW(learning_rate))
    return distiller


def make_window_callback(keras, sync):
    """Reads the clock at the start of `fit`'s second batch and in `on_train_end`, each after waiting for the work
    dispatched so far (JAX dispatches asynchronously).

    The window holds steps 1 .. N-1 and the end of the epoch (metrics read out; on JAX the state written back), not
    the call's set-up (data adapter, iterator), step 0, nor what happens after `on_train_end` (the epoch iterator
    released as `fit` returns).
    """

    class SteadyWindow(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start = self.end = None

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                sync(self.model)
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            sync(self.model)
            self.end = time.perf_counter()

        def seconds(self):
            return self.end - self.start

    return SteadyWindow


def make_ways(keras, distiller, x, y, w, batches, batch_size, window_cls):
    probe = distiller.student.trainable_variables[0]

    def finish():
        # On JAX the last step may still be running (fit) or its values not yet read: wait for them.
        return float(keras.ops.convert_to_numpy(probe).reshape(-1)[0])

    def run_fit():
        window = window_cls()
        history = distiller.fit(
            x, y, sample_weight=w, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[window]
        )
        finish()
        return float(history.history["loss"][-1]), window.seconds()

    def run_train_on_batch():
        logs = {}
        for x_i, y_i, w_i in batches:
            logs = distiller.train_on_batch(x_i, y_i, sample_weight=w_i, return_dict=True)
            logs = {key: float(value) for key, value in logs.items()}
        finish()
        return logs["loss"], None

    return {"F": run_fit, "T": run_train_on_batch}


class SyncTimer:
    """Accumulates the seconds spent in the distiller's `jax_state_sync` (JAX only) while `active`."""

    def __init__(self, distiller):
        self.seconds, self.calls, self.active = 0.0, 0, False
        original = getattr(distiller, "jax_state_sync", None)
        self.available = original is not None
        if not self.available:
            return

        def timed(model):
            if not self.active:
                return original()
            start = time.perf_counter()
            try:
                return original()
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        distiller.jax_state_sync = types.MethodType(timed, distiller)

    def reset(self):
        self.seconds, self.calls = 0.0, 0


def state_counts(distiller):
    return {
        "trainable": len(distiller.trainable_variables),
        "non_trainable": len(distiller.non_trainable_variables),
        "optimizer": len(distiller.optimizer.variables),
        "metrics": len(distiller.metrics_variables),
    }


def timed(run):
    """`(seconds, process CPU seconds, loss, seconds of the steady window or None)` of one run."""
    gc.collect()
    cpu, start = time.process_time(), time.perf_counter()
    loss, window = run()
    return time.perf_counter() - start, time.process_time() - cpu, loss, window


# One backend, in this process.


def run_backend(args):
    backend = args.backend
    if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
        raise RuntimeError("keras was imported before the backend was chosen; run in a fresh process")
    os.environ["KERAS_BACKEND"] = backend
    thread_info = so.pin_threads(args.threads)
    if not args.default_malloc:
        thread_info.update(so.fix_malloc())
    wall_start = time.perf_counter()
    load_before = os.getloadavg()
    thread_info.update(so.configure_framework_threads(backend, args.threads))

    import keras
    import keras_hub
    import numpy as np

    import keras_kd
    from keras_kd.on_policy.sequences import training_batch

    assert keras.backend.backend() == backend, keras.backend.backend()
    # Random weights: the first batch's near-chance warning says nothing here.
    warnings.filterwarnings("ignore", message=r".* predicts \d+ of the first batch's", category=UserWarning)
    dims = SIZES[args.size]
    keras.utils.set_random_seed(args.seed)
    distiller = build_distiller(keras, keras_hub, keras_kd, dims, args.learning_rate)
    batch_size, steps = dims["batch_size"], args.steps
    x, y, w = make_batches(np, training_batch, dims["vocabulary"], batch_size, dims["positions"], steps, args.seed)
    batches = batch_slices(x, y, w, batch_size, steps)
    ways = make_ways(keras, distiller, x, y, w, batches, batch_size, make_window_callback(keras, so.make_sync(backend)))
    sync_timer = SyncTimer(distiller) if backend == "jax" else None

    warmup = {}
    for way in WAYS:  # compilation, first-batch checks, fit's first data adapter
        warmup[way] = timed(ways[way])[0]
    print(f"[{backend}/{args.size}] warm-up: F {warmup['F']:.1f} s, T {warmup['T']:.1f} s", flush=True)

    order_rng = np.random.default_rng(args.seed + 1)
    rounds = []
    for index in range(args.rounds):
        order = [WAYS[i] for i in order_rng.permutation(len(WAYS))]
        record = {"round": index, "order": order}
        for way in order:
            if sync_timer is not None:
                sync_timer.reset()
                sync_timer.active = way == "T"
            seconds, cpu_seconds, loss, window = timed(ways[way])
            record[f"{way}_ms_per_step"] = 1000 * seconds / steps
            record[f"{way}_cpu_ms_per_step"] = 1000 * cpu_seconds / steps
            record[f"{way}_loss"] = loss
            if way == "F":
                record["F_steady_ms_per_step"] = 1000 * window / (steps - 1)
                record["F_outside_window_ms"] = 1000 * (seconds - window)
            if sync_timer is not None and way == "T":
                sync_timer.active = False
                record["T_sync_ms_per_step"] = 1000 * sync_timer.seconds / steps
                record["T_sync_calls"] = sync_timer.calls
        record["T/F"] = record["T_ms_per_step"] / record["F_ms_per_step"]
        record["T/F_steady"] = record["T_ms_per_step"] / record["F_steady_ms_per_step"]
        record["T/F_cpu"] = record["T_cpu_ms_per_step"] / record["F_cpu_ms_per_step"]
        rounds.append(record)
        print(
            f"[{backend}/{args.size}] round {index + 1}/{args.rounds} ({'/'.join(order)}): "
            f"F {record['F_ms_per_step']:.1f} (steady {record['F_steady_ms_per_step']:.1f})  "
            f"T {record['T_ms_per_step']:.1f} ms/step  T/F {record['T/F']:.3f}  T/F_steady {record['T/F_steady']:.3f}",
            flush=True,
        )

    def median(key):
        return statistics.median(r[key] for r in rounds)

    ratios, steady = [r["T/F"] for r in rounds], [r["T/F_steady"] for r in rounds]
    summary = {
        "F_ms_per_step": median("F_ms_per_step"),
        "F_steady_ms_per_step": median("F_steady_ms_per_step"),
        "F_outside_window_ms": median("F_outside_window_ms"),
        "T_ms_per_step": median("T_ms_per_step"),
        "F_cpu_ms_per_step": median("F_cpu_ms_per_step"),
        "T_cpu_ms_per_step": median("T_cpu_ms_per_step"),
        "T/F": statistics.median(ratios),
        "T/F_min": min(ratios),
        "T/F_max": max(ratios),
        "T/F_steady": statistics.median(steady),
        "T/F_steady_min": min(steady),
        "T/F_steady_max": max(steady),
        "T/F_cpu": statistics.median(r["T/F_cpu"] for r in rounds),
        "T_minus_F_ms_per_step": median("T_ms_per_step") - median("F_ms_per_step"),
    }
    if sync_timer is not None:
        summary["T_sync_ms_per_step"] = median("T_sync_ms_per_step")
        summary["T_sync_share_of_T"] = statistics.median(r["T_sync_ms_per_step"] / r["T_ms_per_step"] for r in rounds)
    result = {
        "benchmark": "on_policy_step_loop",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {
            "backend": backend,
            "size": args.size,
            **{key: value for key, value in dims.items() if key != "steps"},
            "steps": steps,
            "rounds": args.rounds,
            "threads": args.threads,
            "learning_rate": args.learning_rate,
            "seed": args.seed,
            "default_malloc": args.default_malloc,
            "chunk_size": getattr(distiller, "chunk_size", None),
            "tie_word_embeddings": True,
        },
        "method": (
            "F: ms/step = wall time of one distiller.fit(x, y, sample_weight=w, batch_size=B, epochs=1, shuffle=False, "
            "verbose=0) over N batches / N; T: wall time of N train_on_batch(x_i, y_i, sample_weight=w_i, "
            "return_dict=True) calls (logs read as floats, as keras_kd/on_policy/loop.py does) / N; both end by "
            "reading a student weight to NumPy; same distiller, each way warmed up once, F and T in a seeded random "
            "order per round; F_steady: from the start of fit's batch 1 to on_train_end (after a device sync) "
            "/ (N - 1); *_cpu: process CPU time; ratios per round, medians over rounds"
        ),
        "parameters": {
            "teacher": distiller.teacher.count_params(),
            "student": distiller.student.count_params(),
        },
        "state_variables": state_counts(distiller),
        "warmup_seconds": warmup,
        "rounds": rounds,
        "summary": summary,
        "machine": lm_memory.machine_info(),
        "versions": lm_memory.versions(backend),
        "threading": thread_info,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - wall_start,
    }
    out = args.out.format(backend=backend, size=args.size)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    sync = f", of which jax_state_sync {summary['T_sync_ms_per_step']:.2f}" if sync_timer is not None else ""
    print(
        f"[{backend}/{args.size}] F {summary['F_ms_per_step']:.2f} (steady {summary['F_steady_ms_per_step']:.2f}) "
        f"ms/step, T {summary['T_ms_per_step']:.2f} ms/step{sync}; T/F median {summary['T/F']:.3f} "
        f"[{summary['T/F_min']:.3f}, {summary['T/F_max']:.3f}], T/F_steady {summary['T/F_steady']:.3f} "
        f"[{summary['T/F_steady_min']:.3f}, {summary['T/F_steady_max']:.3f}], CPU time T/F {summary['T/F_cpu']:.3f} "
        f"over {args.rounds} rounds; "
        f"wrote {out} (wall {result['wall_s']:.0f} s)",
        flush=True,
    )
    return result


def without_backend(argv):
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--backend":
            skip = True
        elif not token.startswith("--backend="):
            kept.append(token)
    return kept


def run_all(args, argv):
    codes = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend)
        codes[backend] = subprocess.call(
            [sys.executable, SCRIPT, "--backend", backend, *without_backend(argv)], env=env
        )
    print("== summary ==")
    for backend in BACKENDS:
        out = args.out.format(backend=backend, size=args.size)
        if codes[backend] != 0 or not os.path.exists(out):
            print(f"{backend:10s} failed (exit {codes[backend]})")
            continue
        with open(out) as f:
            s = json.load(f)["summary"]
        print(
            f"{backend:10s} F {s['F_ms_per_step']:.2f} (steady {s['F_steady_ms_per_step']:.2f})  "
            f"T {s['T_ms_per_step']:.2f} ms/step  T/F {s['T/F']:.3f}  T/F_steady {s['T/F_steady']:.3f}"
        )
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
