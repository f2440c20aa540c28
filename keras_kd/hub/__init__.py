"""KerasHub support: DistilBERT-style students built from a teacher, and GGUF checkpoints as KerasHub models.

Needs the `hub` extra (`pip install "keras-kd[hub]"`). Names load on first use.
"""

import importlib

_PUBLIC = {
    "student_from_teacher": "keras_kd.hub.student",
    "load_gguf": "keras_kd.hub.gguf",
    "packaged_smollm2_path": "keras_kd.hub.gguf",
}

__all__ = list(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'keras_kd.hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
