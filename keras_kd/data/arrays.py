"""What the user gave as data: in-memory arrays or a dataset, and iterating over its batches."""

import keras
import numpy as np


def is_in_memory(data):
    """Arrays, or dicts/lists/tuples of arrays such as `(x, y[, sample_weight])`: not a dataset.

    Array-like is anything with a `shape` and a `dtype` (NumPy arrays, backend tensors).
    """
    if isinstance(data, (dict, list, tuple)):
        leaves = [leaf for leaf in keras.tree.flatten(data) if leaf is not None]
    else:
        leaves = [data]
    return bool(leaves) and all(hasattr(leaf, "shape") and hasattr(leaf, "dtype") for leaf in leaves)


def unpack_batch(batch, what="A batch"):
    """`(x, y, sample_weight)` of data given as `x`, `(x, y)` or `(x, y, sample_weight)`; absent parts are None.

    Only a tuple is unpacked: a list or a dict is the `x` of a model with several inputs (unlike
    `keras.utils.unpack_x_y_sample_weight`, which unpacks lists too). An empty tuple, or one of
    more than three elements, is a ValueError that starts with `what`.

    >>> import numpy as np
    >>> x, y = np.zeros((2, 3)), np.array([0, 1])
    >>> [part is None for part in unpack_batch((x, y))]
    [False, False, True]
    >>> unpack_batch([x, x])[1] is None  # a list: the inputs of a two-input model
    True
    >>> unpack_batch((x, y, y, y), what="data")
    Traceback (most recent call last):
    ...
    ValueError: data must be x, (x, y) or (x, y, sample_weight); got a tuple of 4 elements.
    """
    if isinstance(batch, tuple):
        if not 1 <= len(batch) <= 3:
            raise ValueError(
                f"{what} must be x, (x, y) or (x, y, sample_weight); got a tuple of {len(batch)} elements."
            )
        return tuple(batch) + (None,) * (3 - len(batch))
    return batch, None, None


def batch_size_of(x):
    """The leading dimension of the first array of the structure `x`."""
    return int(np.shape(keras.tree.flatten(x)[0])[0])


def dataset_batches(data, name, accepted):
    """The batches of a batched `tf.data.Dataset` (as NumPy), a `keras.utils.PyDataset` or another iterable.

    Anything else is a `TypeError` naming `name`, what was given, and `accepted` (the other kinds
    the caller takes, e.g. in-memory arrays).
    """
    if isinstance(data, keras.utils.PyDataset):
        return (data[i] for i in range(len(data)))
    if hasattr(data, "as_numpy_iterator"):
        return data.as_numpy_iterator()
    if hasattr(data, "__iter__"):
        return iter(data)
    raise TypeError(
        f"{name} must be a batched tf.data.Dataset (or another iterable of batches), a keras.utils.PyDataset, "
        f"or {accepted}; got {type(data).__name__}."
    )


def batch_count(data):
    """How many batches a dataset says it yields (`len`, or a `tf.data` cardinality); None when unknown or infinite."""
    cardinality = getattr(data, "cardinality", None)
    if callable(cardinality):
        try:
            count = int(cardinality())
        except (TypeError, ValueError):
            return None
        return count if count >= 0 else None
    try:
        return len(data)
    except TypeError:
        return None
