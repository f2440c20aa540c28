"""Losses between intermediate features: the FitNets hint (Romero et al., 2015) and the
cosine hidden-state loss of DistilBERT (Sanh et al., 2019)."""

import keras
from keras import ops

from keras_kd.losses._common import align_weights, check_reduction, shapes_match, weighted_mean

# Vectors shorter than this (in L2 norm) count as zero vectors: see `unit_vectors`.
NORM_EPSILON = 1e-12


def unit_vectors(x, axis=-1, epsilon=NORM_EPSILON):
    """`x / ||x||` along `axis`; a vector with `||x|| <= epsilon` becomes exactly 0.

    The zero case is a double `where` (the norm is only taken of a safe value), so
    both the value and the gradient stay finite on every backend: a zero vector
    has no direction, its unit vector is 0 and it receives no gradient through
    the normalisation. (A plain `norm` has a NaN gradient at 0 under JAX, and an
    `x / max(||x||, eps)` guard an enormous one, `1 / eps`.)
    """
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    nonzero = squared > epsilon**2
    safe = ops.where(nonzero, squared, ops.ones_like(squared))
    return ops.where(nonzero, x * ops.rsqrt(safe), ops.zeros_like(x))


def _broadcast_weights(sample_weight, features):
    """Per-example or per-position weights, broadcast to the per-position values `features[..., 0]`.

    Keras's own `mean_with_sample_weight` divides by the sum of the weights as given,
    not as broadcast over positions; broadcasting first makes the Loss classes
    agree with the functions.
    """
    if sample_weight is None:
        return None
    values = ops.convert_to_tensor(features)[..., 0]
    return ops.broadcast_to(align_weights(sample_weight, values), ops.shape(values))


class _PositionWeightedLoss(keras.losses.Loss):
    """A `keras.losses.Loss` whose sample weights are broadcast over positions first (see `_broadcast_weights`)."""

    def __call__(self, y_true, y_pred, sample_weight=None):
        return super().__call__(y_true, y_pred, _broadcast_weights(sample_weight, y_pred))


def hint_loss(teacher_features, student_features, sample_weight=None, reduction="sum_over_batch_size"):
    """FitNets' hint loss: the mean squared error between teacher and (projected) student features.

    Formula, per example or position with features on the last axis of width `C`:

        v = (1 / C) * sum_c (t[c] - s[c])**2

    then the weighted mean of the values `v` (shape `(batch, ...positions)`). Without
    weights this is the plain MSE over all elements. The shapes must be equal: the
    student side is expected to be projected by a regressor already.

    Args:
        teacher_features: `(batch, ..., C)` teacher features.
        student_features: student features of the same shape.
        sample_weight: optional `(batch,)` per-example weights (broadcast over positions)
            or `(batch, ...positions)` per-position weights, e.g. a padding mask.
        reduction: `"sum_over_batch_size"` (weighted sum / number of values) or
            `"mean_with_sample_weight"` (weighted sum / sum of weights).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import hint_loss
    >>> float(hint_loss(np.array([[1.0, 2.0]]), np.array([[1.0, 0.0]])))
    2.0
    """
    check_reduction(reduction)
    teacher_features = ops.cast(teacher_features, "float32")
    student_features = ops.cast(student_features, "float32")
    t_shape, s_shape = tuple(teacher_features.shape), tuple(student_features.shape)
    if not shapes_match(t_shape, s_shape):
        raise ValueError(
            f"hint_loss needs teacher and student features of the same shape, got teacher "
            f"{t_shape} and student {s_shape}. Project the student features to the teacher's "
            "shape first (Hint(..., regressor='auto') adds such a regressor)."
        )
    values = ops.mean(ops.square(teacher_features - student_features), axis=-1)
    return weighted_mean(values, sample_weight, reduction)


def cosine_embedding_values(teacher_hidden, student_hidden):
    """Per-position `1 - cos(h_t, h_s)` over the last axis; a zero vector has cosine 0 (value 1)."""
    teacher_hidden = ops.cast(teacher_hidden, "float32")
    student_hidden = ops.cast(student_hidden, "float32")
    cosine = ops.sum(unit_vectors(teacher_hidden) * unit_vectors(student_hidden), axis=-1)
    return 1.0 - cosine


def cosine_embedding_loss(teacher_hidden, student_hidden, mask=None):
    """DistilBERT's hidden-state loss: one minus the cosine similarity, averaged over positions.

    Formula, per position with the hidden size on the last axis:

        v = 1 - <h_t, h_s> / (||h_t|| * ||h_s||)

    then `sum(m * v) / sum(m)` over the positions with mask `m` (the plain mean
    without a mask; 0 when the mask is all zero). A vector with norm <= 1e-12 counts
    as zero: its cosine with anything is 0 (so `v = 1`) and it gets no gradient, on
    every backend (see `unit_vectors`).

    Args:
        teacher_hidden: `(batch, ..., hidden)` teacher hidden states.
        student_hidden: student hidden states, same shape (same hidden size).
        mask: optional `(batch,)` or `(batch, seq)` weights, e.g. a padding mask (0 = ignore).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import cosine_embedding_loss
    >>> t = np.array([[[1.0, 0.0], [0.0, 2.0]]])  # (batch=1, seq=2, hidden=2)
    >>> s = np.array([[[0.0, 2.0], [0.0, 4.0]]])
    >>> float(cosine_embedding_loss(t, s))  # (1 + 0) / 2
    0.5
    >>> float(cosine_embedding_loss(t, s, mask=np.array([[0.0, 1.0]])))
    0.0
    """
    values = cosine_embedding_values(teacher_hidden, student_hidden)
    return weighted_mean(values, mask, "mean_with_sample_weight")


@keras.saving.register_keras_serializable(package="keras_kd")
class HintLoss(_PositionWeightedLoss):
    """`keras.losses.Loss` form of `hint_loss`: `y_true` holds the teacher's features.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import HintLoss
    >>> float(HintLoss()(np.array([[1.0, 2.0]]), np.array([[1.0, 0.0]])))
    2.0
    """

    def __init__(self, reduction="sum_over_batch_size", name="hint_loss", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)

    def call(self, y_true, y_pred):
        """Per-example (or per-position) mean squared difference over the last axis, in float32."""
        return ops.mean(ops.square(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32")), axis=-1)


@keras.saving.register_keras_serializable(package="keras_kd")
class CosineEmbeddingLoss(_PositionWeightedLoss):
    """`keras.losses.Loss` form of `cosine_embedding_loss`: `y_true` holds the teacher's hidden states.

    A mask goes in as `sample_weight`; the default reduction,
    `"mean_with_sample_weight"`, then averages over the unmasked positions.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import CosineEmbeddingLoss
    >>> float(CosineEmbeddingLoss()(np.array([[1.0, 0.0]]), np.array([[0.0, 5.0]])))
    1.0
    """

    def __init__(self, reduction="mean_with_sample_weight", name="cosine_embedding_loss", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)

    def call(self, y_true, y_pred):
        """Per-example (or per-position) `1 - cos(y_true, y_pred)` over the last axis, in float32."""
        return cosine_embedding_values(y_true, y_pred)
