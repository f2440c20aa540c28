"""`import keras_kd` alone registers every serializable class: a saved distiller loads in a fresh process.

The distiller is saved here and loaded in a fresh process that imports keras_kd before Keras and
touches no other keras_kd name (issue 17, item 1); that process also checks that `import keras_kd`
imported no Keras (so `keras-kd --backend` can still choose the backend) and, where KerasHub is
installed, that importing it registers keras-kd's GGUF tokenizer.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
from conftest import toy_data

import keras_kd
from keras_kd.losses import GeneralizedJSD

SCRIPT = r"""
import importlib.util, json, sys
import keras_kd
imported_keras = "keras" in sys.modules
import keras
import numpy as np

distiller = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])
out = {
    "imported_keras": imported_keras,
    "class": type(distiller).__module__ + "." + type(distiller).__name__,
    "pairs": [type(pair).__name__ for pair in distiller.pairs],
    "soft_loss": type(distiller.soft_loss).__name__,
    "student_logits": distiller.predict(x, verbose=0).tolist(),
    "optimizer_iterations": int(keras.ops.convert_to_numpy(distiller.optimizer.iterations)),
}
if importlib.util.find_spec("keras_hub") is not None:
    import keras_hub  # noqa: F401
    out["gguf_tokenizer"] = keras.saving.get_registered_object("keras_kd>GGUFTokenizer") is not None
print("RESULT" + json.dumps(out))
"""


def model(name, width):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(width, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden), name=name)


def test_a_saved_distiller_loads_after_a_plain_import_keras_kd(tmp_path):
    x, y = toy_data(n=32)
    distiller = keras_kd.Distiller(
        model("teacher", 16),
        model("student", 8),
        temperature=3.0,
        pairs=[keras_kd.Hint("hidden", "hidden"), keras_kd.Relational("hidden", "hidden")],
        soft_loss=GeneralizedJSD(beta=0.5, temperature=3.0),
    ).compile("adam")
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path, inputs = tmp_path / "distiller.keras", tmp_path / "x.npy"
    distiller.save(path)
    np.save(inputs, x)

    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(inputs)], env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    assert result["imported_keras"] is False
    assert result["class"] == "keras_kd.distiller.Distiller"
    assert result["pairs"] == ["Hint", "Relational"] and result["soft_loss"] == "GeneralizedJSD"
    assert result["optimizer_iterations"] == 2
    np.testing.assert_allclose(result["student_logits"], distiller.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert result.get("gguf_tokenizer", True)
