"""Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

DKD splits the classical soft-target loss at the true class. With `p = softmax(z / T)` over
the classes and the ground-truth class `g` of each example (or position):

* the binary distribution `b = (p[g], 1 - p[g])`: how much mass goes to the true class;
* the non-target distribution `p_hat[c] = p[c] / (1 - p[g])` for `c != g`: how the rest of
  the mass is shared among the other classes (`g` excluded, renormalized).

TCKD (target class KD) is `T**2 * KL(b_t || b_s)`, NCKD (non-target class KD) is
`T**2 * KL(p_hat_t || p_hat_s)`, and the classical loss is exactly

    T**2 * KL(p_t || p_s) = TCKD + (1 - p_t[g]) * NCKD

so the classical loss down-weights NCKD wherever the teacher is confident. DKD weights the two
freely: `alpha * TCKD + beta * NCKD` (the paper uses `alpha = 1`, `beta = 8` on CIFAR-100 and
`T = 4`).

Numerics. Everything is float32 and log-softmax based, so logits of any dtype and magnitude
give finite values and gradients. `log(1 - p[g])` is the log-sum-exp of the non-target
log-probabilities, never `log(1 - p[g])` itself (which is `-inf` in float32 as soon as
`p[g] > 1 - 6e-8`), and `log p_hat[c] = log p[c] - log(1 - p[g])` exactly. In that
log-sum-exp the target class is replaced by a log-probability of `-1e9`, which `exp`
turns into exactly 0. The authors' code instead subtracts 1000 from the tempered target
logit before a softmax; that is the same whenever the tempered logits span less than about
900, and our replacement stays exact beyond (e.g. float16 teacher logits in the thousands at
`T = 1`).
"""

import warnings

import keras
from keras import ops

from keras_kd.losses._common import check_number, check_reduction, check_temperature, label_kind, weighted_mean
from keras_kd.losses.base import SoftLoss

# Replaces the target class's log-probability inside the non-target log-sum-exp: exp() of it is 0.
_EXCLUDED_LOG_PROB = -1e9


_TEMPERATURE_ADVICE = "The DKD paper uses T = 4 on CIFAR-100 and T = 1 on ImageNet."


def _check_weight(name, value):
    return check_number(
        f"DKD's {name}",
        value,
        advice=" alpha weights TCKD (the target class's probability), beta weights NCKD (the distribution over the "
        "other classes); the paper uses alpha=1, beta=8 on CIFAR-100.",
    )


def target_mask(labels, logits):
    """Boolean `(batch, ..., classes)` mask of the ground-truth class of every example or position.

    `labels` are class ids of shape `logits.shape[:-1]` (or with a trailing axis of 1), or
    one-hot/probability vectors of the logits' shape, whose largest entry is taken as the class.
    """
    labels = ops.convert_to_tensor(labels)
    classes = logits.shape[-1]
    if label_kind(labels.shape, logits.shape) == "categorical":
        ids = ops.argmax(labels, axis=-1)
    else:
        ids = labels
        if len(ids.shape) == len(logits.shape):
            ids = ops.squeeze(ids, axis=-1)
    ids = ops.cast(ids, "int32")
    return ops.equal(ops.expand_dims(ids, -1), ops.arange(classes, dtype="int32"))


def _binary_and_non_target(log_p, is_target):
    """`(log p[g], log(1 - p[g]), log p_hat)` from log-probabilities; `log p_hat` is 0 at the target class.

    At the target `log p[g] - log(1 - p[g])` is no log-probability, and for a confident teacher
    (a tempered logit gap of about 90) its `exp` overflows: a `where` that drops it afterwards
    would still pass a NaN gradient (0 * inf), so it is replaced before any `exp`.
    """
    log_target = ops.sum(ops.where(is_target, log_p, 0.0), axis=-1)
    log_rest = ops.logsumexp(ops.where(is_target, _EXCLUDED_LOG_PROB, log_p), axis=-1)
    return log_target, log_rest, ops.where(is_target, 0.0, log_p - ops.expand_dims(log_rest, -1))


def dkd_terms(teacher_logits, student_logits, labels, temperature=4.0):
    """Per-example (or per-position) `(TCKD, NCKD)`, each already multiplied by `T**2`.

    `TCKD = T**2 * KL(b_t || b_s)` over the binary distributions `(p[g], 1 - p[g])`, and
    `NCKD = T**2 * KL(p_hat_t || p_hat_s)` over the non-target classes renormalized (see the
    module docstring). Float32, log-softmax; the result has the logits' shape without the
    class axis. A single class (no non-target class) gives `NCKD = 0`.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> from keras_kd.losses import dkd_terms, soft_target_kl
    >>> t, s, labels = np.array([[3.0, 1.0, 0.2]]), np.array([[1.0, 2.0, 0.0]]), np.array([0])
    >>> tckd, nckd = (float(ops.convert_to_numpy(v)[0]) for v in dkd_terms(t, s, labels, temperature=1.0))
    >>> round(tckd, 4), round(nckd, 4)
    (0.7766, 0.1279)
    >>> p_target = float(np.exp(3.0) / np.exp(t).sum())  # the teacher's probability of the true class
    >>> kl = float(ops.convert_to_numpy(soft_target_kl(t, s, temperature=1.0))[0])
    >>> round(tckd + (1 - p_target) * nckd, 4) == round(kl, 4)  # classical KD = TCKD + (1 - p_t[g]) * NCKD
    True
    """
    temperature = ops.cast(temperature, "float32")
    student_logits = ops.cast(student_logits, "float32")
    log_p_t = ops.log_softmax(ops.cast(teacher_logits, "float32") / temperature, axis=-1)
    log_p_s = ops.log_softmax(student_logits / temperature, axis=-1)
    is_target = target_mask(labels, student_logits)
    target_t, rest_t, log_hat_t = _binary_and_non_target(log_p_t, is_target)
    target_s, rest_s, log_hat_s = _binary_and_non_target(log_p_s, is_target)
    tckd = ops.exp(target_t) * (target_t - target_s) + ops.exp(rest_t) * (rest_t - rest_s)
    nckd_values = ops.where(is_target, 0.0, ops.exp(log_hat_t) * (log_hat_t - log_hat_s))
    nckd = ops.sum(nckd_values, axis=-1)
    return temperature**2 * tckd, temperature**2 * nckd


def dkd(teacher_logits, student_logits, labels, alpha=1.0, beta=8.0, temperature=4.0):
    """Per-example (or per-position) `alpha * TCKD + beta * NCKD`; see `dkd_loss`.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> from keras_kd.losses import dkd
    >>> t, s, labels = np.array([[3.0, 1.0, 0.2]]), np.array([[1.0, 2.0, 0.0]]), np.array([0])
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(dkd(t, s, labels, alpha=1.0, beta=8.0, temperature=1.0))]
    [1.7995]
    """
    tckd, nckd = dkd_terms(teacher_logits, student_logits, labels, temperature)
    return alpha * tckd + beta * nckd


def dkd_loss(
    teacher_logits,
    student_logits,
    labels,
    alpha=1.0,
    beta=8.0,
    temperature=4.0,
    sample_weight=None,
    reduction="sum_over_batch_size",
):
    """Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), averaged over examples and positions.

    With `p_t = softmax(t / T)`, `p_s = softmax(s / T)` and the true class `g`, per example
    or position:

        TCKD = T**2 * KL(b_t || b_s),          b = (p[g], 1 - p[g])
        NCKD = T**2 * KL(p_hat_t || p_hat_s),  p_hat[c] = p[c] / (1 - p[g]) for c != g
        DKD  = alpha * TCKD + beta * NCKD

    The classical soft-target loss is `TCKD + (1 - p_t[g]) * NCKD`; DKD frees NCKD from the
    `(1 - p_t[g])` factor, which vanishes on the examples the teacher is sure of.

    Args:
        teacher_logits: `(batch, ..., classes)` logits of the teacher (not probabilities).
        student_logits: logits of the student, same shape.
        labels: the ground truth: class ids `(batch, ...)` (or `(batch, ..., 1)`), or one-hot
            vectors of the logits' shape (the largest entry is the class). Give positions whose
            id is no class (a padding id such as -100) a sample weight of 0.
        alpha: weight of TCKD, >= 0.
        beta: weight of NCKD, >= 0.
        temperature: `T > 0`, a float or a scalar tensor/variable.
        sample_weight: optional `(batch,)` or `(batch, ...)` weights, e.g. a padding mask.
        reduction: `"sum_over_batch_size"` (weighted sum / number of values) or
            `"mean_with_sample_weight"` (weighted sum / sum of weights).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import dkd_loss, soft_target_loss
    >>> t, s = np.array([[3.0, 1.0, 0.2]]), np.array([[1.0, 2.0, 0.0]])
    >>> round(float(dkd_loss(t, s, labels=np.array([0]), alpha=1.0, beta=8.0, temperature=1.0)), 4)
    1.7995
    >>> float(dkd_loss(t, t, labels=np.array([0])))
    0.0
    """
    check_temperature(temperature, _TEMPERATURE_ADVICE)
    alpha, beta = _check_weight("alpha", alpha), _check_weight("beta", beta)
    check_reduction(reduction)
    values = dkd(teacher_logits, student_logits, labels, alpha, beta, temperature)
    return weighted_mean(values, sample_weight, reduction)


@keras.saving.register_keras_serializable(package="keras_kd")
class DKD(SoftLoss):
    """`keras.losses.Loss` form of `dkd_loss`, and a `soft_loss` for `keras_kd.Distiller`.

    As a Keras loss, `y_true` is the pair `(labels, teacher_logits)` and `y_pred` the
    student's logits. As `Distiller(teacher, student, soft_loss=DKD(...))` it replaces the
    soft term: the distiller passes the batch's labels (sparse or one-hot) and its own
    temperature variable (so `TemperatureScheduler` reaches it; `temperature` here must equal
    the distiller's). A batch without labels is an error, since DKD is defined around the true
    class.

    `warmup_epochs=N` ramps the weight of the DKD term linearly as in the paper's code: in
    epoch `e` (counted from 0) the term is multiplied by `min((e + 1) / N, 1)`, so the first
    epoch uses `1 / N` and epoch `N - 1` on the full weight (the paper: 20 of 240 epochs on
    CIFAR-100). The distiller keeps that weight in a variable and its `fit` updates it at the
    start of every epoch (see `Distiller`); the warm-up only acts inside a distiller.

    Args:
        alpha: weight of TCKD (target class), >= 0.
        beta: weight of NCKD (non-target classes), >= 0.
        temperature: `T > 0`.
        warmup_epochs: length of the linear warm-up in epochs; 0 (default) for none.
        reduction: `"sum_over_batch_size"` or `"mean_with_sample_weight"` (in a distiller),
            or any Keras reduction when called as a Keras loss.
        name: the loss's name.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import DKD
    >>> loss = DKD(alpha=1.0, beta=8.0, temperature=1.0)
    >>> t, s, labels = np.array([[3.0, 1.0, 0.2]]), np.array([[1.0, 2.0, 0.0]]), np.array([0])
    >>> round(float(loss((labels, t), s)), 4)
    1.7995
    """

    needs_labels = True

    def __init__(
        self,
        alpha=1.0,
        beta=8.0,
        temperature=4.0,
        warmup_epochs=0,
        reduction="sum_over_batch_size",
        name="dkd",
        **kwargs,
    ):
        check_temperature(temperature, _TEMPERATURE_ADVICE)
        super().__init__(
            temperature=temperature,
            warmup_epochs=warmup_epochs,
            reduction=reduction,
            name=name,
            **kwargs,
        )
        self.alpha = _check_weight("alpha", alpha)
        self.beta = _check_weight("beta", beta)

    def per_position(self, teacher_logits, student_logits, temperature=None, labels=None):
        """Unreduced `alpha * TCKD + beta * NCKD`; `temperature=None` uses `self.temperature`."""
        if labels is None:
            raise ValueError(
                "DKD needs the ground-truth labels: it splits the soft targets at the true class. Pass labels "
                "(per_position(..., labels=y)), or use another soft loss for unlabelled data."
            )
        temperature = self.temperature if temperature is None else temperature
        return dkd(teacher_logits, student_logits, labels, self.alpha, self.beta, temperature)

    def call(self, y_true, y_pred):
        """Unreduced DKD values; `y_true` is the pair `(labels, teacher_logits)`, `y_pred` the student's logits."""
        if not isinstance(y_true, (tuple, list)) or len(y_true) != 2:
            raise ValueError(
                "DKD as a Keras loss takes y_true = (labels, teacher_logits) and y_pred = the student's logits; "
                f"got y_true of type {type(y_true).__name__}."
            )
        labels, teacher_logits = y_true
        if self.warmup_epochs and not getattr(self, "_warned_standalone_warmup", False):
            self._warned_standalone_warmup = True
            warnings.warn(
                f"DKD(warmup_epochs={self.warmup_epochs}) is used as a plain Keras loss, where the warm-up does not "
                "act: only keras_kd.Distiller(..., soft_loss=DKD(...)).fit ramps the term. Multiply the loss by "
                "dkd.warmup_weight(epoch) yourself, or pass warmup_epochs=0.",
                UserWarning,
                stacklevel=2,
            )
        return self.per_position(teacher_logits, y_pred, self.temperature, labels=labels)

    def get_config(self):
        """The `keras.losses.Loss` config plus `alpha`, `beta`, `temperature` and `warmup_epochs`."""
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "temperature": self.temperature,
            "warmup_epochs": self.warmup_epochs,
        }
