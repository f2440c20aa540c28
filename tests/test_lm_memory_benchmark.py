"""`benchmarks/lm_memory.py` on tiny Llama models, current backend: a child's record, the parent's verdicts, the tables.

Checks structure, not numbers: a hidden width of 64 and 32 positions, so that each child runs in seconds.
"""

import inspect
import json
import os
import subprocess
import sys

import keras
import pytest

import keras_kd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "lm_memory.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import lm_memory  # noqa: E402

TINY = ["--vocabularies", "512", "--positions", "32", "--hidden-dim", "64", "--intermediate-dim", "128"]
TINY += ["--query-heads", "4", "--kv-heads", "2", "--teacher-layers", "2", "--student-layers", "1"]
HAS_CHUNKING = "chunk_size" in inspect.signature(keras_kd.Distiller.__init__).parameters


def run_script(*args, timeout=120):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    done = subprocess.run(
        [sys.executable, SCRIPT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("dense", []),
        pytest.param(
            "chunked",
            ["--chunk-size", "8"],
            marks=pytest.mark.skipif(not HAS_CHUNKING, reason="Distiller has no chunk_size yet"),
        ),
    ],
)
def test_child_reports_one_step(mode, extra):
    record = json.loads(run_script("--child", "--modes", mode, *TINY, *extra).strip().splitlines()[-1])
    assert record["status"] == "ok"
    assert (record["backend"], record["mode"]) == (keras.backend.backend(), mode)
    assert (record["vocabulary"], record["positions"]) == (512, 32)
    assert record["chunk_size"] == (8 if mode == "chunked" else None)
    assert record["peak_mb_above_baseline"] > 0 and record["baseline_mb"] > 0
    assert record["step_seconds"] > 0 and len(record["step_seconds_all"]) == 2
    assert record["loss"] == record["loss"]  # finite enough: not NaN


@pytest.mark.parametrize("flag, status", [(["--limit-gb", "0.05"], "over limit"), (["--timeout", "0.5"], "timeout")])
def test_parent_kills_a_child_over_limit_or_late(tmp_path, flag, status):
    backend = keras.backend.backend()
    out = tmp_path / "lm_memory.json"
    args = ["--backends", backend, "--modes", "dense", *TINY, "--positions", "32", "64", *flag, "--out", str(out)]
    printed = run_script(*args)

    result = json.loads(out.read_text())
    assert result["benchmark"] == "lm_memory" and result["config"]["backend"] == backend
    assert result["machine"]["cores"] >= 1 and result["machine"]["memory_total_mb"] > 0
    assert result["versions"]["keras"] == keras.__version__
    first, second = result["runs"]
    assert first["status"] == status and "inferred_from" not in first
    assert second["status"] == status and second["inferred_from"] == [512, 32]  # not run: larger than the first
    assert "| 512 | 32 |" in printed and "| 512 | 64 |" in printed

    summary = run_script("--summarize", str(out))
    assert f"| 512 | 32 | {status} | {status} |" in summary


def fake_run(mode, vocabulary, positions, status="ok", mb=100.0, seconds=1.0):
    record = {"mode": mode, "vocabulary": vocabulary, "positions": positions, "status": status}
    return record | ({"peak_mb_above_baseline": mb, "step_seconds": seconds} if status == "ok" else {})


def test_tables_and_the_largest_configuration_chunked_rescues():
    runs = [
        fake_run("dense", 1000, 512, mb=400.0, seconds=1.0),
        fake_run("chunked", 1000, 512, mb=100.0, seconds=1.5),
        fake_run("dense", 1000, 4096, status="over limit"),
        fake_run("chunked", 1000, 4096, mb=300.0, seconds=9.0),
        fake_run("dense", 4000, 512, status="failed: killed by signal 9 (out of memory?)"),
        fake_run("chunked", 4000, 512, mb=200.0, seconds=3.0),
        fake_run("dense", 4000, 4096, status="over limit") | {"inferred_from": [1000, 4096]},
        fake_run("chunked", 4000, 4096, status="over limit"),
    ]
    result = {
        "config": {"backend": "jax", "limit_gb": 20.0, "modes": ["dense", "chunked"]},
        "machine": {"cores": 2, "memory_total_mb": 24000},
        "runs": runs,
    }
    table = lm_memory.format_table(result).splitlines()
    assert table[0] == (
        "| vocabulary | positions | dense MB | chunked MB | chunked/dense MB | dense s | chunked s | chunked/dense s |"
    )
    assert table[2] == "| 1000 | 512 | 400 | 100 | 0.250 | 1.000 | 1.500 | 1.500 |"
    assert table[3] == "| 1000 | 4096 | over limit | 300 | - | over limit | 9.000 | - |"
    assert table[5].startswith("| 4000 | 4096 | over limit* | over limit |")
    best = lm_memory.largest_rescued(result)
    assert (best["vocabulary"], best["positions"]) == (1000, 4096)
    assert "dense cannot run within the limit and chunked can: vocabulary 1000, positions 4096" in (
        lm_memory.format_summary(result)
    )


def test_plan_keeps_the_modes_of_a_size_together_and_rotates_them():
    args = lm_memory.parse_args(["--modes", "dense", "chunked", "--vocabularies", "20", "10", "--positions", "8"])
    assert lm_memory.plan(args) == [("dense", 10, 8), ("chunked", 10, 8), ("chunked", 20, 8), ("dense", 20, 8)]


def test_the_interleaved_step_time_script_writes_its_ratio(tmp_path):
    out = tmp_path / "time.json"
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    arguments = ["--vocabulary", "512", "--positions", "32", "--chunk-size", "12", "--rounds", "2", "--out", str(out)]
    arguments += ["--hidden-dim", "64", "--intermediate-dim", "128", "--query-heads", "4", "--kv-heads", "2"]
    script = os.path.join(ROOT, "benchmarks", "lm_step_time.py")
    done = subprocess.run(
        [sys.executable, script, *arguments], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["chunk_positions"] == 12 and len(record["seconds"]["dense"]) == 2
    medians = record["median_seconds"]
    assert record["chunked_over_dense"] == pytest.approx(medians["chunked"] / medians["dense"])
