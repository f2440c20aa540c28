"""Iterating over the batches of a dataset, whatever kind of dataset the user gave."""

import keras


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
