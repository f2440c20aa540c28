"""`benchmarks/on_policy_step_loop.py` on the small models: one round of 2 steps, current backend (no timing)."""

import json
import math
import os
import subprocess
import sys

import keras
import pytest

pytest.importorskip("keras_hub")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "on_policy_step_loop.py")


def test_one_round_writes_both_ways_and_their_ratio(tmp_path):
    backend = keras.backend.backend()
    out = tmp_path / "on_policy_step_loop_{backend}_{size}.json"
    env = dict(os.environ, KERAS_BACKEND=backend)
    command = [sys.executable, SCRIPT, "--size", "small", "--rounds", "1", "--steps", "2", "--out", str(out)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((tmp_path / f"on_policy_step_loop_{backend}_small.json").read_text())
    assert result["benchmark"] == "on_policy_step_loop"
    config = result["config"]
    assert (config["backend"], config["size"], config["steps"], config["rounds"]) == (backend, "small", 2, 1)
    assert config["threads"] == 1 and config["batch_size"] == 8
    (one_round,) = result["rounds"]
    assert sorted(one_round["order"]) == ["F", "T"]
    for key in ("F_ms_per_step", "F_steady_ms_per_step", "T_ms_per_step", "F_cpu_ms_per_step", "T/F", "T/F_steady"):
        assert one_round[key] > 0, key
    assert one_round["T/F"] == pytest.approx(one_round["T_ms_per_step"] / one_round["F_ms_per_step"])
    assert math.isfinite(one_round["F_loss"]) and math.isfinite(one_round["T_loss"])
    summary = result["summary"]
    for key in ("F_ms_per_step", "F_steady_ms_per_step", "T_ms_per_step", "T/F", "T/F_steady"):
        assert summary[key] > 0, key
    assert (backend == "jax") == ("T_sync_ms_per_step" in summary)
    if backend == "jax":
        assert summary["T_sync_ms_per_step"] > 0 and one_round["T_sync_calls"] == 2
    assert result["parameters"]["teacher"] > result["parameters"]["student"] > 0
    assert result["state_variables"]["trainable"] > 0 and result["state_variables"]["optimizer"] > 0
    assert result["machine"]["cores"] >= 1 and result["versions"]["keras"] == keras.__version__
