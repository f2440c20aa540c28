"""Soft targets from the teacher's K largest logits and a tail bucket, for large vocabularies.

A causal LM's logits over a 50,000-word vocabulary cost 100 KB per position in float16;
`TeacherCache.build(..., top_k=K)` stores instead, per position, the K largest teacher logits,
their indices and `log sum_{c not in top K} exp(z_c)`, the log of the tail's unnormalized mass.

The loss compares teacher and student over K + 1 buckets: the teacher's K classes one by one,
and everything else as one tail bucket. With `z` the teacher's logits, `s` the student's, `I` the
teacher's top-K indices and `n = V - K` the size of the tail:

    teacher bucket logits at T:  z_I / T,  and  tail_T = (tail_1 - log n) / T + log n
    student bucket logits at T:  s_I / T,  and  logsumexp_{c not in I} (s_c / T)   (exact)
    loss = T**2 * KL(softmax(teacher buckets) || softmax(student buckets))

The approximation, stated once:

* Within the tail the two conditional distributions are not compared. By the chain rule of KL,
  the dense loss equals this loss plus `T**2 * p_tail * KL(p(.|tail) || q(.|tail))`, so at
  `T = 1` the bucketed loss is a lower bound that is exact when the student's tail is the
  teacher's up to a constant shift; it is close when the tail mass `p_tail` is small.
* The tail's mass is stored at `T = 1`. At another temperature it is computed as if the tail's
  logits were all equal (`tail_1 = m + log n` with `m` their common value, so
  `tail_T = m / T + log n`): exact at `T = 1` and for a uniform tail, an approximation otherwise.
  Since every tail logit is at most the K-th largest, the uniform tail never outranks the stored
  classes.
* How much is lost, measured (`tests/test_losses_top_k.py`): 2,000 classes with Zipf-shaped
  teacher logits and a student near them, K = 64: the bucketed loss is 0.90 of the dense one at
  `T = 1` and 0.52 at `T = 2`, where more of the mass sits in the tail. For language models use
  `T` near 1 and a K that covers most of the teacher's mass.

The student's tail is exact: a log-sum-exp over its logits outside the teacher's top K, so its
gradient reaches every tail class. Everything is float32.
"""

import math

from keras import ops

from keras_kd.losses._common import check_reduction, check_temperature, weighted_mean
from keras_kd.losses.logits import _kl


def check_top_k(top_k, vocabulary_size):
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1 (the number of logits kept per position), got {top_k!r}.")
    if vocabulary_size is not None and top_k >= vocabulary_size:
        raise ValueError(
            f"top_k={top_k} is not smaller than the vocabulary of {vocabulary_size} classes: there would be no tail "
            f"to summarize. Use top_k < {vocabulary_size}, or top_k=None to store the dense logits."
        )


def _outside(logits, indices):
    """`logsumexp` over the last axis of `logits` leaving out the classes at `indices`, and `logits` at them."""
    vocabulary_size, top_k = logits.shape[-1], indices.shape[-1]
    flat = ops.reshape(logits, (-1, vocabulary_size))
    flat_indices = ops.reshape(indices, (-1, top_k))
    picked = ops.take_along_axis(flat, flat_indices, axis=-1)
    row_ids = ops.repeat(ops.arange(ops.shape(flat)[0], dtype="int32"), top_k)
    coordinates = ops.stack([row_ids, ops.reshape(flat_indices, (-1,))], axis=-1)
    selected = ops.scatter(coordinates, ops.ones_like(row_ids, dtype="float32"), ops.shape(flat))
    rest = ops.logsumexp(ops.where(selected > 0, -math.inf, flat), axis=-1)
    leading = ops.shape(logits)[:-1]
    return ops.reshape(rest, leading), ops.reshape(picked, (*leading, top_k))


def top_k_logits(logits, top_k):
    """`(values, indices, tail_logsumexp)`: the `top_k` largest logits per position and the rest's log-mass.

    `values` and `indices` have shape `(..., top_k)` (largest first); `tail_logsumexp` has the
    shape of `logits` without its last axis and holds `log sum_{c not in top k} exp(z_c)`,
    computed over the other classes directly (not as a difference of sums, which loses a small
    tail to rounding).

    >>> import numpy as np
    >>> values, indices, tail = top_k_logits(np.log(np.array([[0.5, 0.1, 0.3, 0.1]])), 2)
    >>> [int(i) for i in np.asarray(indices)[0]], round(float(np.exp(np.asarray(tail)[0])), 4)
    ([0, 2], 0.2)
    """
    logits = ops.cast(logits, "float32")
    check_top_k(top_k, logits.shape[-1])
    values, indices = ops.top_k(logits, top_k)
    indices = ops.cast(indices, "int32")
    tail, _ = _outside(logits, indices)
    return values, indices, tail


def top_k_soft_target_kl(teacher_top_k, student_logits, temperature=4.0):
    """Per-position bucketed `T**2 * KL` from a teacher's `top_k_logits(...)`; see `top_k_soft_target_loss`.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> from keras_kd.losses import top_k_logits, top_k_soft_target_kl
    >>> t = np.array([[4.0, 2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    >>> values = top_k_soft_target_kl(top_k_logits(t, 2), t, temperature=1.0)  # the student is the teacher
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(values)]
    [0.0, 0.0]
    """
    values, indices, tail = teacher_top_k
    temperature = ops.cast(temperature, "float32")
    vocabulary_size, top_k = student_logits.shape[-1], indices.shape[-1]
    check_top_k(top_k, vocabulary_size)
    log_n = math.log(vocabulary_size - top_k)
    teacher_tail = (ops.cast(tail, "float32") - log_n) / temperature + log_n
    teacher = ops.concatenate([ops.cast(values, "float32") / temperature, teacher_tail[..., None]], axis=-1)
    scaled = ops.cast(student_logits, "float32") / temperature
    student_tail, student_top = _outside(scaled, ops.cast(indices, "int32"))
    student = ops.concatenate([student_top, student_tail[..., None]], axis=-1)
    return temperature**2 * _kl(ops.log_softmax(teacher, axis=-1), ops.log_softmax(student, axis=-1))


def top_k_soft_target_loss(
    teacher_top_k,
    student_logits,
    temperature=4.0,
    sample_weight=None,
    reduction="sum_over_batch_size",
):
    """Hinton et al.'s soft-target loss over the teacher's top K classes and one tail bucket.

    With `p` the teacher's and `q` the student's tempered distributions over the K + 1
    buckets (the teacher's K largest classes, then all other classes together):

        T**2 * KL(p || q) = T**2 * sum_b p[b] * (log p[b] - log q[b])

    averaged over examples and positions (weighted by `sample_weight`). The teacher's tail
    bucket is rebuilt at `T` from its mass at `T = 1` as if the tail were uniform, and the
    student's tail bucket is exact; see the module docstring (`keras_kd.losses.top_k`) for the
    approximation. At `T = 1` it equals `soft_target_loss` on the dense logits whenever the
    student's tail logits are the teacher's plus a constant, and is a lower bound otherwise.

    Args:
        teacher_top_k: `(values, indices, tail_logsumexp)` as `top_k_logits(teacher_logits, K)`
            returns them: `(batch, ..., K)`, `(batch, ..., K)` integer, `(batch, ...)`.
        student_logits: `(batch, ..., V)` logits of the student, `V > K`.
        temperature: `T > 0`, a float or a scalar tensor/variable.
        sample_weight: optional `(batch,)` or `(batch, ...)` weights, e.g. a padding mask.
        reduction: `"sum_over_batch_size"` or `"mean_with_sample_weight"`.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import soft_target_loss, top_k_logits, top_k_soft_target_loss
    >>> t = np.array([[4.0, 2.0, 0.0, 0.0, 0.0]])
    >>> s = np.array([[1.0, 1.0, 3.0, 3.0, 3.0]])
    >>> sparse = float(top_k_soft_target_loss(top_k_logits(t, 2), s, temperature=1.0))
    >>> dense = float(soft_target_loss(t, s, temperature=1.0))
    >>> round(sparse, 4), round(dense, 4)  # the student's tail is uniform like the teacher's: equal
    (2.5064, 2.5064)
    """
    check_temperature(temperature)
    check_reduction(reduction)
    values = top_k_soft_target_kl(teacher_top_k, student_logits, temperature)
    return weighted_mean(values, sample_weight, reduction)
