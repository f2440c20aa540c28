"""The distiller under keras.distribution on JAX: DataParallel, ModelParallel, 2 processes on loopback.

Each case runs tests/scripts/jax_distribution.py in subprocesses (the device count and
`jax.distributed.initialize` must be set before JAX starts) and compares, step by step, the
distributed run with the single-device run on the same global batches: 3 epochs x 4 batches of 16,
SGD with momentum, shuffle=False, sample weights, and a Hint whose Dense regressor trains too.
Measured on 2 CPU cores: the step losses differ by < 6e-7 (relative), the weights by < 2e-7.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "jax_distribution.py")
LOSS_RTOL = 1e-5  # relative, per step and per logged term
WEIGHT_TOL = 1e-6  # absolute; the weights are of order 1

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution runs on JAX")


def _env():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    env.pop("XLA_FLAGS", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _result(run):
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _script(*args, timeout=110):
    run = subprocess.run([sys.executable, SCRIPT, *args], env=_env(), capture_output=True, text=True, timeout=timeout)
    return _result(run)


def _assert_same_training(distributed, single):
    assert len(distributed["steps"]) == len(single["steps"]) == 12
    for step, (got, want) in enumerate(zip(distributed["steps"], single["steps"])):
        assert set(got) == set(want) == {"loss", "hard_loss", "soft_loss", "hint_loss"}
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=LOSS_RTOL), (step, name)
    for name in single["evaluate"]:
        assert distributed["evaluate"][name] == pytest.approx(single["evaluate"][name], rel=LOSS_RTOL), name
    for part in ("student", "regressor"):
        for got, want in zip(distributed[part], single[part], strict=True):
            np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=WEIGHT_TOL, err_msg=part)
    assert distributed["teacher_changed"] == 0.0
    # The weights moved: equal trajectories are not two runs that did nothing.
    assert distributed["steps"][-1]["loss"] < 0.95 * distributed["steps"][0]["loss"]


@pytest.fixture(scope="module")
def mesh_runs():
    """Single device, DataParallel and ModelParallel on 2 host CPU devices, in one subprocess."""
    return _script("mesh")


@pytest.mark.timeout(120)
def test_data_parallel_matches_single_device(mesh_runs):
    run = mesh_runs["data_parallel"]
    _assert_same_training(run, mesh_runs["single"])
    assert run["get_weights"] == "ok"
    # Every variable (teacher, student, regressor, distiller, optimizer) is replicated on both devices.
    assert run["single_device_variables"] == []
    assert all(layout["devices"] == 2 and "model" not in layout["spec"] for layout in run["layouts"].values())


@pytest.mark.timeout(120)
def test_model_parallel_shards_teacher_student_and_regressor(mesh_runs):
    run = mesh_runs["model_parallel"]
    _assert_same_training(run, mesh_runs["single"])
    assert run["get_weights"] == "ok"  # one process: a split kernel is still addressable here
    layouts = run["layouts"]
    assert run["single_device_variables"] == []
    for model in ("teacher", "student"):
        assert layouts[f"{model}/hidden/kernel"]["spec"] == "(None, 'model')"
        assert layouts[f"{model}/hidden/bias"]["spec"] == "('model',)"
        assert layouts[f"{model}/logits/kernel"]["spec"] == "('model', None)"
    (regressor_kernel, _) = run["regressor_paths"]
    assert layouts[regressor_kernel]["spec"] == "(None, 'model')"
    # The optimizer's slots follow their variables' layouts.
    momentum = [path for path in layouts if path.endswith("student_hidden_kernel_momentum")]
    assert len(momentum) == 1 and layouts[momentum[0]]["spec"] == "(None, 'model')"


@pytest.mark.timeout(120)
def test_models_built_outside_the_distribution_fail_clearly_and_keep_their_weights():
    results = _script("outside")
    # Keras 3.15 alone: an error from inside jax.jit, after it has dropped every variable's value.
    keras_alone = results["keras_alone"]
    assert keras_alone["fit"].startswith("ValueError: Received incompatible devices for jitted computation")
    assert keras_alone["get_weights"] is not None and not keras_alone["weights_intact"]
    # keras_kd checks first: an error that names the variable, its owner and the fix; the models stay usable.
    for case, owner in (("all_outside", "the student"), ("teacher_outside", "the teacher")):
        outcome = results[case]
        assert outcome["fit"].startswith("ValueError: fit() runs under DataParallel over devices [cpu:0, cpu:1]")
        assert f"({owner}) on [cpu:0]" in outcome["fit"]
        assert "inside `with distribution.scope():`" in outcome["fit"]
        assert outcome["get_weights"] is None and outcome["weights_intact"], outcome
    assert "4 of the distiller's" in results["teacher_outside"]["fit"]  # the teacher's 4 variables
    all_outside = results["all_outside"]
    for method in ("evaluate", "predict", "train_on_batch"):
        assert all_outside[method].startswith(f"ValueError: {method}() runs under DataParallel"), all_outside
    assert all_outside["fit_outside"] is None  # and it still trains on one device, outside the distribution
    assert results["loaded_inside"] == {"fit": None, "teacher_devices": 2}  # a saved teacher, loaded in the scope


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def single_run():
    return _script("single")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("feed", ["tfdata", "local", "model"])
def test_two_processes_on_loopback_match_single_device(feed, single_run):
    """2 processes x 1 CPU device, gloo collectives: DataParallel (tf.data auto-sharded, or each process
    feeding its own rows) and ModelParallel (kernels split across the processes)."""
    port = str(_free_port())
    workers = [
        subprocess.Popen(
            [sys.executable, SCRIPT, "process", str(pid), port, feed],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (0, 1)
    ]
    try:
        runs = []
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=130)
            runs.append(_result(subprocess.CompletedProcess(worker.args, worker.returncode, stdout, stderr)))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for run in runs:
        _assert_same_training(run, single_run)
        assert all(layout["devices"] == 2 for layout in run["layouts"].values())
    if feed == "model":
        assert runs[0]["layouts"]["teacher/hidden/kernel"]["spec"] == "(None, 'model')"
        assert runs[0]["layouts"]["student/hidden/kernel"]["spec"] == "(None, 'model')"
        # A kernel split across processes is not readable by one process: gather it (the script does,
        # with jax.experimental.multihost_utils.process_allgather).
        for run in runs:
            assert run["get_weights"].startswith("RuntimeError") and "non-addressable" in run["get_weights"]
    else:
        assert all(run["get_weights"] == "ok" for run in runs)  # replicated variables read locally
