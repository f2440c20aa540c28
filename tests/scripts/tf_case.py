"""The training case shared by mirrored_trajectory.py and multi_worker.py (import it after TensorFlow is set up).

A distiller with a `keras_kd.Hint` between layers of different widths (a Dense regressor trains
with the student), an L2 regularizer on the student, sample weights in the data, SGD; `summary`
gathers what the tests compare between a distributed run and the single-replica one.
"""

import keras
import numpy as np

import keras_kd

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype("float32")
y = rng.integers(0, 3, size=64).astype("int64")
sample_weight = rng.uniform(0.2, 2.0, size=64).astype("float32")


class StepLogs(keras.callbacks.Callback):
    """The logs after every training step (Keras's running means over the epoch so far)."""

    def __init__(self):
        super().__init__()
        self.steps = {}

    def on_train_batch_end(self, batch, logs=None):
        for name, value in logs.items():
            self.steps.setdefault(name, []).append(float(value))


def model(seed, name, hidden, regularizer=None):
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(hidden, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed),
                               kernel_regularizer=regularizer, name="hidden"),
            keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed + 100), name="logits"),
        ],
        name=name,
    )  # fmt: skip


def distiller_in(strategy):
    """Teacher, student and a compiled Distiller created inside `strategy.scope()`."""
    keras.utils.set_random_seed(0)  # the Hint's regressor draws its initial weights from the global seed
    with strategy.scope():
        teacher = model(1, "teacher", hidden=6)
        student = model(2, "student", hidden=4, regularizer=keras.regularizers.L2(0.01))
        distiller = keras_kd.Distiller(
            teacher, student, temperature=2.0, alpha=0.3, pairs=[keras_kd.Hint("hidden", "hidden", weight=0.5)]
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.2), metrics=["accuracy"], jit_compile=False)
    return distiller


def summary(strategy, distiller, steps, history, evaluation, predictions):
    student = distiller.student
    regressor = [w for w in distiller.trainable_weights if not any(w is s for s in student.trainable_weights)]
    return {
        "replicas": strategy.num_replicas_in_sync,
        "steps": steps.steps,
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "evaluate": {k: float(v) for k, v in evaluation.items()},
        "predict": np.asarray(predictions).tolist(),
        "student": [w.tolist() for w in student.get_weights()],
        "regressor": [np.asarray(w).tolist() for w in regressor],
    }
