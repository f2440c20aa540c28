"""Losses between teacher and student logits: the soft-target term of Hinton et al. (2015)."""

import keras
from keras import ops

from keras_kd.losses._reduction import check_reduction, weighted_mean


def _check_temperature(temperature):
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}. Typical values are 1 to 20; "
            "T = 1 compares the plain softmax distributions."
        )


def soft_target_kl(teacher_logits, student_logits, temperature=4.0):
    """Per-example (or per-position) `T**2 * KL(softmax(t/T) || softmax(s/T))`.

    The last axis holds the classes; the result has the shape of the logits
    without it. Computed in float32 with log-softmax, so logits of any dtype
    and of large magnitude stay finite.
    """
    teacher_logits = ops.cast(teacher_logits, "float32")
    student_logits = ops.cast(student_logits, "float32")
    temperature = ops.cast(temperature, "float32")
    log_p_teacher = ops.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_student = ops.log_softmax(student_logits / temperature, axis=-1)
    kl = ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return temperature**2 * kl


def soft_target_loss(
    teacher_logits,
    student_logits,
    temperature=4.0,
    sample_weight=None,
    reduction="sum_over_batch_size",
):
    """Hinton et al.'s soft-target loss, averaged over examples and positions.

    Formula, per example (or position) with classes on the last axis:

        T**2 * KL(softmax(t / T) || softmax(s / T))
          = T**2 * sum_c p_t[c] * (log p_t[c] - log p_s[c])

    The `T**2` factor keeps the gradient's size independent of `T`: the
    gradient with respect to the student logits is `T * (p_s - p_t)` per
    example, divided by the number of examples.

    Args:
        teacher_logits: `(batch, ..., classes)` logits of the teacher (not probabilities).
        student_logits: logits of the student, same shape.
        temperature: `T > 0`, a float or a scalar tensor/variable.
        sample_weight: optional `(batch,)` or `(batch, ...)` weights, e.g. a padding mask.
        reduction: `"sum_over_batch_size"` (weighted sum / number of values, Keras's
            default) or `"mean_with_sample_weight"` (weighted sum / sum of weights).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import soft_target_loss
    >>> t = np.array([[2.0, 1.0, 0.1]])
    >>> float(soft_target_loss(t, t, temperature=4.0))
    0.0
    >>> round(float(soft_target_loss(t, np.zeros((1, 3)), temperature=1.0)), 4)
    0.2519
    """
    _check_temperature(temperature)
    check_reduction(reduction)
    values = soft_target_kl(teacher_logits, student_logits, temperature)
    return weighted_mean(values, sample_weight, reduction)


@keras.saving.register_keras_serializable(package="keras_kd")
class SoftTargetLoss(keras.losses.Loss):
    """`keras.losses.Loss` form of `soft_target_loss`: `y_true` holds the teacher's logits.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import SoftTargetLoss
    >>> loss = SoftTargetLoss(temperature=2.0)
    >>> float(loss(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])))
    0.0
    """

    def __init__(self, temperature=4.0, reduction="sum_over_batch_size", name="soft_target_loss", **kwargs):
        _check_temperature(temperature)
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        return soft_target_kl(y_true, y_pred, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
