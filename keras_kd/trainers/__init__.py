"""The train/test steps of `Distiller`, one implementation per Keras backend.

Each step does the same four things in the same order: unpack the batch, run
the frozen teacher outside the gradient computation, compute the student's
loss and its gradients, then apply them and update the metrics.
"""

import keras

_backend = keras.backend.backend()
if _backend == "tensorflow":
    from keras_kd.trainers.base import BatchPredictor
    from keras_kd.trainers.tensorflow import DistillationSteps
elif _backend == "jax":
    from keras_kd.trainers.jax import BatchPredictor, DistillationSteps
elif _backend == "torch":
    from keras_kd.trainers.base import BatchPredictor
    from keras_kd.trainers.torch import DistillationSteps
else:
    raise ImportError(
        f"keras_kd supports the tensorflow, jax and torch backends; KERAS_BACKEND is "
        f"{_backend!r}. Set KERAS_BACKEND before importing keras."
    )

__all__ = ["BatchPredictor", "DistillationSteps"]
