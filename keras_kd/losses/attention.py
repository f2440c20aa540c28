"""Attention transfer (Zagoruyko & Komodakis, 2017): match where the feature maps are active."""

import numbers

import keras
from keras import ops

from keras_kd.losses._common import check_reduction, flatten_examples, weighted_mean
from keras_kd.losses.features import unit_vectors


def _check_p(p):
    if isinstance(p, numbers.Number) and not p > 0:
        raise ValueError(f"p must be > 0, got {p}. The paper uses p = 2 (the mean of squared activations).")


def _check_feature_map(shape, name):
    if len(shape) < 3:
        raise ValueError(
            f"Attention transfer needs feature maps of rank >= 3, (batch, ...spatial, channels), "
            f"channels last; got {name} of shape {shape}, which has no spatial positions. For "
            "vectors (batch, width) use Hint (or hint_loss) or Relational (rkd_distance_loss, "
            "rkd_angle_loss) instead."
        )


def attention_map(features, p=2):
    """The normalised spatial attention map of channels-last `features`.

    Formula, per example with `C` channels on the last axis:

        a[pos] = (1 / C) * sum_c |A[pos, c]|**p,     Q = a / ||a||_2

    over the flattened spatial positions. A map with `||a|| <= 1e-12` (all-zero
    features) is returned as exactly 0, with a finite (zero) gradient.

    Args:
        features: `(batch, H, W, C)`, or any rank >= 3 `(batch, ...spatial, C)`.
        p: the exponent, > 0 (the paper's default 2).

    Returns:
        float32 `(batch, positions)`, each row of unit L2 norm (or 0).

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import attention_map
    >>> x = np.zeros((1, 2, 2, 3))
    >>> x[0, 0, 0] = [3.0, 0.0, 0.0]
    >>> x[0, 1, 1] = [0.0, 3.0, 0.0]
    >>> np.round(np.asarray(attention_map(x)), 4)
    array([[0.7071, 0.    , 0.    , 0.7071]], dtype=float32)
    """
    _check_p(p)
    features = ops.cast(features, "float32")
    _check_feature_map(tuple(features.shape), "features")
    energy = ops.square(features) if p == 2 else ops.power(ops.abs(features), p)
    return unit_vectors(flatten_examples(ops.mean(energy, axis=-1)))  # (batch, positions)


def _average_pool(x, target):
    """Average-pools the spatial axes of channels-last `x` down to the sizes `target` (integer factors)."""
    spatial = tuple(x.shape[1:-1])
    if spatial == tuple(target):
        return x
    batch = x.shape[0] if x.shape[0] is not None else ops.shape(x)[0]
    channels = x.shape[-1] if x.shape[-1] is not None else ops.shape(x)[-1]
    split = [batch]
    for size, goal in zip(spatial, target):
        split += [goal, size // goal]
    x = ops.reshape(x, (*split, channels))
    return ops.mean(x, axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def indivisible_sizes(teacher_shape, student_shape):
    """The first spatial sizes `(t, s)`, both known, of which neither is a multiple of the other; else None.

    Attention transfer average-pools the larger map onto the smaller one, axis by axis, which
    needs each larger size to be an integer multiple of the smaller (shapes are channels last).
    """
    for t, s in zip(teacher_shape[1:-1], student_shape[1:-1]):
        if t is not None and s is not None and max(t, s) % min(t, s):
            return t, s
    return None


def _match_spatial(teacher, student):
    """Average-pools whichever map is larger, axis by axis, to the smaller spatial size."""
    t_shape, s_shape = tuple(teacher.shape), tuple(student.shape)
    if len(t_shape) != len(s_shape):
        raise ValueError(
            f"teacher and student feature maps must have the same rank, got teacher {t_shape} and "
            f"student {s_shape}. Pair layers with the same number of spatial axes."
        )
    t_spatial, s_spatial = t_shape[1:-1], s_shape[1:-1]
    if any(d is None for d in t_spatial + s_spatial):
        return teacher, student  # sizes unknown until run time: they must then be equal
    if t_spatial == s_spatial:
        return teacher, student
    indivisible = indivisible_sizes(t_shape, s_shape)
    if indivisible:
        t, s = indivisible
        raise ValueError(
            f"Attention transfer average-pools the larger feature map to the smaller one, which "
            f"needs spatial sizes that are integer multiples of each other; got teacher {t_shape} "
            f"and student {s_shape} ({max(t, s)} is not a multiple of {min(t, s)}). Pair layers "
            "whose spatial sizes divide, or resize one side (pooling/upsampling/cropping) first."
        )
    target = tuple(min(t, s) for t, s in zip(t_spatial, s_spatial))
    return _average_pool(teacher, target), _average_pool(student, target)


def attention_transfer_values(teacher_features, student_features, p=2):
    """Per-example mean over positions of `(Q_s - Q_t)**2`: shape `(batch,)`."""
    _check_p(p)
    teacher_features = ops.cast(teacher_features, "float32")
    student_features = ops.cast(student_features, "float32")
    _check_feature_map(tuple(teacher_features.shape), "teacher_features")
    _check_feature_map(tuple(student_features.shape), "student_features")
    teacher_features, student_features = _match_spatial(teacher_features, student_features)
    q_teacher = attention_map(teacher_features, p)
    q_student = attention_map(student_features, p)
    return ops.mean(ops.square(q_student - q_teacher), axis=-1)


def attention_transfer_loss(
    teacher_features, student_features, p=2, sample_weight=None, reduction="sum_over_batch_size"
):
    """Zagoruyko & Komodakis's attention-transfer loss between two channels-last feature maps.

    Formula, per example, with `Q = attention_map(features, p)` over `N` positions:

        v = (1 / N) * sum_pos (Q_s[pos] - Q_t[pos])**2

    then the weighted mean of `v` over examples. The channel counts may differ (the
    map averages over channels). When the spatial sizes differ, the larger feature
    map is average-pooled, axis by axis, to the smaller one before the maps are
    computed; each larger size must be an integer multiple of the smaller.

    Args:
        teacher_features: `(batch, ...spatial, C_t)` teacher feature map, rank >= 3.
        student_features: `(batch, ...spatial, C_s)` student feature map, same rank.
        p: exponent of the attention map, > 0 (default 2).
        sample_weight: optional `(batch,)` per-example weights.
        reduction: `"sum_over_batch_size"` (weighted sum / batch size) or
            `"mean_with_sample_weight"` (weighted sum / sum of weights).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import attention_transfer_loss
    >>> t = np.zeros((1, 2, 2, 4))
    >>> t[0, 0, 0] = 1.0  # the teacher looks at the top-left corner
    >>> s = np.zeros((1, 2, 2, 8))
    >>> s[0, 1, 1] = 2.0  # the student at the bottom-right one
    >>> float(attention_transfer_loss(t, s))  # (1 + 1) / 4 positions
    0.5
    >>> float(attention_transfer_loss(t, 2.0 * np.tile(t, (1, 1, 1, 2))))
    0.0
    """
    check_reduction(reduction)
    values = attention_transfer_values(teacher_features, student_features, p)
    return weighted_mean(values, sample_weight, reduction)


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransferLoss(keras.losses.Loss):
    """`keras.losses.Loss` form of `attention_transfer_loss`: `y_true` holds the teacher's feature map.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import AttentionTransferLoss
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 3))
    >>> float(AttentionTransferLoss(p=2)(x, x))
    0.0
    """

    def __init__(self, p=2, reduction="sum_over_batch_size", name="attention_transfer_loss", **kwargs):
        _check_p(p)
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.p = p

    def call(self, y_true, y_pred):
        """Per-example `mean((Q_s - Q_t)**2)` of the normalized attention maps (see `attention_map`)."""
        return attention_transfer_values(y_true, y_pred, self.p)

    def get_config(self):
        """The `keras.losses.Loss` config plus `p`."""
        return {**super().get_config(), "p": self.p}
