"""Under tf.distribute.MirroredStrategy each term (pair terms too) counts once, not once per replica."""

import json
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute is TensorFlow's")
@pytest.mark.timeout(180)
def test_mirrored_step_equals_single_replica_step():
    script = os.path.join(ROOT, "tests", "scripts", "mirrored_updates.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 4
    for case, ratio in results.items():
        assert ratio["update"] < 1e-5, case
        assert ratio["loss"] == pytest.approx(1.0, rel=1e-5), case
