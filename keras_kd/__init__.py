"""keras-kd: knowledge distillation for Keras 3 on TensorFlow, JAX and PyTorch."""

from keras_kd import callbacks, losses
from keras_kd.distiller import Distiller

__version__ = "0.1.0"

__all__ = ["Distiller", "callbacks", "losses", "__version__"]
