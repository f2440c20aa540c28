"""Losses between teacher and student logits.

Soft targets of Hinton et al. (2015) (forward KL), reverse KL, and the generalized
Jensen-Shannon divergence of GKD (Agarwal et al., 2024). Every divergence here is
computed in float32 from log-softmax and multiplied by `T**2`, so the gradient with
respect to the student logits keeps one size whatever `T` and whichever of them the
distiller uses as its soft loss.
"""

import math
import numbers

import keras
from keras import ops

from keras_kd.losses._common import check_reduction, check_temperature, weighted_mean
from keras_kd.losses.base import SoftLoss


def _check_beta(beta):
    if isinstance(beta, numbers.Real) and not 0.0 <= beta <= 1.0:
        raise ValueError(
            f"beta must be in [0, 1], got {beta}. beta = 0 is the forward KL(teacher || student), "
            "beta = 1 the reverse KL(student || teacher), beta = 0.5 the symmetric Jensen-Shannon divergence."
        )


def _log_probs(teacher_logits, student_logits, temperature):
    """float32 `log softmax(t / T)`, `log softmax(s / T)` and `T`."""
    temperature = ops.cast(temperature, "float32")
    log_p = ops.log_softmax(ops.cast(teacher_logits, "float32") / temperature, axis=-1)
    log_q = ops.log_softmax(ops.cast(student_logits, "float32") / temperature, axis=-1)
    return log_p, log_q, temperature


def _kl(log_a, log_b):
    """`KL(a || b) = sum_c a[c] * (log a[c] - log b[c])` over the last axis, from log-probabilities."""
    return ops.sum(ops.exp(log_a) * (log_a - log_b), axis=-1)


def soft_target_kl(teacher_logits, student_logits, temperature=4.0):
    """Per-example (or per-position) `T**2 * KL(softmax(t/T) || softmax(s/T))`.

    The last axis holds the classes; the result has the shape of the logits
    without it. Computed in float32 with log-softmax, so logits of any dtype
    and of large magnitude stay finite.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> from keras_kd.losses import soft_target_kl
    >>> t = np.array([[2.0, 1.0, 0.1], [0.0, 0.0, 3.0]])
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(soft_target_kl(t, np.zeros((2, 3)), temperature=1.0))]
    [0.2519, 0.732]
    """
    log_p, log_q, temperature = _log_probs(teacher_logits, student_logits, temperature)
    return temperature**2 * _kl(log_p, log_q)


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
    check_temperature(temperature)
    check_reduction(reduction)
    values = soft_target_kl(teacher_logits, student_logits, temperature)
    return weighted_mean(values, sample_weight, reduction)


def reverse_kl(teacher_logits, student_logits, temperature=1.0):
    """Per-example (or per-position) `T**2 * KL(softmax(s/T) || softmax(t/T))`.

    The reverse (mode-seeking) KL: the expectation is under the student's
    distribution. Classes on the last axis; the result drops that axis.
    float32, log-softmax, finite for logits of any dtype and magnitude.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> from keras_kd.losses import reverse_kl
    >>> t = np.array([[2.0, 1.0, 0.1], [0.0, 0.0, 3.0]])
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(reverse_kl(t, np.zeros((2, 3))))]
    [0.2851, 0.9963]
    """
    log_p, log_q, temperature = _log_probs(teacher_logits, student_logits, temperature)
    return temperature**2 * _kl(log_q, log_p)


def reverse_kl_loss(
    teacher_logits,
    student_logits,
    temperature=1.0,
    sample_weight=None,
    reduction="sum_over_batch_size",
):
    """Reverse KL between student and teacher, averaged over examples and positions.

    With `p = softmax(t / T)` (teacher) and `q = softmax(s / T)` (student), per
    example or position:

        T**2 * KL(q || p) = T**2 * sum_c q[c] * (log q[c] - log p[c])

    Mode-seeking: the student is pushed to put its mass where the teacher's is
    high rather than to cover all of it, the usual choice for on-policy
    distillation of language models (MiniLLM, GKD). The `T**2` factor matches
    `soft_target_loss`, so switching between them keeps the gradient's scale: the
    gradient with respect to the student logits is
    `T * q * (log q - log p - KL(q || p))` per example, divided by the number of values.

    Args:
        teacher_logits: `(batch, ..., vocab)` logits of the teacher (not probabilities).
        student_logits: logits of the student, same shape.
        temperature: `T > 0`, a float or a scalar tensor/variable.
        sample_weight: optional `(batch,)` or `(batch, ...)` weights, e.g. a padding mask.
        reduction: `"sum_over_batch_size"` or `"mean_with_sample_weight"`.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import reverse_kl_loss
    >>> t = np.array([[2.0, 1.0, 0.1]])
    >>> float(reverse_kl_loss(t, t))
    0.0
    >>> round(float(reverse_kl_loss(t, np.zeros((1, 3)))), 4)
    0.2851
    """
    check_temperature(temperature)
    check_reduction(reduction)
    values = reverse_kl(teacher_logits, student_logits, temperature)
    return weighted_mean(values, sample_weight, reduction)


def generalized_jsd(teacher_logits, student_logits, beta=0.5, temperature=1.0):
    """Per-example (or per-position) `T**2 * JSD(beta)(p || q)`; see `generalized_jsd_loss`.

    `beta` is a Python float in `[0, 1]` or a float scalar tensor/variable (then the
    caller keeps it in `[0, 1]`; the endpoints are still the exact KLs).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> from keras_kd.losses import generalized_jsd
    >>> t, s = np.array([[2.0, 1.0, 0.1], [0.0, 0.0, 3.0]]), np.zeros((2, 3))
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(generalized_jsd(t, s, beta=0.5))]
    [0.0645, 0.1932]
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(generalized_jsd(t, s, beta=0.0))]  # forward KL
    [0.2519, 0.732]
    """
    _check_beta(beta)
    log_p, log_q, temperature = _log_probs(teacher_logits, student_logits, temperature)
    if isinstance(beta, numbers.Real):
        if beta == 0:
            return temperature**2 * _kl(log_p, log_q)
        if beta == 1:
            return temperature**2 * _kl(log_q, log_p)
        log_w_p, log_w_q = math.log(beta), math.log1p(-beta)
        coef_p, coef_q = beta, 1.0 - beta
    else:
        beta = ops.cast(beta, "float32")
        log_w_p, log_w_q = ops.log(beta), ops.log1p(-beta)  # -inf at an endpoint: m is then q or p exactly
        # At beta = 0 the mixture is q and the divergence must be KL(p || q) = KL(p || m): weight 1, not 0.
        coef_p = ops.where(ops.equal(beta, 0.0), 1.0, beta)
        coef_q = ops.where(ops.equal(beta, 1.0), 1.0, 1.0 - beta)
    # log m = log(beta * p + (1 - beta) * q), a two-term logsumexp: stable for any logits.
    log_m = ops.logaddexp(log_p + log_w_p, log_q + log_w_q)
    return temperature**2 * (coef_p * _kl(log_p, log_m) + coef_q * _kl(log_q, log_m))


def generalized_jsd_loss(
    teacher_logits,
    student_logits,
    beta=0.5,
    temperature=1.0,
    sample_weight=None,
    reduction="sum_over_batch_size",
):
    """Generalized Jensen-Shannon divergence of GKD, averaged over examples and positions.

    With `p = softmax(t / T)` (teacher), `q = softmax(s / T)` (student) and, for
    `0 < beta < 1`, the mixture `m = beta * p + (1 - beta) * q`, per example or
    position (Agarwal et al., 2024, "On-Policy Distillation of Language Models", eq. 1):

        JSD(beta)(p || q) = beta * KL(p || m) + (1 - beta) * KL(q || m)     0 < beta < 1
        JSD(0)(p || q)    = KL(p || q)     forward KL, exactly soft_target_loss
        JSD(1)(p || q)    = KL(q || p)     reverse KL, exactly reverse_kl_loss

    and the loss is `T**2 * JSD(beta)(p || q)`. `beta = 0.5` is the symmetric
    Jensen-Shannon divergence, and in general `JSD(beta)(p || q) = JSD(1 - beta)(q || p)`.

    The endpoints are defined, not limits: as `beta -> 0` the mixture tends to `q`
    and the interior value to `beta * KL(p || q)`, which vanishes (likewise
    `(1 - beta) * KL(q || p)` as `beta -> 1`). The interior divergence behaves like
    forward KL near 0 and reverse KL near 1 in its gradient's direction, not in its
    size, so `beta = 0.01` trains about 100 times more weakly than `beta = 0`. This
    is the paper's definition and the GKD trainer of Hugging Face TRL
    (`GKDConfig.beta`: 0 forward KL, 1 reverse KL), so GKD recipes carry over. The
    mixture's log is `logaddexp(log p + log beta, log q + log(1 - beta))`, stable for
    any logits; everything is float32. The `T**2` factor matches `soft_target_loss`,
    so switching the distiller's soft loss keeps the gradient's scale across `T`.

    Args:
        teacher_logits: `(batch, ..., vocab)` logits of the teacher (not probabilities).
        student_logits: logits of the student, same shape.
        beta: mixture weight in `[0, 1]` (a Python float, or a float scalar tensor/variable).
        temperature: `T > 0`, a float or a scalar tensor/variable.
        sample_weight: optional `(batch,)` or `(batch, ...)` weights, e.g. a padding mask.
        reduction: `"sum_over_batch_size"` or `"mean_with_sample_weight"`.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import generalized_jsd_loss
    >>> t, s = np.array([[2.0, 1.0, 0.1]]), np.zeros((1, 3))
    >>> abs(float(generalized_jsd_loss(t, t))) < 1e-6  # zero up to float32 rounding
    True
    >>> round(float(generalized_jsd_loss(t, s, beta=0.5)), 4)
    0.0645
    >>> round(float(generalized_jsd_loss(t, s, beta=0.0)), 4)  # forward KL
    0.2519
    >>> round(float(generalized_jsd_loss(t, s, beta=1.0)), 4)  # reverse KL
    0.2851
    """
    _check_beta(beta)
    check_temperature(temperature)
    check_reduction(reduction)
    values = generalized_jsd(teacher_logits, student_logits, beta, temperature)
    return weighted_mean(values, sample_weight, reduction)


def two_class_logits(logits):
    """The two-class logits `[0, z]` of single-logit (binary) outputs: `(..., 1)` -> `(..., 2)`, float32.

    A binary classifier's one logit `z` gives `P(class 1) = sigmoid(z)`, and
    `softmax([0, z] / T) = (1 - sigmoid(z / T), sigmoid(z / T))`: every divergence between
    tempered softmax distributions, computed on these logits, is its Bernoulli form. The
    distiller turns single-logit outputs into these before its soft loss (see
    `binary_soft_target_kl` for the default, forward KL).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> ops.convert_to_numpy(two_class_logits(np.array([[2.0], [-1.0]]))).tolist()
    [[0.0, 2.0], [0.0, -1.0]]
    """
    logits = ops.cast(logits, "float32")
    _check_single_logit(logits, "two_class_logits")
    return ops.concatenate([ops.zeros_like(logits), logits], axis=-1)


def _check_single_logit(logits, name):
    if logits.shape[-1] != 1:
        raise ValueError(
            f"{name} takes one logit per example (a binary classifier's outputs, shape (batch, ..., 1)); got shape "
            f"{tuple(logits.shape)}. For several classes use soft_target_kl / soft_target_loss."
        )


def binary_soft_target_kl(teacher_logits, student_logits, temperature=4.0):
    """Per-example (or per-position) Bernoulli `T**2 * KL(Bernoulli(p_t) || Bernoulli(p_s))` of single logits.

    With `p_t = sigmoid(t / T)` and `p_s = sigmoid(s / T)` for logits of shape `(batch, ..., 1)`:

        T**2 * [p_t * (log p_t - log p_s) + (1 - p_t) * (log(1 - p_t) - log(1 - p_s))]

    computed in float32 from `log_sigmoid` (`log(1 - sigmoid(z)) = log_sigmoid(-z)`), finite for
    logits of any magnitude. It equals `soft_target_kl(two_class_logits(t), two_class_logits(s), T)`,
    which is what the distiller computes for single-logit outputs; the gradient with respect to
    the student's logit is `T * (p_s - p_t)`, as for the softmax form. The result drops the last
    axis.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> t, s = np.array([[2.0], [-1.0]]), np.zeros((2, 1))
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(binary_soft_target_kl(t, s, temperature=1.0))]
    [0.3278, 0.1109]
    """
    temperature = ops.cast(temperature, "float32")
    t = ops.cast(teacher_logits, "float32")
    s = ops.cast(student_logits, "float32")
    _check_single_logit(t, "binary_soft_target_kl")
    _check_single_logit(s, "binary_soft_target_kl")
    t, s = t / temperature, s / temperature
    log_p1, log_p0 = ops.log_sigmoid(t), ops.log_sigmoid(-t)
    log_q1, log_q0 = ops.log_sigmoid(s), ops.log_sigmoid(-s)
    kl = ops.exp(log_p1) * (log_p1 - log_q1) + ops.exp(log_p0) * (log_p0 - log_q0)
    return temperature**2 * ops.squeeze(kl, axis=-1)


def binary_soft_target_loss(
    teacher_logits,
    student_logits,
    temperature=4.0,
    sample_weight=None,
    reduction="sum_over_batch_size",
):
    """Soft-target loss of binary classifiers (one logit each), averaged over examples and positions.

    The Bernoulli form of `soft_target_loss`: per example, with `p = sigmoid(logit / T)`,

        T**2 * KL(Bernoulli(p_t) || Bernoulli(p_s))

    (see `binary_soft_target_kl`). A softmax over a single logit is always 1, so the categorical
    loss of `(batch, 1)` logits is 0 whatever the models say; this is the loss to use instead, and
    the one a `keras_kd.Distiller` uses for single-logit outputs with `soft_loss="kl"`.

    Args:
        teacher_logits: `(batch, ..., 1)` logits of the teacher (not probabilities).
        student_logits: logits of the student, same shape.
        temperature: `T > 0`, a float or a scalar tensor/variable.
        sample_weight: optional `(batch,)` or `(batch, ...)` weights.
        reduction: `"sum_over_batch_size"` or `"mean_with_sample_weight"`.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0], [-1.0]])
    >>> float(binary_soft_target_loss(t, t))
    0.0
    >>> round(float(binary_soft_target_loss(t, np.zeros((2, 1)), temperature=1.0)), 4)
    0.2194
    """
    check_temperature(temperature)
    check_reduction(reduction)
    values = binary_soft_target_kl(teacher_logits, student_logits, temperature)
    return weighted_mean(values, sample_weight, reduction)


class _TemperedLoss(SoftLoss):
    """Shared by the soft-loss classes: `per_position` at any temperature, `call` at their own."""

    def __init__(self, temperature, reduction, name, **kwargs):
        check_temperature(temperature)
        super().__init__(temperature=temperature, reduction=reduction, name=name, **kwargs)

    def per_position(self, teacher_logits, student_logits, temperature=None, labels=None):
        """Unreduced values; `temperature=None` uses `self.temperature`; `labels` are not read."""
        temperature = self.temperature if temperature is None else temperature
        return self._values(teacher_logits, student_logits, temperature)

    def get_config(self):
        """The `keras.losses.Loss` config plus `temperature`."""
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="keras_kd")
class SoftTargetLoss(_TemperedLoss):
    """`keras.losses.Loss` form of `soft_target_loss`: `y_true` holds the teacher's logits.

    `per_position(teacher_logits, student_logits, temperature)` returns the
    unreduced values for another temperature (the distiller's schedulable one).

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import SoftTargetLoss
    >>> loss = SoftTargetLoss(temperature=2.0)
    >>> float(loss(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])))
    0.0
    """

    _values = staticmethod(soft_target_kl)

    def __init__(self, temperature=4.0, reduction="sum_over_batch_size", name="soft_target_loss", **kwargs):
        super().__init__(temperature, reduction, name, **kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class ReverseKL(_TemperedLoss):
    """`keras.losses.Loss` form of `reverse_kl_loss`: `y_true` holds the teacher's logits.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import ReverseKL
    >>> loss = ReverseKL(temperature=1.0)
    >>> round(float(loss(np.array([[2.0, 1.0, 0.1]]), np.zeros((1, 3)))), 4)
    0.2851
    """

    _values = staticmethod(reverse_kl)

    def __init__(self, temperature=1.0, reduction="sum_over_batch_size", name="reverse_kl", **kwargs):
        super().__init__(temperature, reduction, name, **kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class GeneralizedJSD(_TemperedLoss):
    """`keras.losses.Loss` form of `generalized_jsd_loss`: `y_true` holds the teacher's logits.

    `beta = 0` is forward KL, `beta = 1` reverse KL, `beta = 0.5` the symmetric JSD
    (see `generalized_jsd_loss` for the exact definition).

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import GeneralizedJSD
    >>> loss = GeneralizedJSD(beta=0.5, temperature=1.0)
    >>> round(float(loss(np.array([[2.0, 1.0, 0.1]]), np.zeros((1, 3)))), 4)
    0.0645
    """

    def __init__(self, beta=0.5, temperature=1.0, reduction="sum_over_batch_size", name="generalized_jsd", **kwargs):
        _check_beta(beta)
        self.beta = beta
        super().__init__(temperature, reduction, name, **kwargs)

    def _values(self, teacher_logits, student_logits, temperature):
        return generalized_jsd(teacher_logits, student_logits, self.beta, temperature)

    def get_config(self):
        """The config of the base class plus `beta`."""
        return {**super().get_config(), "beta": self.beta}


def mixture_logits(teacher_logits, temperature, weights=None, axis=1):
    """Logits whose tempered softmax is the weighted mixture of several teachers' tempered softmaxes.

    `teacher_logits` stacks the teachers along `axis` (the distiller uses
    `(batch, teachers, ..., classes)`, `axis=1`). With `p_i = softmax(z_i / T)` and weights
    `w_i >= 0` summing to 1 (uniform by default), the result is

        T * log(sum_i w_i * p_i)

    so that `softmax(result / T)` is exactly the mixture `sum_i w_i * p_i`, and any soft loss
    (forward or reverse KL, generalized JSD, DKD) compares the student with the mixture at the
    same temperature. It depends on `T`: compute it with the temperature of the step. The
    mixture's log is a log-sum-exp of `log w_i + log p_i` in float32, stable for any logits;
    teachers of weight 0 are left out.

    Averaging probabilities is the arithmetic mean of the ensemble's distributions; averaging
    the logits instead would give their normalized geometric mean, which is sharper and lets a
    teacher with larger logits dominate. Hinton et al. (2015) mention both means for distilling
    an ensemble.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> z = np.array([[[4.0, 0.0], [0.0, 4.0]]])  # (batch=1, teachers=2, classes=2)
    >>> p = ops.convert_to_numpy(ops.softmax(mixture_logits(z, temperature=2.0) / 2.0))
    >>> np.round(p, 4).tolist()
    [[0.5, 0.5]]
    """
    teacher_logits = ops.cast(teacher_logits, "float32")
    count = teacher_logits.shape[axis]
    if weights is None:
        weights = [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} teachers stacked on axis {axis}.")
    temperature = ops.cast(temperature, "float32")
    per_teacher = ops.moveaxis(teacher_logits, axis, 0)
    terms = [
        ops.log_softmax(per_teacher[i] / temperature, axis=-1) + math.log(w) for i, w in enumerate(weights) if w > 0
    ]
    return temperature * ops.logsumexp(ops.stack(terms, axis=0), axis=0)
