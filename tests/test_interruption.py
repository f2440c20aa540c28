"""Training and cache builds that survive a `kill -9`.

Each test runs the work in a subprocess (`tests/scripts/`), waits until it signals that it
reached the middle of its work (a marker file), kills it with SIGKILL, and runs the same work
again: it must resume from what was saved and end where an uninterrupted run ends.
"""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.cache import build as cache_build_module

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "scripts")
# Generous, in seconds: each subprocess imports keras, on a 2-core machine that may be busy. The tests'
# own timeouts (pytest-timeout) leave room for them.
MARKER_TIMEOUT = 240.0
RUN_TIMEOUT = 240.0


class Subprocesses:
    """Starts scripts with the test's backend, their output in files; kills any still running on close."""

    def __init__(self, directory):
        self.directory = directory
        self.processes = []

    def start(self, name, *args):
        env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "TF_CPP_MIN_LOG_LEVEL": "3"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        log = open(os.path.join(self.directory, f"{name}-{len(self.processes)}.log"), "w+")
        command = [sys.executable, os.path.join(SCRIPTS, name), *map(str, args)]
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        process.log = log
        self.processes.append(process)
        return process

    @staticmethod
    def output(process):
        process.log.flush()
        process.log.seek(0)
        return process.log.read()[-4000:]

    def wait_for_marker(self, process, marker):
        deadline = time.monotonic() + MARKER_TIMEOUT
        while not os.path.exists(marker):
            if process.poll() is not None:
                pytest.fail(
                    f"The subprocess ended (exit {process.returncode}) before its pause:\n{self.output(process)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"No pause marker after {MARKER_TIMEOUT} s:\n{self.output(process)}")
            time.sleep(0.05)

    def kill(self, process):
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL

    def finish(self, process):
        try:
            code = process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"The subprocess ran past {RUN_TIMEOUT} s:\n{self.output(process)}")
        assert code == 0, self.output(process)
        return self.output(process)

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=60)
            process.log.close()


@pytest.fixture
def subprocesses(tmp_path):
    manager = Subprocesses(str(tmp_path))
    try:
        yield manager
    finally:
        manager.close()


def _events(directory, pid):
    with open(os.path.join(directory, "events.jsonl")) as file:
        events = [json.loads(line) for line in file]
    return [event for event in events if event["pid"] == pid]


def _state(directory, name):
    with np.load(os.path.join(directory, name)) as arrays:
        return {key: arrays[key] for key in arrays.files}


def _assert_states_equal(found, expected, exact, what):
    assert sorted(found) == sorted(expected), what
    for key in expected:
        if exact:
            np.testing.assert_array_equal(found[key], expected[key], err_msg=f"{what}: {key}")
        else:
            # Within 1e-6 of the array's own scale, so that entries near zero do not demand more.
            scale = float(np.max(np.abs(expected[key]))) if expected[key].size else 0.0
            np.testing.assert_allclose(
                found[key], expected[key], rtol=1e-6, atol=1e-6 * scale, err_msg=f"{what}: {key}"
            )


def _groups(state):
    groups = {}
    for key in state:
        groups.setdefault(key.split("/")[0], []).append(key)
    return groups


@pytest.mark.timeout(600)
def test_fit_resumes_after_kill_9_with_regressor_schedules_and_optimizer_state(tmp_path, subprocesses):
    """kill -9 in epoch 1 after epoch 0 was backed up; the same command resumes and ends as an unbroken run."""
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    reference_dir.mkdir()
    run_dir.mkdir()
    marker = str(tmp_path / "paused")
    # The reference and the run to interrupt start together (the work is the same; the machine has 2 cores).
    reference = subprocesses.start("interrupted_fit.py", reference_dir)
    first = subprocesses.start("interrupted_fit.py", run_dir, marker)
    subprocesses.wait_for_marker(first, marker)
    with open(run_dir / "backup" / "training_metadata.json") as file:
        assert json.load(file)["epoch"] == 1  # epoch 0 is backed up; epoch 1 is in progress
    subprocesses.kill(first)
    assert [e.get("epoch") for e in _events(run_dir, first.pid) if e["event"] == "epoch_begin"] == [0, 1]
    assert not (run_dir / "final.npz").exists()

    second = subprocesses.start("interrupted_fit.py", run_dir, marker)  # the same command
    subprocesses.finish(second)
    subprocesses.finish(reference)

    # The second run resumed at epoch 1 rather than training from scratch.
    events = _events(run_dir, second.pid)
    assert events[0] == {"pid": second.pid, "event": "train_begin"}
    assert [e["epoch"] for e in events if e["event"] == "epoch_begin"] == [1, 2]
    assert not (run_dir / "backup").exists()  # BackupAndRestore removes its backup when fit completes

    exact = keras.backend.backend() == "tensorflow"  # op determinism there; 1e-6 relative on JAX and PyTorch
    initial = _state(reference_dir, f"state-{reference.pid}-train_begin.npz")
    after_epoch_0 = _state(run_dir, f"state-{first.pid}-epoch0.npz")
    restored = _state(run_dir, f"state-{second.pid}-train_begin.npz")

    # Everything the backup holds comes back exactly as the killed run had it after epoch 0 ...
    _assert_states_equal(restored, after_epoch_0, exact=True, what="restored from the backup")
    _assert_states_equal(
        after_epoch_0, _state(reference_dir, f"state-{reference.pid}-epoch0.npz"), exact, "epoch 0 of both runs"
    )
    # ... and each part changed during epoch 0, so a part missing from the backup would have shown.
    assert float(restored["temperature"]) == 4.0 * 0.75 != float(initial["temperature"])
    assert float(restored["alpha"]) == pytest.approx(0.1 + 0.2) and float(initial["alpha"]) == pytest.approx(0.1)
    assert int(restored["iterations"]) == 6 and int(initial["iterations"]) == 0
    for group in ("student", "regressor"):
        keys = _groups(restored)[group]
        assert keys and all(not np.array_equal(restored[k], initial[k]) for k in keys), group
    moments = [k for k in _groups(restored)["optimizer"] if restored[k].ndim]
    assert len(moments) == 2 * len(_groups(restored)["student"] + _groups(restored)["regressor"])  # Adam's m and v
    assert all(np.any(restored[k] != 0) for k in moments)

    final = _state(run_dir, "final.npz")
    _assert_states_equal(final, _state(reference_dir, "final.npz"), exact, "final state")
    assert float(final["temperature"]) == 4.0 * 0.75**3
    assert int(final["iterations"]) == 18


def _batches(x, y, batch_size=8):
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def _shard_stats(directory):
    return {
        name: (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        for name in os.listdir(directory)
        if name.startswith("shard-")
        for stat in [os.stat(os.path.join(directory, name))]
    }


@pytest.mark.timeout(400)
def test_teacher_cache_build_resumes_after_kill_9(tmp_path, subprocesses, monkeypatch):
    """kill -9 while a shard is written; the same build resumes after the shards already written, ends as an
    unbroken build, and leaves no temporary file."""
    teacher = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(12, activation="relu"), keras.layers.Dense(4)], name="teacher"
    )
    teacher.save(tmp_path / "teacher.keras")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 6)).astype("float32")
    y = rng.integers(0, 4, size=80).astype("int64")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    directory, marker = str(tmp_path / "cache"), str(tmp_path / "paused")

    # Batches of 8, shards of 16: the process pauses while shard 2 (examples 32-47) is in its temporary file.
    process = subprocesses.start(
        "interrupted_cache_build.py", tmp_path / "teacher.keras", tmp_path / "data.npz", directory, marker, 2
    )
    subprocesses.wait_for_marker(process, marker)
    subprocesses.kill(process)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert not manifest["complete"] and [s["examples"] for s in manifest["shards"]] == [16, 16]
    written = _shard_stats(directory)
    assert sorted(written) == ["shard-00000.npz", "shard-00001.npz"]
    left = sorted(set(os.listdir(directory)) - set(written) - {"manifest.json"})
    assert len(left) == 1 and left[0].startswith(".shard-00002.npz.") and left[0].endswith(".tmp"), left

    forwarded = []  # how many examples each teacher batch of this process held
    dispatch_batch = cache_build_module._dispatch_batch

    def counting_dispatch_batch(predictor, forward, metadata, batch, first):
        forwarded.append(len(batch[0]))
        return dispatch_batch(predictor, forward, metadata, batch, first)

    monkeypatch.setattr(cache_build_module, "_dispatch_batch", counting_dispatch_batch)
    teacher = keras.saving.load_model(tmp_path / "teacher.keras")
    options = dict(dtype="float32", examples_per_shard=16, verbose=0)
    resumed = keras_kd.TeacherCache.build(teacher, _batches(x, y), directory, **options)  # the killed call again
    assert forwarded == [8] * 6  # only examples 32-79 ran through the teacher
    after = _shard_stats(directory)
    assert {name: after[name] for name in written} == written  # the shards written before the kill are untouched
    # The killed write's temporary file is gone; nothing but the manifest and the 5 shards remains.
    assert sorted(os.listdir(directory)) == ["manifest.json"] + [f"shard-{i:05d}.npz" for i in range(5)]

    forwarded.clear()
    reference = keras_kd.TeacherCache.build(teacher, _batches(x, y), str(tmp_path / "reference"), **options)
    assert forwarded == [8] * 10
    assert len(resumed) == len(reference) == 80
    assert resumed.teacher_fingerprint == reference.teacher_fingerprint
    np.testing.assert_array_equal(resumed.fingerprints(), reference.fingerprints())
    everything = np.arange(80)
    (found, found_y), (expected, expected_y) = resumed.batch(everything), reference.batch(everything)
    np.testing.assert_array_equal(found["teacher_logits"], expected["teacher_logits"])
    np.testing.assert_array_equal(found["student_inputs"], x)
    np.testing.assert_array_equal(found_y, expected_y)
    direct = keras.ops.convert_to_numpy(teacher(x, training=False))
    np.testing.assert_allclose(found["teacher_logits"], direct, rtol=1e-5, atol=1e-6)
