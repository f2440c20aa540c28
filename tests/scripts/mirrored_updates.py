"""One SGD step on 1 replica and under MirroredStrategy on 2 logical CPUs; prints the ratios of updates and losses."""

import json
import os

os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402

x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
y = (x[:, 0] > 0).astype("int64")


def model(seed, name, regularizer=None):
    init = keras.initializers.GlorotUniform(seed)
    layer = keras.layers.Dense(3, kernel_initializer=init, kernel_regularizer=regularizer, name="out")
    return keras.Sequential([keras.Input((8,)), layer], name=name)


def step(strategy, alpha, loss, with_pairs=False):
    with strategy.scope():
        student = model(2, "s", keras.regularizers.L2(0.1))
        pairs = [keras_kd.Hint("out", "out"), keras_kd.LayerPair("out", "out", keras.losses.MeanSquaredError())]
        distiller = keras_kd.Distiller(
            model(1, "t"), student, temperature=2.0, alpha=alpha, pairs=pairs if with_pairs else []
        )
        distiller.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
    before = student.get_weights()[0].copy()
    history = distiller.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    return student.get_weights()[0] - before, history.history["loss"][0]


results = {}
compiled = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
for alpha, loss, with_pairs in [(0.0, None, False), (0.5, None, False), (0.5, compiled, False), (0.5, None, True)]:
    one, loss_one = step(tf.distribute.get_strategy(), alpha, loss, with_pairs)
    two, loss_two = step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), alpha, loss, with_pairs)
    key = f"alpha={alpha},{'compiled' if loss else 'default'}{',pairs' if with_pairs else ''}"
    results[key] = {"update": float(np.linalg.norm(two - one) / np.linalg.norm(one)), "loss": loss_two / loss_one}
print(json.dumps(results))
