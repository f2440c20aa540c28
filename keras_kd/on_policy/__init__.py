"""On-policy distillation of KerasHub causal LMs: the student samples, the teacher scores (`keras_kd.OnPolicy`)."""

from keras_kd.on_policy.config import OnPolicy

__all__ = ["OnPolicy"]
