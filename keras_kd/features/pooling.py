"""Pooling a sequence of hidden states into one vector per example, over the padding mask.

Sentence-embedding models (sentence-transformers' all-MiniLM-L6-v2 among them) serve the mean of the
last hidden states over the real tokens; BERT's classifier reads the first (`[CLS]`) position. A
pair with `pooling=...` compares the pooled vectors, each model pooled over its own padding mask,
so that a teacher and a student with different tokenizers still compare one vector per text.
"""

from keras import ops

POOLING_MODES = ("mean", "first")


def pool(features, padding_mask=None, mode="mean"):
    """`(batch, positions, width)` hidden states -> `(batch, width)` vectors.

    `mode="mean"`: `sum_p m_p h_p / max(sum_p m_p, 1)`, the mean over the positions where the padding
    mask `m` is 1 (all positions without a mask; a row without any real token pools to 0).
    `mode="first"`: the hidden state at position 0 (BERT's `[CLS]`).

    Example:

    >>> import numpy as np
    >>> from keras_kd.features import pool
    >>> hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    >>> np.asarray(pool(hidden, np.array([[1, 1, 0]]))).tolist()
    [[2.0, 3.0]]
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES} (or None for no pooling), got {mode!r}.")
    features = ops.convert_to_tensor(features)
    if mode == "first":
        return features[:, 0]
    if padding_mask is None:
        return ops.mean(features, axis=1)
    mask = ops.expand_dims(ops.cast(padding_mask, features.dtype), -1)
    total = ops.sum(features * mask, axis=1)
    count = ops.maximum(ops.sum(mask, axis=1), ops.cast(1.0, features.dtype))
    return total / count
