"""Weighted averaging shared by every loss: one value per example or position in, a scalar out."""

from keras import ops

REDUCTIONS = ("sum_over_batch_size", "mean_with_sample_weight")


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"Unknown reduction {reduction!r}. Use one of {REDUCTIONS}: "
            "'sum_over_batch_size' divides the weighted sum by the number of values, "
            "'mean_with_sample_weight' by the sum of the weights."
        )
    return reduction


def align_weights(sample_weight, values):
    """Casts `sample_weight` to float32 and gives it the rank of `values`.

    Per-example weights `(batch,)` broadcast over positions `(batch, seq)`;
    a trailing axis of size 1, `(batch, 1)`, is dropped when `values` has none.
    """
    weight = ops.cast(sample_weight, "float32")
    while len(weight.shape) > len(values.shape) and weight.shape[-1] == 1:
        weight = ops.squeeze(weight, axis=-1)
    while len(weight.shape) < len(values.shape):
        weight = ops.expand_dims(weight, axis=-1)
    if len(weight.shape) != len(values.shape):
        raise ValueError(
            f"sample_weight of shape {tuple(sample_weight.shape)} does not fit per-example "
            f"or per-position loss values of shape {tuple(values.shape)}. Pass one weight per "
            "example (batch,) or per position (batch, ...)."
        )
    return weight


def weighted_mean(values, sample_weight=None, reduction="sum_over_batch_size"):
    """Reduces per-example/per-position `values` to a float32 scalar.

    `sum_over_batch_size`: `sum(w * v) / count(v)` (Keras's default, so that terms
    computed with and without weights mix on one scale);
    `mean_with_sample_weight`: `sum(w * v) / sum(w)`.
    """
    values = ops.cast(values, "float32")
    if sample_weight is None:
        return ops.mean(values)
    weight = ops.broadcast_to(align_weights(sample_weight, values), ops.shape(values))
    total = ops.sum(values * weight)
    if reduction == "mean_with_sample_weight":
        return ops.divide_no_nan(total, ops.sum(weight))
    return total / ops.cast(ops.size(values), "float32")
