"""3 epochs of SGD on 1 replica and under MirroredStrategy on 2 logical CPUs; prints both runs as JSON.

The distiller has a `keras_kd.Hint` between layers of different widths (so a Dense
regressor trains with the student), an L2 regularizer, and the data carries sample
weights. Each run prints the logs of `fit` after every step and every epoch, the
`evaluate` logs after training, `predict`'s outputs, and the final student and
regressor weights.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tf_case import StepLogs, distiller_in, sample_weight, summary, x, y  # noqa: E402


def run(strategy):
    distiller = distiller_in(strategy)
    steps = StepLogs()
    history = distiller.fit(
        x, y, sample_weight=sample_weight, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[steps]
    )
    evaluation = distiller.evaluate(x, y, sample_weight=sample_weight, batch_size=16, verbose=0, return_dict=True)
    predictions = distiller.predict(x, batch_size=16, verbose=0)
    return summary(strategy, distiller, steps, history, evaluation, predictions)


single = run(tf.distribute.get_strategy())
mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print(json.dumps({"single": single, "mirrored": mirrored}))
