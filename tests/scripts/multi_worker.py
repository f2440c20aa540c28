"""One worker of a MultiWorkerMirroredStrategy run, or the single-process reference; prints the run as JSON.

With `TF_CONFIG` set (see tests/test_distribution_tf.py) the process is one worker of a
`tf.distribute.MultiWorkerMirroredStrategy` cluster; without it, the same training runs
in this one process under the default strategy. Either way: 3 epochs of SGD on the same
global batches of 16 (a `tf.data.Dataset`, not shuffled; under the strategy each worker
reads its share of every global batch), a `keras_kd.Hint` with a Dense regressor, an L2
regularizer and sample weights, then `evaluate` and `predict`.
"""

import ctypes
import json
import os
import signal
import sys

if "TF_CONFIG" in os.environ and sys.platform.startswith("linux"):
    # A worker outliving its parent (the test) would wait on its peer forever: the kernel kills it
    # when the parent dies (PR_SET_PDEATHSIG; a Python watchdog thread cannot run while TensorFlow
    # blocks in the strategy's constructor).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)

os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf  # noqa: E402

multi_worker = "TF_CONFIG" in os.environ
# The strategy comes first: it must be created before any other TensorFlow op runs.
strategy = tf.distribute.MultiWorkerMirroredStrategy() if multi_worker else tf.distribute.get_strategy()

from tf_case import StepLogs, distiller_in, sample_weight, summary, x, y  # noqa: E402

GLOBAL_BATCH = 16

distiller = distiller_in(strategy)
train = tf.data.Dataset.from_tensor_slices((x, y, sample_weight)).batch(GLOBAL_BATCH)
steps = StepLogs()
history = distiller.fit(train, epochs=3, verbose=0, callbacks=[steps])
evaluation = distiller.evaluate(train, verbose=0, return_dict=True)
predictions = distiller.predict(tf.data.Dataset.from_tensor_slices(x).batch(GLOBAL_BATCH), verbose=0)
task = json.loads(os.environ["TF_CONFIG"])["task"]["index"] if multi_worker else None
print(json.dumps({"task": task, **summary(strategy, distiller, steps, history, evaluation, predictions)}))
