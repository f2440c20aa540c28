"""Gradients for loss tests: on whichever backend Keras runs, and a float64 NumPy reference."""

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


def numeric_gradient(fn, x, h=1e-6):
    """Central finite differences of a float64 NumPy function."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (fn(up) - fn(down)) / (2 * h)
    return grad
