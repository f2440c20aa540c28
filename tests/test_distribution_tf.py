"""tf.distribute: MirroredStrategy and MultiWorkerMirroredStrategy match the single-replica run.

Each run happens in a subprocess (logical devices and TF_CONFIG must be set before
TensorFlow starts). The distributed runs train on the same global batches as the
single-replica reference and must reproduce its logs after every step and every epoch,
its `evaluate` logs, its `predict` outputs and its final weights: logs to a relative
1e-5, outputs and weights to an absolute 1e-5 (measured: ~2e-7 and ~1e-7; dropping the
loss's division by the replica count moves the weights by ~0.2).
"""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "scripts")
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute is TensorFlow's")


def _env(**extra):
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _run_script(name, timeout):
    run = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, name)], env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_workers(name, count, timeout, directory):
    """Runs `count` workers of a TF_CONFIG cluster on loopback; returns each one's parsed JSON line.

    Output goes to files (a full pipe would block a worker while its peer waits on it),
    and every worker still running at the deadline, or after a failure, is killed.
    """
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(count)]}
    workers, logs = [], []
    try:
        for index in range(count):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            out, err = open(directory / f"worker{index}.out", "w+"), open(directory / f"worker{index}.err", "w+")
            logs.append((out, err))
            command = [sys.executable, os.path.join(SCRIPTS, name)]
            workers.append(subprocess.Popen(command, env=_env(TF_CONFIG=tf_config), stdout=out, stderr=err))
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.wait(timeout=max(deadline - time.monotonic(), 1))
        results = []
        for worker, (out, err) in zip(workers, logs):
            out.seek(0)
            err.seek(0)
            assert worker.returncode == 0, err.read()[-3000:]
            results.append(json.loads(out.read().strip().splitlines()[-1]))
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for out, err in logs:
            out.close()
            err.close()


def _assert_same_run(reference, run):
    assert run["steps"].keys() == reference["steps"].keys()
    for name, values in reference["steps"].items():
        np.testing.assert_allclose(run["steps"][name], values, rtol=LOSS_RTOL, err_msg=f"{name} per step")
    assert run["history"].keys() == reference["history"].keys()
    for name, values in reference["history"].items():
        np.testing.assert_allclose(run["history"][name], values, rtol=LOSS_RTOL, err_msg=name)
    assert run["evaluate"].keys() == reference["evaluate"].keys()
    for name, value in reference["evaluate"].items():
        np.testing.assert_allclose(run["evaluate"][name], value, rtol=LOSS_RTOL, err_msg=f"evaluate {name}")
    for part in ("student", "regressor"):
        assert len(run[part]) == len(reference[part]) > 0
        for got, expected in zip(run[part], reference[part]):
            np.testing.assert_allclose(got, expected, rtol=0, atol=WEIGHT_ATOL, err_msg=part)
    assert np.shape(run["predict"]) == np.shape(reference["predict"]) == (64, 3)
    np.testing.assert_allclose(run["predict"], reference["predict"], rtol=0, atol=WEIGHT_ATOL, err_msg="predict")


def _assert_trained(reference):
    assert len(reference["steps"]["loss"]) == 12  # 3 epochs of 4 global batches of 16
    losses = reference["history"]["loss"]
    assert losses[-1] < 0.9 * losses[0], losses
    assert {"loss", "hard_loss", "soft_loss", "hint_loss", "accuracy"} <= reference["history"].keys()


@pytest.mark.timeout(180)
def test_mirrored_step_equals_single_replica_step():
    """Each term (pair terms too) counts once, not once per replica."""
    results = _run_script("mirrored_updates.py", timeout=170)
    assert len(results) == 4
    for case, ratio in results.items():
        assert ratio["update"] < 1e-5, case
        assert ratio["loss"] == pytest.approx(1.0, rel=1e-5), case


@pytest.mark.timeout(120)
def test_mirrored_three_epochs_match_single_replica():
    """3 epochs of SGD, 12 steps, a Hint with a regressor, L2 and sample weights on 2 logical CPUs."""
    runs = _run_script("mirrored_trajectory.py", timeout=110)
    single, mirrored = runs["single"], runs["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    _assert_trained(single)
    _assert_same_run(single, mirrored)


@pytest.mark.timeout(150)
def test_multi_worker_mirrored_matches_single_process(tmp_path):
    """2 worker processes on loopback (keras-team/keras#20585 handled by our trainer) vs one process."""
    reference = _run_script("multi_worker.py", timeout=60)
    workers = _run_workers("multi_worker.py", count=2, timeout=80, directory=tmp_path)
    assert reference["replicas"] == 1
    _assert_trained(reference)
    assert [worker["task"] for worker in workers] == [0, 1]
    for worker in workers:
        assert worker["replicas"] == 2
        _assert_same_run(reference, worker)


@pytest.mark.timeout(90)
def test_models_created_outside_the_strategy_scope_raise_a_clear_error():
    cases = _run_script("outside_scope.py", timeout=80)
    # Created inside the scope, compiled and fitted inside it or after it: trains.
    assert cases["all_inside"]["stage"] == "done"
    assert cases["fit_after_scope"]["stage"] == "done"
    # Keras's own model created outside the scope: a bare AssertionError from its optimizer.
    assert cases["stock_keras_model_created_outside"] == {"stage": "fit", "error": "AssertionError", "message": ""}
    expected = {
        "created_outside_compiled_inside": ("compile", ["teacher's", "student's", "Distiller's own"]),
        "created_and_compiled_outside_fitted_inside": ("fit", ["teacher's", "student's", "Distiller's own"]),
        "teacher_outside": ("compile", ["teacher's"]),  # Keras would run it (read only); refused all the same
        "student_outside": ("compile", ["student's"]),
        "distiller_outside": ("compile", ["Distiller's own"]),
        "distiller_compile_fit_outside": ("compile", ["teacher's", "student's"]),
    }
    for case, (stage, parts) in expected.items():
        result = cases[case]
        assert (result["stage"], result["error"]) == (stage, "ValueError"), (case, result)
        message = result["message"]
        assert "inside `with strategy.scope():`" in message, case
        for part in ["teacher's", "student's", "Distiller's own"]:
            assert (f"the {part} variables" in message) == (part in parts), (case, part, message)
    student_outside = cases["student_outside"]["message"]
    assert "under MirroredStrategy, but the student's variables ('student/hidden/kernel'" in student_outside
    assert "outside any tf.distribute strategy scope" in student_outside
    assert cases["distiller_compile_fit_outside"]["message"].startswith(
        "This Distiller is compiled or fitted without a tf.distribute strategy"
    )
    assert "were created under MirroredStrategy" in cases["distiller_compile_fit_outside"]["message"]
