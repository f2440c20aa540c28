"""Models and distillers created outside the MirroredStrategy scope they are compiled or fitted under.

Runs each case on 2 logical CPUs and prints, per case, where it stopped (`compile`,
`fit` or `done`) and the exception's type and message (or the loss of the fit).
"""

import contextlib
import json
import os

os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402

x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
y = (x[:, 0] > 0).astype("int64")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def model(name, hidden):
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(hidden, name="hidden"), keras.layers.Dense(3, name="logits")], name=name
    )


def run(inside, stock=False):
    """`inside`: the steps (teacher, student, distiller, compile, fit) run inside `strategy.scope()`."""

    def scope(step):
        return strategy.scope() if step in inside else contextlib.nullcontext()

    stage = "build"
    try:
        with scope("teacher"):
            teacher = model("teacher", 6)
        with scope("student"):
            student = model("student", 4)
        with scope("distiller"):
            pairs = [keras_kd.Hint("hidden", "hidden")]  # a regressor: variables of the Distiller's own
            trained = student if stock else keras_kd.Distiller(teacher, student, pairs=pairs)
        stage = "compile"
        with scope("compile"):
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) if stock else None
            trained.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        stage = "fit"
        with scope("fit"):
            history = trained.fit(x, y, batch_size=16, epochs=1, verbose=0)
        return {"stage": "done", "loss": history.history["loss"][0]}
    except Exception as error:  # noqa: BLE001 - the point is to report whatever was raised
        return {"stage": stage, "error": type(error).__name__, "message": str(error)}


everything = {"teacher", "student", "distiller", "compile", "fit"}
cases = {
    "all_inside": run(everything),
    "fit_after_scope": run(everything - {"fit"}),
    "created_outside_compiled_inside": run({"compile", "fit"}),
    "created_and_compiled_outside_fitted_inside": run({"fit"}),
    "teacher_outside": run(everything - {"teacher"}),
    "student_outside": run(everything - {"student"}),
    "distiller_outside": run(everything - {"distiller"}),
    "distiller_compile_fit_outside": run({"teacher", "student"}),
    "stock_keras_model_created_outside": run({"compile", "fit"}, stock=True),
}
print(json.dumps(cases))
