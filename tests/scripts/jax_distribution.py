"""The distiller under keras.distribution on JAX; prints one JSON line for tests/test_distribution_jax.py.

Usage:
    jax_distribution.py mesh                    # 2 host CPU devices in this process: single device,
                                                # DataParallel and ModelParallel on the same global batches
    jax_distribution.py outside                 # models built outside the distribution, run under it
    jax_distribution.py single                  # the single-device run (the multi-process baseline)
    jax_distribution.py process ID PORT FEED    # one of 2 processes on loopback; FEED is "tfdata" (DataParallel
                                                # auto-sharding a global tf.data.Dataset), "local" (DataParallel,
                                                # auto_shard_dataset=False, this process's rows) or "model"
                                                # (ModelParallel over both processes, each feeding every row)

Every run trains the same teacher/student pair (a Hint between layers of different widths, so a regressor
trains too) with SGD + momentum for 3 epochs of 4 batches of 16, shuffle=False, with sample weights, and
reports the per-step running losses, evaluate's logs, the final weights and where each variable lives.
"""

import contextlib
import json
import os
import sys
import tempfile

MODE = sys.argv[1]
os.environ["KERAS_BACKEND"] = "jax"
if MODE in ("mesh", "outside"):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

if MODE == "process":
    PROCESS_ID, PORT, FEED = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    # Before keras is imported and before anything touches a JAX device.
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{PORT}", num_processes=2, process_id=PROCESS_ID)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import keras_kd  # noqa: E402

ROWS, BATCH, EPOCHS = 64, 16, 3
rng = np.random.default_rng(0)
X = rng.normal(size=(ROWS, 8)).astype("float32")
Y = rng.integers(0, 4, size=ROWS).astype("int32")
SW = rng.uniform(0.5, 1.5, size=ROWS).astype("float32")


def mlp(width, seed, name):
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(
                width, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed), name="hidden"
            ),
            keras.layers.Dense(4, kernel_initializer=keras.initializers.GlorotUniform(seed + 1), name="logits"),
        ],
        name=name,
    )


def build():
    """Teacher, student and distiller, in whatever distribution is current."""
    keras.utils.set_random_seed(0)  # the regressor's initializer is unseeded: the same draws in every run
    teacher, student = mlp(16, 1, "teacher"), mlp(8, 3, "student")
    distiller = keras_kd.Distiller(
        teacher, student, temperature=2.0, alpha=0.5, pairs=[keras_kd.Hint("hidden", "hidden", weight=0.5)]
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    return distiller


def model_parallel(devices):
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*hidden/kernel"] = (None, "model")  # teacher (8, 16), student (8, 8): columns split
    layout_map[".*hidden/bias"] = ("model",)
    layout_map[".*logits/kernel"] = ("model", None)  # rows split, Megatron-style
    layout_map[".*regressor/kernel"] = (None, "model")  # the Hint's Dense(16) regressor
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


class StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({k: float(v) for k, v in sorted(logs.items())})


def numpy_value(variable):
    value = variable.value
    if not value.is_fully_addressable:  # sharded over several processes
        value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(value).tolist()


def run(distribution, x, y, sw, batch_size, dataset=None):
    """Builds, fits and evaluates under `distribution` (None: the default single device)."""
    scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
    with scope:
        distiller = build()
        teacher_before = [np.asarray(numpy_value(v)) for v in distiller.teacher.weights]
        steps = StepLosses()
        data = dict(x=dataset) if dataset is not None else dict(x=x, y=y, sample_weight=sw, batch_size=batch_size)
        distiller.fit(**data, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[steps])
        evaluated = distiller.evaluate(**data, verbose=0, return_dict=True)
    regressor = distiller.pairs[0].regressor
    get_weights = _outcome(distiller.student.get_weights) or "ok"
    variables = distiller.trainable_variables + distiller.non_trainable_variables + distiller.optimizer.variables
    return {
        "steps": steps.steps,
        "evaluate": {k: float(v) for k, v in evaluated.items()},
        "student": [numpy_value(v) for v in distiller.student.weights],
        "regressor": [numpy_value(v) for v in regressor.weights],
        "teacher_changed": max(
            float(np.max(np.abs(np.asarray(numpy_value(v)) - before)))
            for v, before in zip(distiller.teacher.weights, teacher_before)
        ),
        "layouts": {
            v.path: {"spec": str(tuple(v.value.sharding.spec)), "devices": len(v.value.sharding.device_set)}
            for v in variables
            if hasattr(v.value.sharding, "spec")
        },
        "single_device_variables": [
            v.path for v in variables if len(v.value.sharding.device_set) == 1 and distribution is not None
        ],
        "get_weights": get_weights,
        "teacher_paths": [v.path for v in distiller.teacher.weights],
        "regressor_paths": [v.path for v in regressor.weights],
    }


def _outcome(call):
    try:
        call()
        return None
    except Exception as error:  # noqa: BLE001 - reported to the test
        return f"{type(error).__name__}: {error}"


def outside():
    """Models made outside a distribution, then run under it: the errors, and are the weights intact after.

    `keras_alone` calls Keras's own `fit` on the distiller (skipping keras_kd's check) to record what
    Keras 3.15 does by itself.
    """
    distribution = keras.distribution.DataParallel()
    results = {case: _outside_case(case, distribution) for case in ("all_outside", "teacher_outside", "keras_alone")}
    # The fix for a saved teacher: load it inside the scope.
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "teacher.keras")
        mlp(16, 1, "teacher").save(path)
        with distribution.scope():
            distiller = keras_kd.Distiller(keras.saving.load_model(path), mlp(8, 3, "student"))
            distiller.compile(optimizer="sgd")
            results["loaded_inside"] = {
                "fit": _outcome(lambda: distiller.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0)),
                "teacher_devices": len(distiller.teacher.weights[0].value.sharding.device_set),
            }
    return results


def _outside_case(case, distribution):
    if case == "teacher_outside":
        teacher = mlp(16, 1, "teacher")
        with distribution.scope():
            distiller = keras_kd.Distiller(teacher, mlp(8, 3, "student"), pairs=[keras_kd.Hint("hidden", "hidden")])
            distiller.compile(optimizer="sgd")
    else:
        distiller = build()
    before = distiller.student.get_weights()
    fit = keras.Model.fit if case == "keras_alone" else type(distiller).fit
    outcome = {}
    with distribution.scope():
        outcome["fit"] = _outcome(lambda: fit(distiller, X, Y, batch_size=BATCH, epochs=1, verbose=0))
        if case == "all_outside":
            outcome["evaluate"] = _outcome(lambda: distiller.evaluate(X, Y, batch_size=BATCH, verbose=0))
            outcome["predict"] = _outcome(lambda: distiller.predict(X, batch_size=BATCH, verbose=0))
            outcome["train_on_batch"] = _outcome(lambda: distiller.train_on_batch(X[:BATCH], Y[:BATCH]))
    weights = []
    outcome["get_weights"] = _outcome(lambda: weights.extend(distiller.student.get_weights()))
    outcome["weights_intact"] = len(weights) == len(before) and all(map(np.array_equal, before, weights))
    if case == "all_outside":
        # The same distiller still trains on one device, outside the distribution.
        outcome["fit_outside"] = _outcome(lambda: distiller.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0))
    return outcome


def main():
    if MODE == "mesh":
        devices = keras.distribution.list_devices()
        assert len(devices) == 2, devices
        results = {
            "devices": len(devices),
            "single": run(None, X, Y, SW, BATCH),
            "data_parallel": run(keras.distribution.DataParallel(devices=devices), X, Y, SW, BATCH),
            "model_parallel": run(model_parallel(devices), X, Y, SW, BATCH),
        }
    elif MODE == "outside":
        results = outside()
    elif MODE == "single":
        results = run(None, X, Y, SW, BATCH)
    elif MODE == "process":
        results = run_process()
    else:
        raise SystemExit(f"unknown mode {MODE!r}")
    print(json.dumps(results))


def run_process():
    devices = keras.distribution.list_devices()
    assert len(devices) == 2 and jax.process_count() == 2, devices
    if FEED == "tfdata":
        import tensorflow as tf

        # The global batches; DataParallel gives each process its half of every batch.
        dataset = tf.data.Dataset.from_tensor_slices((X, Y, SW)).batch(BATCH)
        return run(keras.distribution.DataParallel(devices=devices), None, None, None, None, dataset=dataset)
    if FEED == "local":
        # Each process feeds its own half of every global batch; Keras stitches the halves in process order.
        half = BATCH // 2
        rows = np.concatenate(
            [np.arange(start + PROCESS_ID * half, start + (PROCESS_ID + 1) * half) for start in range(0, ROWS, BATCH)]
        )
        distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        return run(distribution, X[rows], Y[rows], SW[rows], half)
    if FEED == "model":
        # One model replica over both processes: each process feeds the whole global batch.
        distribution = model_parallel(devices)
        distribution.auto_shard_dataset = False
        return run(distribution, X, Y, SW, BATCH)
    raise SystemExit(f"unknown feed {FEED!r}")


if __name__ == "__main__":
    main()
