"""`benchmarks/run_all.py` turns the benchmarks' JSON results into one Markdown table."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import run_all  # noqa: E402


def write(results, script, backend, ratios, quick=False, verdict="PASS"):
    summary = {
        "ratios": {name: {"median": m, "ci95": [m - 0.1, m + 0.1]} for name, m in ratios.items()},
        "verdicts": {name: {"verdict": verdict} for name in ratios},
    }
    result = {
        "created": f"2026-11-27T0{len(script) % 9}:00:00+00:00",
        "config": {"quick": quick},
        "environment": {"keras": "3.15.1", "framework": {"jax": "0.10.2"}},
        "summary": summary,
    }
    with open(run_all.result_path(results, script, backend), "w") as f:
        json.dump(result, f)


def test_report_has_one_row_per_ratio_and_names_missing_runs(tmp_path):
    results = str(tmp_path)
    write(results, "step_overhead", "jax", {"C/(A+B)": 0.814, "C/K": 0.913, "A'/A": 1.008})
    write(results, "cache_overhead", "jax", {"D/S": 1.05, "B/P": 1.04}, verdict="FAIL")
    page = run_all.report(results, ["jax", "torch"])
    rows = {line.split(" | ")[1]: line for line in page.splitlines() if line.startswith("| `")}
    assert len(rows) == len(run_all.ROWS)
    assert "0.814 [0.714, 0.914] PASS" in rows["C/(A+B)"] and rows["C/(A+B)"].endswith("| - |")
    assert "1.050 [0.950, 1.150] FAIL" in rows["D/S"]
    assert rows["(CP-C0)/L hint"].endswith("| - | - |")
    assert "| JAX | PyTorch |" in page and "jax 0.10.2, keras 3.15.1" in page
    assert "`step_overhead` A'/A: JAX 1.008" in page
    assert "Missing results (not run, or failed): step_overhead [torch], pair_overhead [jax]," in page
    assert "Smoke run" not in page
    write(results, "pair_overhead", "jax", {"CP_same/KF": 0.9}, quick=True)
    assert "Smoke run (`--quick`)" in run_all.report(results, ["jax"])
