"""Fingerprints that tie cached teacher outputs to the inputs and the teacher that produced them.

`example_fingerprints` gives one 16-byte digest per example of a batch. A teacher cache stores it
next to the teacher's outputs, so that a later reader can check that example `i` of its data is
still the example the teacher saw (same pixels or tokens, same dtype, same position). It hashes
only the inputs: labels and sample weights are not part of it.

`teacher_fingerprint` gives one hex digest for a Keras model: its class, its config and every
weight. A cache records it in its metadata, so that outputs of one teacher are never reused for
another (a retrained teacher, a different checkpoint, a changed architecture).

Both are BLAKE2b with a 128-bit digest: fast on large arrays, and collisions between different
inputs are out of reach in practice (this protects against mistakes, not against an adversary
who crafts inputs).
"""

import hashlib
import json
from collections.abc import Mapping

import numpy as np

DIGEST_SIZE = 16


def to_numpy(value):
    """`value` as a NumPy array; a PyTorch tensor is detached and moved to the CPU first."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu()
    return np.asarray(value)


def _flatten(structure, path=""):
    """Yields (path, leaf) in a deterministic order: dict keys sorted, lists and tuples in order."""
    if isinstance(structure, Mapping):
        for key in sorted(structure, key=lambda k: (type(k).__name__, str(k))):
            yield from _flatten(structure[key], f"{path}[{key!r}]")
    elif isinstance(structure, (list, tuple)):
        for i, item in enumerate(structure):
            yield from _flatten(item, f"{path}[{i}]")
    else:
        yield path, structure


def _canonical(array):
    """Little-endian, C-contiguous: the same values give the same bytes on every machine."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def _object_bytes(path, row):
    """Bytes of one example of an object array (text as `tf.string` turns into one), element by element."""
    parts = []
    for item in row.ravel():
        if isinstance(item, bytes):
            tag, data = b"b", item
        elif isinstance(item, str):
            tag, data = b"s", item.encode("utf-8")
        else:
            raise TypeError(
                f"Input {path or '(the array)'} is an object array holding a {type(item).__name__}; "
                "only bytes and str elements can be fingerprinted. Convert it to a numeric or string array."
            )
        parts.append(tag + len(data).to_bytes(8, "little") + data)
    return b"".join(parts)


def _by_element(array):
    return array.dtype == object or (array.ndim == 1 and array.dtype.kind in "SU")


def example_fingerprints(inputs):
    """One BLAKE2b-128 digest per example of a batch of inputs.

    `inputs` is an array or a nested structure of arrays (dicts, lists, tuples; NumPy arrays or
    anything `np.asarray` accepts, such as TensorFlow, JAX or CPU PyTorch tensors) whose first
    dimension is the batch. The leaves are visited in a deterministic order (dict keys sorted),
    and for example `i` the digest covers, for each leaf: its position in the structure, its dtype,
    the shape of `leaf[i]` and the bytes of `leaf[i]` (little-endian, C order).

    So an example's digest depends on that example only: changing one pixel or token of example
    `i` changes row `i` and no other row, reordering the batch permutes the rows, and the same
    values in another dtype give another digest.

    Returns a `(batch, 16)` uint8 array.

    >>> import numpy as np
    >>> x = np.arange(6, dtype="int32").reshape(3, 2)
    >>> example_fingerprints({"tokens": x}).shape
    (3, 16)
    """
    leaves = [(path, _canonical(to_numpy(leaf))) for path, leaf in _flatten(inputs)]
    if not leaves:
        raise ValueError("example_fingerprints got an empty structure: there are no input arrays to hash.")
    for path, array in leaves:
        if array.ndim == 0:
            raise ValueError(f"Input {path or '(the array)'} is a scalar; every input needs a leading batch dimension.")
    sizes = {path or "(the array)": array.shape[0] for path, array in leaves}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{path}: {size}" for path, size in sizes.items())
        raise ValueError(
            f"The inputs disagree on the batch size ({listed}). Every input array needs the same first dimension."
        )
    batch = leaves[0][1].shape[0]
    if batch == 0:
        return np.empty((0, DIGEST_SIZE), dtype=np.uint8)
    # Position in the structure, dtype and per-example shape: the same for every example of the batch.
    headers = [f"{path}|{array.dtype}|{tuple(array.shape[1:])}\n".encode() for path, array in leaves]
    # Row i of each leaf as one contiguous buffer (the bytes of `leaf[i]`, hashed without a copy); but an
    # object array, and one string per example (a NumPy string scalar's bytes drop the padding).
    rows = [array if _by_element(array) else array.reshape(batch, -1) for _, array in leaves]
    digests = []
    if len(leaves) == 1 and not _by_element(rows[0]):
        # One array (the common case): the header's hash state is computed once and copied per example.
        start, data = hashlib.blake2b(headers[0], digest_size=DIGEST_SIZE), rows[0]
        for i in range(batch):
            digest = start.copy()
            digest.update(data[i])
            digests.append(digest.digest())
    else:
        for i in range(batch):
            digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
            for header, (path, _), data in zip(headers, leaves, rows):
                digest.update(header)
                if data.dtype == object:
                    digest.update(_object_bytes(path, np.asarray(data[i], dtype=object)))
                else:
                    digest.update(data[i].tobytes() if data.ndim == 1 else data[i])
            digests.append(digest.digest())
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(batch, DIGEST_SIZE).copy()


def teacher_fingerprint(model):
    """A hex digest (BLAKE2b-128) of a Keras model: class name, config and every weight.

    Retraining the teacher, loading another checkpoint or changing its architecture or dtype
    policy changes the fingerprint. The config includes the model's and layers' names, so two
    otherwise identical models built under different automatic names (`dense` and `dense_1`)
    also differ; a model loaded from a saved file keeps its names and its fingerprint.

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)], name="teacher")
    >>> len(teacher_fingerprint(model))
    32
    """
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    digest.update(f"class|{type(model).__module__}.{type(model).__qualname__}\n".encode())
    try:
        config = model.get_config()
    except NotImplementedError:  # a subclassed model without get_config: class and weights still count
        config = None
    digest.update(b"config|" + json.dumps(config, sort_keys=True, default=str).encode() + b"\n")
    for i, weight in enumerate(model.get_weights()):
        weight = _canonical(np.asarray(weight))
        digest.update(f"weight|{i}|{weight.dtype}|{weight.shape}\n".encode())
        digest.update(weight.tobytes())
    return digest.hexdigest()
