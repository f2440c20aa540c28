"""What the user gave as data: in-memory arrays or a dataset, and iterating over its batches."""

import weakref

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


def rows(structure, start, stop=None):
    """Rows `start:stop` of every array of `structure` (views for NumPy arrays).

    >>> import numpy as np
    >>> rows({"a": np.arange(5)}, 1, 3)["a"].tolist()
    [1, 2]
    """
    return keras.tree.map_structure(lambda array: array[start:stop], structure)


def first_rows(x, y, sample_weight, count):
    """The batch `(x, y, sample_weight)` of the first `count` rows of in-memory data, as `fit` would batch it.

    Absent parts are left out of the tuple (as Keras's array adapter does). None when the data is not
    in memory (a dataset, a generator): then only its iterator can give the first batch.

    >>> import numpy as np
    >>> batch = first_rows(np.zeros((10, 3)), np.arange(10), None, 4)
    >>> len(batch), batch[0].shape, batch[1].tolist()
    (2, (4, 3), [0, 1, 2, 3])
    >>> first_rows(iter([]), None, None, 4) is None
    True
    """
    parts = tuple(part for part in (x, y, sample_weight) if part is not None)
    if not parts or not all(is_in_memory(part) for part in parts):
        return None
    return rows(parts, 0, count)


def array_refs(data):
    """Weak references to the arrays of in-memory `data`, for `same_arrays`; None when one cannot be referenced."""
    try:
        return [weakref.ref(leaf) for leaf in _array_leaves(data)]
    except TypeError:
        return None


def same_arrays(refs, data):
    """Whether `data`'s arrays are the very objects that `refs` (from `array_refs`) still point to.

    >>> import numpy as np
    >>> x, y = np.zeros((4, 2)), np.arange(4)
    >>> refs = array_refs((x, y))
    >>> same_arrays(refs, (x, y)), same_arrays(refs, (x.copy(), y))
    (True, False)
    """
    if refs is None:
        return False
    leaves = _array_leaves(data)
    return len(leaves) == len(refs) and all(ref() is leaf for ref, leaf in zip(refs, leaves))


def _array_leaves(data):
    return [leaf for leaf in keras.tree.flatten(data) if leaf is not None]


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
