"""Peak memory and step time of one distillation step of Llama-shaped causal LMs: dense vs chunked loss.

Issue 18. A token-level distillation term over `(batch, positions, vocabulary)` logits needs both
models' full logits, their softmaxes and their gradients at once: at 256,000 tokens and 4,096
positions one float32 logits tensor is 4.2 GB. `Distiller(chunk_size=...)` runs the models' output
heads a chunk of positions at a time instead. This benchmark measures what that buys, per backend:

    models   `keras_hub.models.Llama3CausalLM(backbone=Llama3Backbone(...), preprocessor=None)`, random
             (seeded) float32 weights, hidden 576, intermediate 1536, 9 query and 3 key/value heads
             (SmolLM2-135M's shape), untied embeddings; teacher 4 layers, student 2 layers
    data     batch 1: `{"token_ids": (1, P) int32, "padding_mask": ones (1, P)}`, labels the next
             tokens `(1, P)` int32, random ids
    step     `keras_kd.Distiller(teacher, student, temperature=1.0, alpha=0.5, chunk_size=...)`,
             compiled with `SGD(1e-3)`, `train_on_batch(x, y)`
    modes    dense    `chunk_size=None`: the full logits
             chunked  `chunk_size="auto"` (`--chunk-size N` for an int); each chunk's gradient is
                      computed in the forward pass (the distiller's default, "fused")
             remat    as chunked, with `distiller._chunk_gradients = "remat"` (each chunk recomputed
                      in the backward pass)

Every (backend, mode, vocabulary, positions) runs in a fresh subprocess (this script with `--child`,
`KERAS_BACKEND` set). The child builds and compiles both models, reads its resident memory (VmRSS of
/proc/self/status) as the baseline, resets the kernel's peak counter (/proc/self/clear_refs), runs
one warm-up step (tracing, compilation, the first batch's checks) and `--steps` timed steps, and
prints as its last stdout line a JSON record with the peak resident memory above the baseline
(VmHWM - baseline, warm-up included: `peak_mb_above_baseline`; timed steps only:
`steady_peak_mb_above_baseline`) and the median step time. The parent polls the child's VmRSS
every 0.2 s and kills it above `--limit-gb` ("over limit"; a child whose own peak exceeds the limit
between two polls is recorded so too) or after `--timeout` seconds ("timeout"); a child that dies
otherwise (an exception, the kernel's OOM killer) is "failed: ..." with the tail of its stderr.
Memory grows with the vocabulary and the positions, so once a mode is over the limit (or times
out) at some size, larger sizes of that mode are recorded likewise without running
(`inferred_from` names the run; `--no-skip` runs them). For each configuration the modes run one
after another, their order rotated from one configuration to the next.

Results go to `benchmarks/results/lm_memory_<backend>.json` (rewritten after every run), with the
machine (cores, memory) and the versions; a markdown table per backend (memory and time of each
mode, their ratios to dense) and the largest configuration that dense cannot run within the limit
and chunked can are printed at the end, and again from saved files by `--summarize`.

    python benchmarks/lm_memory.py --backends jax --modes dense chunked
    python benchmarks/lm_memory.py --backends torch --vocabularies 49152 --positions 512 --modes dense chunked remat
    python benchmarks/lm_memory.py --summarize benchmarks/results/lm_memory_*.json

Absolute numbers depend on the machine, the allocator and the framework; compare modes within one
file. Resident memory is the whole process's (CPU): weights, optimizer, activations, framework
caches, compiled code.
"""

import argparse
import datetime
import gc
import importlib.metadata
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_overhead as so  # noqa: E402

SCRIPT = os.path.abspath(__file__)
BACKENDS = ("tensorflow", "jax", "torch")
MODES = ("dense", "chunked", "remat")
DEFAULT_OUT = os.path.join("benchmarks", "results", "lm_memory_{backend}.json")
OVER_LIMIT, TIMEOUT = "over limit", "timeout"
POLL_SECONDS = 0.2
MODEL_FLAGS = ("hidden_dim", "intermediate_dim", "query_heads", "kv_heads", "teacher_layers", "student_layers")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["dense", "chunked"])
    parser.add_argument("--vocabularies", nargs="+", type=int, default=[49152, 128256, 256000])
    parser.add_argument("--positions", nargs="+", type=int, default=[512, 2048, 4096])
    parser.add_argument("--chunk-size", type=int, help="positions per chunk in the chunked modes (default: 'auto')")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up step (median reported)")
    parser.add_argument("--limit-gb", type=float, default=20.0, help="kill a run whose resident memory exceeds this")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="compute threads per framework (default: the framework's own)")
    parser.add_argument("--hidden-dim", type=int, default=576)
    parser.add_argument("--intermediate-dim", type=int, default=1536)
    parser.add_argument("--query-heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the token ids")
    parser.add_argument("--no-skip", action="store_true", help="also run sizes above one a mode could not run")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output; '{backend}' is replaced (%(default)s)")
    parser.add_argument("--summarize", nargs="+", metavar="FILE", help="print the tables of saved result files")
    parser.add_argument("--child", action="store_true", help="internal: one run in this process, JSON on stdout")
    args = parser.parse_args(argv)
    if args.child and (len(args.modes), len(args.vocabularies), len(args.positions)) != (1, 1, 1):
        parser.error("--child runs one mode, one vocabulary and one number of positions")
    if len(args.backends) > 1 and "{backend}" not in args.out and not args.summarize:
        parser.error("with several backends --out needs '{backend}' in it")
    if args.steps < 1 or args.limit_gb <= 0 or args.timeout <= 0:
        parser.error("need --steps >= 1, --limit-gb > 0 and --timeout > 0")
    return args


# /proc readings (Linux).


def proc_status_kb(field, pid="self"):
    """`field` (VmRSS, VmHWM) of /proc/<pid>/status in kB; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Resets VmHWM to the current VmRSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_info():
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    cpu_model = None
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    return {
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "cpu": cpu_model,
        "memory_total_mb": round(total_kb / 1024),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions(backend):
    packages = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}[backend]
    found = {}
    for name in ("keras", "keras-hub", "numpy", *packages):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


# The child: one run.


def build_causal_lm(keras_hub, args, vocabulary, num_layers, name):
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=vocabulary,
        num_layers=num_layers,
        num_query_heads=args.query_heads,
        num_key_value_heads=args.kv_heads,
        hidden_dim=args.hidden_dim,
        intermediate_dim=args.intermediate_dim,
        tie_word_embeddings=False,
        dtype="float32",
        name=f"{name}_backbone",
    )
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None, name=name)


def chunk_argument(mode, chunk_size):
    """The `chunk_size` a mode passes to the distiller."""
    if mode == "dense":
        return None
    return "auto" if chunk_size is None else chunk_size


def supports_chunking(keras_kd):
    return "chunk_size" in inspect.signature(keras_kd.Distiller.__init__).parameters


def make_distiller(keras, keras_kd, teacher, student, mode, chunk_size):
    kwargs = {}
    if supports_chunking(keras_kd):
        kwargs["chunk_size"] = chunk_argument(mode, chunk_size)
    elif mode != "dense":
        raise SystemExit(f"mode {mode!r} needs Distiller(chunk_size=...), which this keras_kd does not have yet")
    distiller = keras_kd.Distiller(teacher, student, temperature=1.0, alpha=0.5, **kwargs)
    if mode == "remat":
        distiller._chunk_gradients = "remat"
    distiller.compile(optimizer=keras.optimizers.SGD(1e-3))
    return distiller


def chunk_positions(mode, chunk_size, vocabulary, positions, distiller=None):
    """Positions per chunk that the mode's `chunk_size` comes to here, if this keras_kd says (None for dense)."""
    try:
        from keras_kd.token_logits import positions_per_chunk
    except ImportError:
        return None
    requested = chunk_argument(mode, chunk_size)
    if requested is None:
        return None
    chunk_bytes = getattr(distiller, "_auto_chunk_bytes", None)  # the backend's "auto" chunk, where it has one
    extra = () if chunk_bytes is None else (chunk_bytes,)
    return min(positions, positions_per_chunk(requested, 1, positions, vocabulary, *extra))


def make_batch(np, vocabulary, positions, seed):
    ids = np.random.default_rng(seed).integers(0, vocabulary, size=(1, positions + 1), dtype=np.int32)
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((1, positions), dtype=np.int32)}
    return x, ids[:, 1:]


def timed_step(distiller, x, y):
    """Seconds of one `train_on_batch` (its logs come back as NumPy: the step has finished) and its loss."""
    start = time.perf_counter()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    return time.perf_counter() - start, float(logs["loss"])


def mb(kb):
    return round(kb / 1024, 1)


def run_child(args):
    thread_info = so.pin_threads(args.threads) if args.threads else {"threads": None}
    import keras
    import keras_hub
    import numpy as np

    import keras_kd

    backend = keras.backend.backend()
    if args.threads:
        thread_info.update(so.configure_framework_threads(backend, args.threads))
    # Random weights and labels: the first batch's near-chance warning says nothing here.
    warnings.filterwarnings("ignore", message=r".* predicts \d+ of the first batch's", category=UserWarning)
    mode, vocabulary, positions = args.modes[0], args.vocabularies[0], args.positions[0]
    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    teacher = build_causal_lm(keras_hub, args, vocabulary, args.teacher_layers, "teacher")
    student = build_causal_lm(keras_hub, args, vocabulary, args.student_layers, "student")
    distiller = make_distiller(keras, keras_kd, teacher, student, mode, args.chunk_size)
    x, y = make_batch(np, vocabulary, positions, args.seed)
    build_seconds = time.perf_counter() - start

    gc.collect()
    baseline_kb = proc_status_kb("VmRSS")
    peak_reset = reset_peak_rss()
    warmup_seconds, _ = timed_step(distiller, x, y)
    warmup_peak_kb = proc_status_kb("VmHWM")
    reset_peak_rss()
    steps = [timed_step(distiller, x, y) for _ in range(args.steps)]
    steady_peak_kb = proc_status_kb("VmHWM")
    peak_kb = max(warmup_peak_kb, steady_peak_kb)
    record = {
        "backend": backend,
        "mode": mode,
        "vocabulary": vocabulary,
        "positions": positions,
        "batch_size": 1,
        "chunk_size": chunk_argument(mode, args.chunk_size),
        "chunk_positions": chunk_positions(mode, args.chunk_size, vocabulary, positions, distiller),
        "status": "ok",
        "baseline_mb": mb(baseline_kb),
        "peak_rss_mb": mb(peak_kb),
        "peak_mb_above_baseline": mb(peak_kb - baseline_kb),
        "steady_peak_mb_above_baseline": mb(steady_peak_kb - baseline_kb) if peak_reset else None,
        "peak_reset": peak_reset,
        "step_seconds": statistics.median(seconds for seconds, _ in steps),
        "step_seconds_all": [seconds for seconds, _ in steps],
        "warmup_seconds": warmup_seconds,
        "build_seconds": build_seconds,
        "loss": steps[-1][1],
        "parameters": {"teacher": teacher.count_params(), "student": student.count_params()},
        "threads": thread_info,
    }
    print(json.dumps(record), flush=True)
    return 0


# The parent: one subprocess per run.


def child_command(args, mode, vocabulary, positions):
    command = [sys.executable, SCRIPT, "--child", "--modes", mode]
    command += ["--vocabularies", str(vocabulary), "--positions", str(positions)]
    command += ["--steps", str(args.steps), "--seed", str(args.seed)]
    for name in MODEL_FLAGS:
        command += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.chunk_size is not None:
        command += ["--chunk-size", str(args.chunk_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def watch(proc, limit_kb, timeout):
    """Polls the child's VmRSS until it exits; kills it above `limit_kb` or after `timeout` s."""
    start, max_kb = time.monotonic(), 0
    while proc.poll() is None:
        max_kb = max(max_kb, proc_status_kb("VmRSS", proc.pid) or 0)
        verdict = OVER_LIMIT if max_kb > limit_kb else TIMEOUT if time.monotonic() - start > timeout else None
        if verdict:
            proc.kill()
            proc.wait()
            return verdict, max_kb
        time.sleep(POLL_SECONDS)
    return None, max_kb


def failure(returncode, stdout, stderr):
    if returncode < 0:
        reason = f"killed by signal {-returncode}" + (" (out of memory?)" if returncode == -9 else "")
    elif "ResourceExhaustedError" in stderr or "OOM when allocating" in stderr:
        reason = "out of memory (the framework could not allocate a tensor)"
    else:
        lines = [line for line in stderr.splitlines() if line.strip()] or ["no output"]
        reason = f"exit {returncode}: {lines[-1].strip()[:200]}" if returncode else "no JSON record on stdout"
    return {"status": f"failed: {reason}", "error_tail": (stderr or stdout)[-3000:]}


def parse_record(stdout):
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def run_one(args, backend, mode, vocabulary, positions):
    """One child run; its record (the child's, or the parent's verdict on it)."""
    limit_kb = args.limit_gb * 1024 * 1024
    env = dict(os.environ, KERAS_BACKEND=backend)
    command = child_command(args, mode, vocabulary, positions)
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        verdict, max_kb = watch(proc, limit_kb, args.timeout)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    base = {"backend": backend, "mode": mode, "vocabulary": vocabulary, "positions": positions, "batch_size": 1}
    base.update(chunk_size=chunk_argument(mode, args.chunk_size), polled_max_rss_mb=mb(max_kb))
    base["wall_seconds"] = round(time.monotonic() - start, 1)
    record = parse_record(stdout) if verdict is None and proc.returncode == 0 else None
    if verdict:
        return {**base, "status": verdict}
    if record is None:
        return {**base, **failure(proc.returncode, stdout, stderr)}
    if record["peak_rss_mb"] > args.limit_gb * 1024:  # above the limit between two polls
        record["status"] = OVER_LIMIT
    return {**base, **record}


def inferred_from(records, mode, vocabulary, positions):
    """An earlier run of `mode`, no larger in either size, that was over the limit or timed out."""
    for record in records:
        smaller = record["vocabulary"] <= vocabulary and record["positions"] <= positions
        if record["mode"] == mode and smaller and record["status"] in (OVER_LIMIT, TIMEOUT):
            return record
    return None


def plan(args):
    """(mode, vocabulary, positions) in running order: sizes ascending, the modes of a size together, rotated."""
    runs = []
    configs = [(v, p) for v in sorted(args.vocabularies) for p in sorted(args.positions)]
    for index, (vocabulary, positions) in enumerate(configs):
        shift = index % len(args.modes)
        runs += [(mode, vocabulary, positions) for mode in args.modes[shift:] + args.modes[:shift]]
    return runs


def run_backend(args, backend):
    out = args.out.format(backend=backend)
    result = {
        "benchmark": "lm_memory",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {name: getattr(args, name) for name in ("modes", "vocabularies", "positions", "chunk_size", "steps")}
        | {"backend": backend, "limit_gb": args.limit_gb, "timeout_s": args.timeout, "threads": args.threads}
        | {name: getattr(args, name) for name in MODEL_FLAGS}
        | {"batch_size": 1, "temperature": 1.0, "alpha": 0.5, "optimizer": "SGD(1e-3)", "seed": args.seed},
        "machine": machine_info(),
        "versions": versions(backend),
        "runs": [],
    }
    for mode, vocabulary, positions in plan(args):
        earlier = None if args.no_skip else inferred_from(result["runs"], mode, vocabulary, positions)
        if earlier:
            record = {"backend": backend, "mode": mode, "vocabulary": vocabulary, "positions": positions}
            record.update(batch_size=1, chunk_size=chunk_argument(mode, args.chunk_size))
            record.update(status=earlier["status"], inferred_from=[earlier["vocabulary"], earlier["positions"]])
        else:
            record = run_one(args, backend, mode, vocabulary, positions)
        result["runs"].append(record)
        print(f"[{backend}] {describe(record)}", flush=True)
        write_json(out, result)
    print(format_summary(result), flush=True)
    print(f"[{backend}] wrote {out}", flush=True)
    return result


def describe(record):
    head = f"{record['mode']:8s} vocabulary {record['vocabulary']:7d} positions {record['positions']:5d}: "
    if record["status"] != "ok":
        return head + record["status"] + (" (inferred)" if "inferred_from" in record else "")
    return head + f"{record['peak_mb_above_baseline']:.0f} MB above baseline, {record['step_seconds']:.2f} s/step"


def write_json(path, result):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


# Tables.


def cell(record, key, digits):
    if record is None:
        return "-"
    if record["status"] != "ok":
        status = "out of memory" if record["status"].startswith("failed: out of memory") else record["status"]
        return status.split(":")[0] + ("*" if "inferred_from" in record else "")
    return f"{record[key]:,.{digits}f}"


def ratio(record, dense, key):
    if record is None or dense is None or record["status"] != "ok" or dense["status"] != "ok" or not dense[key]:
        return "-"
    return f"{record[key] / dense[key]:.3f}"


def format_table(result):
    """Markdown: one row per (vocabulary, positions); each mode's MB and s, and their ratio to dense."""
    runs = {(r["mode"], r["vocabulary"], r["positions"]): r for r in result["runs"]}
    modes = [mode for mode in MODES if any(key[0] == mode for key in runs)]
    others = [mode for mode in modes if mode != "dense"]
    header = ["vocabulary", "positions"]
    for unit in ("MB", "s"):
        header += [f"{mode} {unit}" for mode in modes] + [f"{mode}/dense {unit}" for mode in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for vocabulary, positions in sorted({key[1:] for key in runs}):
        get = {mode: runs.get((mode, vocabulary, positions)) for mode in modes}
        row = [str(vocabulary), str(positions)]
        for key, digits in (("peak_mb_above_baseline", 0), ("step_seconds", 3)):
            row += [cell(get[mode], key, digits) for mode in modes]
            row += [ratio(get[mode], get.get("dense"), key) for mode in others]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def cannot_run(record):
    """Dense could not run within the memory limit: over it (polled, or inferred), or killed by the kernel."""
    status = record["status"]
    return status == OVER_LIMIT or status.startswith(("failed: killed by signal 9", "failed: out of memory"))


def largest_rescued(result, mode="chunked"):
    """The largest (vocabulary x positions) that dense cannot run within the limit and `mode` can."""
    runs = {(r["mode"], r["vocabulary"], r["positions"]): r for r in result["runs"]}
    rescued = [
        runs[(mode, v, p)]
        for (m, v, p), record in runs.items()
        if m == "dense" and cannot_run(record) and runs.get((mode, v, p), {}).get("status") == "ok"
    ]
    return max(rescued, key=lambda r: (r["vocabulary"] * r["positions"], r["positions"]), default=None)


def format_summary(result):
    config, machine = result["config"], result["machine"]
    lines = [
        f"## {config['backend']}: peak MB above baseline and s/step of one distillation step "
        f"(batch 1, limit {config['limit_gb']:g} GB; {machine['cores']} cores, {machine['memory_total_mb']:,} MB)",
        "",
        format_table(result),
        "",
        "(* inferred from a smaller size of the same mode)",
    ]
    for mode in [m for m in MODES if m != "dense" and m in config["modes"]]:
        best = largest_rescued(result, mode)
        where = "none in this grid"
        if best:
            where = (
                f"vocabulary {best['vocabulary']}, positions {best['positions']} "
                f"({mode}: {best['peak_mb_above_baseline']:,.0f} MB above baseline, {best['step_seconds']:.2f} s/step)"
            )
        lines.append(f"largest configuration dense cannot run within the limit and {mode} can: {where}")
    return "\n".join(lines)


def summarize_files(paths):
    for path in paths:
        with open(path) as f:
            print(format_summary(json.load(f)), end="\n\n")
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    if args.summarize:
        return summarize_files(args.summarize)
    for backend in args.backends:
        run_backend(args, backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
