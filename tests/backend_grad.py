"""Gradient of a scalar function of one array, on whichever backend Keras runs."""

import keras
import numpy as np


def gradient(fn, value):
    value = np.asarray(value, dtype="float32")
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(jax.numpy.asarray(value)))
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(value)
        with tf.GradientTape() as tape:
            out = fn(variable)
        return tape.gradient(out, variable).numpy()
    import torch

    tensor = torch.tensor(value, requires_grad=True)
    fn(tensor).backward()
    return tensor.grad.numpy()
