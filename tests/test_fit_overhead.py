"""`benchmarks/fit_overhead.py --quick` on the current backend writes every ratio (checks structure, no timing)."""

import json
import os
import subprocess
import sys

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "fit_overhead.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import fit_overhead  # noqa: E402


def test_quick_run_writes_every_ratio(tmp_path):
    backend = keras.backend.backend()
    out = tmp_path / "fit_overhead.json"
    env = dict(os.environ, KERAS_BACKEND=backend)
    command = [sys.executable, SCRIPT, "--backend", backend, "--quick", "--out", str(out)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["benchmark"] == "fit_overhead"
    assert result["config"]["backend"] == backend and result["config"]["quick"] is True
    assert result["config"]["steps_per_epoch"] == 16
    rounds = result["config"]["rounds"]
    assert rounds >= 2 and len(result["rounds"]) == rounds
    for one_round in result["rounds"]:
        assert sorted(one_round["order"]) == sorted(fit_overhead.ITEMS)
        assert set(one_round["samples"]) == set(fit_overhead.ITEMS)
    summary = result["summary"]
    assert set(summary["items"]) == set(fit_overhead.ITEMS)
    assert set(summary["fixed_work"]) == {"F_C", "F_K"}
    assert set(summary["ratios"]) == set(fit_overhead.RATIOS)
    for name in ("C_fit/K_fit", "C_step/K_step", "F_C/C_step", "(F_C-F_K)/C_step"):
        ratio = summary["ratios"][name]
        low, high = ratio["ci95"]
        assert isinstance(ratio["median"], float) and low <= high and len(ratio["per_round"]) == rounds
    for name in fit_overhead.TARGETS:  # a smoke run judges nothing
        assert summary["verdicts"][name]["verdict"] == "INCONCLUSIVE"
