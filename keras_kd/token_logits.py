"""Logits that are not built yet: what a model gives when its token-level terms are chunked.

With `Distiller(chunk_size=...)` on language models, each forward pass stops at the final hidden
states. `TokenLogits(parts, head)` stands for the `(batch, positions, vocabulary)` logits
`head(parts)`; the objective slices `parts` along the positions axis and runs `head` on one slice at a
time (`keras_kd.chunked_terms`), so the full logits never exist at once.

`parts` is one tensor (a model's hidden states) or a tuple of them (several teachers' hidden states,
a top-k cache's `(values, indices, tail)`), each `(batch, positions, ...)`.
"""

from keras import ops

# "auto": dense while one step's float32 logits stay under this size, else chunks of about this size.
AUTO_DENSE_BYTES = 64 * 2**20
AUTO_CHUNK_BYTES = 64 * 2**20
CHUNK_SIZE_ADVICE = (
    "Pass None (the full logits), a number of positions >= 1 (e.g. chunk_size=128), or 'auto' (dense while "
    "the logits are small, else chunks of about 64 MiB of float32 logits, 96 MiB on PyTorch)."
)


class TokenLogits:
    """The logits `head(parts)` of `(batch, positions, ...)` `parts`, computed a slice of positions at a time."""

    def __init__(self, parts, head, chunk=None, training=False):
        self.parts = parts
        self.head = head
        self.chunk_positions = chunk  # positions per chunk (the student's, which the objective follows)
        self.training = training  # the student's: whether the step differentiates its logits

    @property
    def _leaves(self):
        return list(self.parts) if isinstance(self.parts, tuple) else [self.parts]

    @property
    def positions(self):
        return self._leaves[0].shape[1]

    @property
    def batch(self):
        return self._leaves[0].shape[0]

    def chunk(self, start, size):
        """`parts` at the `size` positions from `start` (an int, or a loop's traced index)."""
        sliced = [positions_slice(leaf, start, size) for leaf in self._leaves]
        return tuple(sliced) if isinstance(self.parts, tuple) else sliced[0]

    def logits(self, parts):
        return self.head(parts)

    def dense(self):
        """All the logits at once (the dense path)."""
        return self.head(self.parts)

    def map_parts(self, function):
        leaves = [function(leaf) for leaf in self._leaves]
        parts = tuple(leaves) if isinstance(self.parts, tuple) else leaves[0]
        return TokenLogits(parts, self.head, self.chunk_positions, self.training)


def identity(parts):
    return parts


def as_token_logits(logits):
    """`logits` as `TokenLogits`: stored logits (a cache's, dense or top-k) are their own parts."""
    return logits if isinstance(logits, TokenLogits) else TokenLogits(logits, identity)


def map_tensors(function, structure):
    """`function` applied to every tensor of a step's outputs (`TokenLogits` parts included)."""
    if structure is None:
        return None
    if isinstance(structure, TokenLogits):
        return structure.map_parts(function)
    if isinstance(structure, (list, tuple)):
        return type(structure)(map_tensors(function, item) for item in structure)
    if isinstance(structure, dict):  # a model's named outputs (a KerasHub backbone's)
        return {key: map_tensors(function, value) for key, value in structure.items()}
    return function(structure)


def check_chunk_size(chunk_size):
    """`chunk_size` as given when valid (None, an int >= 1 or "auto"); else an error saying what to pass."""
    if chunk_size is None or (isinstance(chunk_size, str) and chunk_size == "auto"):
        return chunk_size
    if isinstance(chunk_size, str):
        raise ValueError(f"chunk_size={chunk_size!r} is not known. {CHUNK_SIZE_ADVICE}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be None, an int or 'auto', got {chunk_size!r}. {CHUNK_SIZE_ADVICE}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (positions per chunk), got {chunk_size}. {CHUNK_SIZE_ADVICE}")
    return chunk_size


def positions_per_chunk(chunk_size, batch, positions, vocabulary_size, chunk_bytes=AUTO_CHUNK_BYTES):
    """How many positions one chunk takes; `positions` (or more) means the dense path.

    `"auto"` keeps the logits dense while `batch * positions * vocabulary` float32 values stay under
    `AUTO_DENSE_BYTES`, and otherwise takes chunks of about `chunk_bytes` of logits. An unknown
    batch size counts as 1.
    """
    if chunk_size != "auto":
        return chunk_size
    per_position = 4 * (batch or 1) * vocabulary_size
    if per_position * positions <= AUTO_DENSE_BYTES:
        return positions
    return max(1, chunk_bytes // per_position)


class Predictions:
    """The arg-max of logits that were computed chunk by chunk, and the shape the logits had.

    What a first-batch check needs of a chunked model's logits (its accuracy on the labels), without
    keeping them: `predicted` is a `(batch, positions)` NumPy array, `shape` the logits' shape.
    """

    def __init__(self, predicted, shape):
        self.predicted = predicted
        self.shape = tuple(shape)


def positions_slice(tensor, start, size):
    """`tensor[:, start:start + size]`; with a traced `start` (inside a loop), a dynamic slice of static size."""
    if isinstance(start, int):
        return tensor[:, start : start + size]
    begin = [0, start] + [0] * (len(tensor.shape) - 2)
    dims = [ops.shape(tensor)[i] if d is None else d for i, d in enumerate(tensor.shape)]  # TF: batch unknown
    return ops.slice(tensor, begin, [dims[0], size, *dims[2:]])
