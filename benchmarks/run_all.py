"""Runs every ratio benchmark and writes one Markdown table of the results into `docs/benchmarks.md`.

For each backend asked for, in a fresh process each (KERAS_BACKEND is fixed at import):

    step_overhead.py    C/(A+B): a distillation step vs the teacher's forward + the student's step;
                        C/K: our step vs `keras.distillation` (logits only) on the same models
    pair_overhead.py    (CP-C0)/L: what a layer pair adds to a step vs the term's own cost;
                        CP_same/KF: our step with a feature pair vs `keras.distillation` with
                        `FeatureDistillation` on the same pair
    cache_overhead.py   D/S: a cached epoch vs the student's plain epoch;
                        B/P: building the cache vs `teacher.predict` (large teacher)
    fit_overhead.py     the fixed work of one `fit` call (beyond its steps), ours vs `keras.distillation`

Each writes its JSON under `--results` (default `benchmarks/results/all/`); the table is then
made from those files, with the machine, the versions and the date. All figures are medians of
per-round ratios of interleaved runs, with bootstrap 95 % intervals.

    python benchmarks/run_all.py                         # all backends, full protocol (~1 h)
    python benchmarks/run_all.py --backends jax --quick  # smoke run: inconclusive figures
    python benchmarks/run_all.py --report-only           # the table from existing results
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax", "torch")
SCRIPTS = ("step_overhead", "pair_overhead", "cache_overhead", "fit_overhead")
BACKEND_TITLES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}

# (script, ratio name in its summary, what it measures, target text)
ROWS = (
    ("step_overhead", "C/(A+B)", "distillation step / (teacher forward + student step)", "<= 1.05"),
    ("step_overhead", "C/K", "our step / `keras.distillation` step (logits)", "<= 1.00"),
    ("pair_overhead", "(CP-C0)/L hint", "added cost of a `Hint` / the term's own cost", "<= 1.10"),
    ("pair_overhead", "(CP-C0)/L attention", "added cost of an `AttentionTransfer` / its own cost", "<= 1.10"),
    ("pair_overhead", "(CP-C0)/L relational", "added cost of a `Relational` / its own cost", "<= 1.10"),
    ("pair_overhead", "(CP-C0)/L same", "added cost of an equal-shape `Hint` / its own cost", "<= 1.10"),
    ("pair_overhead", "CP_same/KF", "our step with a feature pair / `keras.distillation`'s", "< 1.00"),
    ("cache_overhead", "D/S", "cached epoch / the student's plain epoch", "<= 1.10"),
    ("cache_overhead", "B/P", "building the cache / `teacher.predict` (large teacher)", "<= 1.10"),
    ("fit_overhead", "C_step/K_step", "a step inside a 16-step `fit`, ours / `keras.distillation`'s", "<= 1.00"),
    ("fit_overhead", "F_C/C_step", "our fixed work per `fit` call, in steps (Keras's own included)", "<= 1.00"),
    ("fit_overhead", "(F_C-F_K)/C_step", "our fixed work per `fit` beyond `keras.distillation`'s, in steps", "<= 1.00"),
)
CONTROLS = {"step_overhead": "A'/A", "pair_overhead": "C0'/C0", "fit_overhead": "C2_fit/C_fit"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--quick", action="store_true", help="few short rounds: a smoke run, not a measurement")
    parser.add_argument("--report-only", action="store_true", help="only write the table from existing results")
    parser.add_argument("--results", default=os.path.join("benchmarks", "results", "all"))
    parser.add_argument("--out", default=os.path.join("docs", "benchmarks.md"))
    return parser.parse_args(argv)


def result_path(results, script, backend):
    return os.path.join(results, f"{script}_{backend}.json")


def commands(script, backend, out, quick):
    """The command line of one benchmark run."""
    path = os.path.join(HERE, f"{script}.py")
    base = [sys.executable, path, "--backend", backend, "--out", out]
    return base + (["--quick"] if quick else [])


def run(args):
    codes = {}
    for backend in args.backends:
        for script in SCRIPTS:
            out = result_path(args.results, script, backend)
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            start = time.perf_counter()
            env = dict(os.environ, KERAS_BACKEND=backend)
            codes[(script, backend)] = subprocess.call(commands(script, backend, out, args.quick), env=env)
            print(f"== {script} [{backend}]: exit {codes[(script, backend)]}, {time.perf_counter() - start:.0f} s")
    return codes


def load(results, script, backend):
    path = result_path(results, script, backend)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def cell(result, ratio):
    """`median [low, high] VERDICT` of one ratio, or a dash."""
    if result is None or ratio not in result["summary"]["ratios"]:
        return "-"
    value = result["summary"]["ratios"][ratio]
    low, high = value["ci95"]
    verdict = result["summary"].get("verdicts", {}).get(ratio, {}).get("verdict", "")
    return f"{value['median']:.3f} [{low:.3f}, {high:.3f}] {verdict}".strip()


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{platform.platform()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def report(results, backends):
    """The Markdown page: what ran where, then one row per ratio and one column per backend."""
    loaded = {(s, b): load(results, s, b) for s in SCRIPTS for b in backends}
    dates = sorted(r["created"] for r in loaded.values() if r is not None)
    versions = sorted(
        {
            f"{name} {version}"
            for r in loaded.values()
            if r is not None
            for name, version in {
                "keras": r.get("environment", {}).get("keras"),
                **r.get("environment", {}).get("framework", {}),
            }.items()
            if version
        }
    )
    quick = any(r.get("config", {}).get("quick") for r in loaded.values() if r is not None)
    lines = [
        "# Benchmarks",
        "",
        "Written by `python benchmarks/run_all.py` from the JSON results in "
        f"`{results}`. Each figure is the median of per-round ratios of interleaved runs on one "
        "thread, with a bootstrap 95 % interval, and the verdict against the target; see "
        "`benchmarks/README.md` for each benchmark's protocol.",
        "",
        f"- Machine: {machine()}",
        f"- Versions: {', '.join(versions) or '-'}",
        f"- Runs: {dates[0] if dates else '-'} to {dates[-1] if dates else '-'}",
    ]
    if quick:
        lines.append("- **Smoke run (`--quick`)**: too few rounds to measure anything; the verdicts are not results.")
    lines += [
        "",
        "| benchmark | ratio | what | target | " + " | ".join(BACKEND_TITLES[b] for b in backends) + " |",
        "|---|---|---|---|" + "---|" * len(backends),
    ]
    for script, ratio, what, target in ROWS:
        cells = [cell(loaded[(script, b)], ratio) for b in backends]
        lines.append(f"| `{script}` | {ratio} | {what} | {target} | " + " | ".join(cells) + " |")
    lines += ["", "Controls (a copy of the same item; near 1.00 means the machine was steady):", ""]
    for script, ratio in CONTROLS.items():
        cells = ", ".join(f"{BACKEND_TITLES[b]} {cell(loaded[(script, b)], ratio)}" for b in backends)
        lines.append(f"- `{script}` {ratio}: {cells}")
    missing = [f"{s} [{b}]" for (s, b), r in loaded.items() if r is None]
    if missing:
        lines += ["", "Missing results (not run, or failed): " + ", ".join(missing) + "."]
    lines += lm_memory_section(backends)
    lines += on_policy_section(backends)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines += ["", f"Table written {stamp}.", ""]
    return "\n".join(lines)


LM_MEMORY_RESULTS = os.path.join("benchmarks", "results")


def lm_memory_section(backends, results=LM_MEMORY_RESULTS):
    """The tables of `lm_memory.py` (run on its own: minutes per configuration), from its saved results."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import lm_memory

    # lm_memory_<backend>_grid*.json: later runs of parts of the grid, kept beside the first one's file.
    paths = [
        os.path.join(results, f"lm_memory_{backend}{suffix}.json")
        for backend in backends
        for suffix in ("", "_grid", "_grid2")
    ]
    found = [path for path in paths if os.path.exists(path)]
    if not found:
        return []
    lines = [
        "",
        "# Language models: dense vs chunked token-level loss (`lm_memory.py`)",
        "",
        "Run separately (`python benchmarks/lm_memory.py`, one fresh process per configuration); see "
        "[large-vocabulary language models](large-vocabulary.md). Peak resident memory above the process's "
        "baseline (after building the models) and the median step time, warm-up step (compilation) included "
        "in the peak.",
    ]
    for path in found:
        with open(path) as f:
            lines += ["", "#" + lm_memory.format_summary(json.load(f))]
    timed = [os.path.join(results, f"lm_step_time_{backend}.json") for backend in backends]
    timed = [path for path in timed if os.path.exists(path)]
    if timed:
        lines += [
            "",
            "The step times above come from separate processes, one after another; the time ratio is measured "
            "with both distillers in one process, steps interleaved (`lm_step_time.py`, medians):",
            "",
            "| backend | vocabulary x positions | positions per chunk | dense s | chunked s | chunked / dense |",
            "|---|---|---|---|---|---|",
        ]
        for path in timed:
            with open(path) as f:
                r = json.load(f)
            median = r["median_seconds"]
            lines.append(
                f"| {r['backend']} | {r['vocabulary']:,} x {r['positions']:,} | {r['chunk_positions']} | "
                f"{median['dense']:.2f} | {median['chunked']:.2f} | {r['chunked_over_dense']:.2f} |"
            )
    return lines


def on_policy_section(backends, results=LM_MEMORY_RESULTS):
    """The table and side-by-side completions of `on_policy.py` (hours on a CPU: run on its own), from its results."""
    paths = [os.path.join(results, f"on_policy_{backend}.json") for backend in backends]
    found = [path for path in paths if os.path.exists(path)]
    if not found:
        return []
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import on_policy

    lines = [
        "",
        "# On-policy distillation (`on_policy.py`)",
        "",
        "Run separately (`python benchmarks/on_policy.py`; the module docstring has the protocol); see "
        "[on-policy distillation](on-policy.md). SmolLM2-135M-Instruct teaches a 4-layer student from its layers; "
        "every method starts from the same warmed-up student and takes the same optimizer steps on the same "
        "prompts. Metrics on held-out prompts: the reverse KL of the student's own samples (teacher-scored), the "
        "teacher's NLL of its greedy completions, held-out perplexity of the articles' text.",
    ]
    for path in found:
        with open(path) as f:
            record = json.load(f)
        title, completions = on_policy.report_completions(record)
        lines += ["", f"## {record['backend']}", "", on_policy.report_table(record), "", title, "", "```text"]
        lines += [completions, "```"]
    return lines


def main(argv=None):
    args = parse_args(argv)
    codes = {} if args.report_only else run(args)
    page = report(args.results, args.backends)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(page)
    print(page)
    print(f"wrote {args.out}")
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
