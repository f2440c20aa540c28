"""Token-level terms computed a chunk of positions at a time, from hidden states through output heads.

A language model's logits are `(batch, positions, vocabulary)`: at a vocabulary of 128,256 and 4,096
positions one float32 tensor is 2.1 GB per sequence. `chunked_weighted_mean` never builds them whole:
it runs each model's output head on `chunk_size` positions of its final hidden states, reduces that
chunk's term to one number, and lets the chunk's logits go. The backward pass does not keep them
either: each chunk is wrapped in `keras.remat`, so its logits are recomputed when its gradient is
needed. The value is the same as the dense `weighted_mean(per_position(head_t(h_t), head_s(h_s)))`.
"""

import keras
from keras import ops

from keras_kd.losses._common import align_weights, check_reduction


def chunked_weighted_mean(
    per_position,
    teacher_hidden,
    student_hidden,
    teacher_head,
    student_head,
    chunk_size,
    sample_weight=None,
    reduction="sum_over_batch_size",
):
    """`weighted_mean(per_position(teacher_head(h_t), student_head(h_s)), sample_weight, reduction)`, chunk by chunk.

    With `z_t = teacher_head(h_t)` and `z_s = student_head(h_s)` over positions `p`, the value is
    `sum_p w_p * v_p / P` (`"sum_over_batch_size"`, `P` the number of positions of the batch) or
    `sum_p w_p * v_p / sum_p w_p` (`"mean_with_sample_weight"`), where `v = per_position(z_t, z_s)`.
    It is computed `chunk_size` positions at a time along axis 1; the teacher's logits are outside
    the gradient (`stop_gradient`), and each chunk's student logits are rematerialized in the
    backward pass (`keras.remat`) instead of being kept.

    Args:
        per_position: `(teacher_logits, student_logits) -> (batch, chunk)` values, e.g.
            `lambda t, s: soft_target_kl(t, s, temperature)`.
        teacher_hidden, student_hidden: `(batch, positions, width)` final hidden states (the
            widths may differ); `positions` must be known when the function is traced.
        teacher_head, student_head: callables from a chunk of hidden states to its logits (a
            model's own output layers, e.g. a KerasHub backbone's `token_embedding(x, reverse=True)`).
        chunk_size: positions per chunk, an int >= 1 (the last chunk may be shorter).
        sample_weight: optional `(batch,)` or `(batch, positions)` weights (a padding mask).
        reduction: `"sum_over_batch_size"` or `"mean_with_sample_weight"`.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import soft_target_kl
    >>> rng = np.random.default_rng(0)
    >>> h_t, h_s = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 3))
    >>> w_t, w_s = rng.normal(size=(4, 7)), rng.normal(size=(3, 7))
    >>> kl = lambda t, s: soft_target_kl(t, s, 2.0)
    >>> chunked = chunked_weighted_mean(kl, h_t, h_s, lambda h: h @ w_t, lambda h: h @ w_s, chunk_size=2)
    >>> dense = np.mean(np.asarray(kl(h_t @ w_t, h_s @ w_s)))
    >>> bool(np.isclose(float(chunked), dense, rtol=1e-5))
    True
    """
    check_reduction(reduction)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}.")
    teacher_hidden, student_hidden = ops.convert_to_tensor(teacher_hidden), ops.convert_to_tensor(student_hidden)
    positions_shape = tuple(student_hidden.shape[:-1])
    if len(positions_shape) != 2 or positions_shape[1] is None:
        raise ValueError(
            f"chunked_weighted_mean needs (batch, positions, width) hidden states with a known number of positions; "
            f"got the student's of shape {tuple(student_hidden.shape)}."
        )
    if tuple(teacher_hidden.shape[:-1]) != positions_shape:
        raise ValueError(
            f"The teacher's hidden states {tuple(teacher_hidden.shape)} and the student's "
            f"{tuple(student_hidden.shape)} must share their (batch, positions) dimensions."
        )
    positions = positions_shape[1]

    def chunk_sum(teacher_chunk, student_chunk):
        teacher_logits = ops.stop_gradient(teacher_head(teacher_chunk))
        return ops.sum(ops.cast(per_position(teacher_logits, student_head(student_chunk)), "float32"))

    def weighted_chunk_sum(teacher_chunk, student_chunk, weight_chunk):
        teacher_logits = ops.stop_gradient(teacher_head(teacher_chunk))
        values = ops.cast(per_position(teacher_logits, student_head(student_chunk)), "float32")
        return ops.sum(values * weight_chunk)

    weight = None
    if sample_weight is not None:
        ones = ops.ones(ops.shape(student_hidden)[:-1], "float32")
        weight = ops.broadcast_to(align_weights(sample_weight, ones), ops.shape(ones))
    step = keras.remat(chunk_sum if weight is None else weighted_chunk_sum)
    total = ops.zeros((), "float32")
    for start in range(0, positions, chunk_size):
        stop = min(start + chunk_size, positions)
        chunk = (teacher_hidden[:, start:stop], student_hidden[:, start:stop])
        total = total + (step(*chunk) if weight is None else step(*chunk, weight[:, start:stop]))
    if weight is not None and reduction == "mean_with_sample_weight":
        return ops.divide_no_nan(total, ops.sum(weight))
    return total / ops.cast(ops.shape(student_hidden)[0] * positions, "float32")
