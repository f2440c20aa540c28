"""keras-kd: knowledge distillation for Keras 3 on TensorFlow, JAX and PyTorch.

The public names load on first use, so that `import keras_kd` does not import
Keras: the `keras-kd --backend` flag can still choose the backend.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Distiller": "keras_kd.distiller",
    "LayerPair": "keras_kd.features.pairs",
    "Hint": "keras_kd.features.pairs",
    "AttentionTransfer": "keras_kd.features.pairs",
    "Relational": "keras_kd.features.pairs",
    "CosineEmbedding": "keras_kd.features.pairs",
    "TeacherCache": "keras_kd.cache.teacher_cache",
    "paired_inputs": "keras_kd.data.batch_keys",
    "callbacks": "keras_kd.callbacks",
    "losses": "keras_kd.losses",
    "recipes": "keras_kd.recipes",
    "hub": "keras_kd.hub",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'keras_kd' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if module.__name__.endswith(name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
