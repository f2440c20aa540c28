"""A distillation run with `keras.callbacks.BackupAndRestore`, for tests/test_interruption.py.

Usage: interrupted_fit.py OUT_DIR [PAUSE_MARKER]

Trains a distiller (a `Hint` pair with a learned regressor, a temperature and an alpha schedule
that read the current value, Adam) for `EPOCHS` epochs on fixed NumPy data in a fixed order, with
its backup in `OUT_DIR/backup`. Running the same command again after the process died resumes
from the backup. What it writes to `OUT_DIR`:

* `events.jsonl`: one line per event (`train_begin`, `epoch_begin` with the epoch, `train_end`),
  each with the process id;
* `state-<pid>-train_begin.npz`: the training state once `BackupAndRestore` has restored it;
* `state-<pid>-epoch<k>.npz`: the training state at the end of epoch `k`;
* `final.npz`: the training state when `fit` returns.

A state holds the student's weights, the regressor's, the optimizer's variables (and its step
count as `iterations`), the temperature and alpha. With `PAUSE_MARKER`, and only while that file
does not exist yet, the run writes it in the middle of epoch 1 (after batch `PAUSE_BATCH`, once
epoch 0 is backed up) and then waits, so that a test can kill it there; a run that finds the
marker trains straight through.
"""

import json
import os
import sys
import time

import keras
import numpy as np

import keras_kd

EPOCHS = 3
BATCH_SIZE = 8
EXAMPLES = 48
PAUSE_EPOCH, PAUSE_BATCH = 1, 2

out_dir = sys.argv[1]
pause_marker = sys.argv[2] if len(sys.argv) > 2 else None

keras.utils.set_random_seed(0)
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def state_arrays(distiller):
    """`{group/index: array}` of everything a resumed run must get back, in a fixed order."""
    groups = {
        "student": distiller.student.weights,
        "regressor": [v for pair in distiller.pairs for r in pair.regressors() for v in r.weights],
        "optimizer": distiller.optimizer.variables,
    }
    arrays = {
        f"{group}/{index:03d}": keras.ops.convert_to_numpy(variable.value)
        for group, variables in groups.items()
        for index, variable in enumerate(variables)
    }
    arrays["iterations"] = keras.ops.convert_to_numpy(distiller.optimizer.iterations.value)
    arrays["temperature"] = np.float32(distiller.temperature)
    arrays["alpha"] = np.float32(distiller.alpha)
    return arrays


def save_state(distiller, name):
    arrays = state_arrays(distiller)
    temporary = os.path.join(out_dir, f".{name}.tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, os.path.join(out_dir, name))


def log_event(event, **details):
    with open(os.path.join(out_dir, "events.jsonl"), "a") as file:
        file.write(json.dumps({"pid": os.getpid(), "event": event, **details}) + "\n")


class Recorder(keras.callbacks.Callback):
    """Placed after BackupAndRestore, so that train_begin sees the restored state."""

    def on_train_begin(self, logs=None):
        log_event("train_begin")
        save_state(self.model, f"state-{os.getpid()}-train_begin.npz")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        log_event("epoch_begin", epoch=epoch)

    def on_epoch_end(self, epoch, logs=None):
        save_state(self.model, f"state-{os.getpid()}-epoch{epoch}.npz")

    def on_train_batch_end(self, batch, logs=None):
        if pause_marker is None or os.path.exists(pause_marker) or self.epoch != PAUSE_EPOCH or batch != PAUSE_BATCH:
            return
        with open(pause_marker + ".tmp", "w") as file:
            file.write(str(os.getpid()))
        os.replace(pause_marker + ".tmp", pause_marker)
        time.sleep(300)  # the test kills the process here, in the middle of the epoch
        raise RuntimeError("interrupted_fit.py waited at its pause marker, but nothing killed it.")

    def on_train_end(self, logs=None):
        log_event("train_end")


rng = np.random.default_rng(0)
x = rng.normal(size=(EXAMPLES, 8)).astype("float32")
y = rng.integers(0, 3, size=EXAMPLES).astype("int64")

teacher = keras.Sequential(
    [keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="features"), keras.layers.Dense(3)],
    name="teacher",
)
student = keras.Sequential(
    [keras.Input((8,)), keras.layers.Dense(6, activation="relu", name="features"), keras.layers.Dense(3)],
    name="student",
)
distiller = keras_kd.Distiller(
    teacher, student, temperature=4.0, alpha=0.1, pairs=[keras_kd.Hint("features", "features", weight=0.5)]
)
distiller.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01))

callbacks = [
    keras.callbacks.BackupAndRestore(os.path.join(out_dir, "backup"), save_freq="epoch"),
    Recorder(),
    # Both schedules read the current value: a resumed run that lost it would continue from the wrong one.
    keras_kd.callbacks.TemperatureScheduler(lambda epoch, current: current * 0.75),
    keras_kd.callbacks.AlphaScheduler(lambda epoch, current: min(current + 0.2, 1.0)),
]
distiller.fit(x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
save_state(distiller, "final.npz")
