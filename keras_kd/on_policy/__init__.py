"""On-policy distillation of KerasHub causal LMs: the student samples, the teacher scores (`keras_kd.OnPolicy`).

`score_completions` measures the same thing after training: how the teacher rates the student's own text.
"""

from keras_kd.on_policy.config import OnPolicy  # noqa: F401
from keras_kd.on_policy.scoring import score_completions

__all__ = ["score_completions"]  # OnPolicy is public as keras_kd.OnPolicy
