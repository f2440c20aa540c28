"""One batch, two inputs: when teacher and student read the same example differently.

A KerasHub BERT teacher and a student with another vocabulary tokenize the same text into
different token ids; an image teacher may read 224 x 224 pixels where its student reads
112 x 112. Such a batch carries both inputs in a dict with exactly the keys
`"teacher_inputs"` and `"student_inputs"`; every other batch feeds both models the same `x`.

A batch of a `keras_kd.TeacherCache` (`cache.dataset(...)`) carries the teacher's stored outputs
instead of its inputs: a dict with the keys `"student_inputs"`, `"teacher_logits"` (or, for a
top-k cache, `"teacher_top_k"`: values, indices and tail log-mass) and, when the cache holds pair
features, `"teacher_features"` (per pair, one array per teacher layer).
"""

TEACHER_KEY = "teacher_inputs"
STUDENT_KEY = "student_inputs"
LOGITS_KEY = "teacher_logits"
TEACHER_FEATURES_KEY = "teacher_features"
TOP_K_KEY = "teacher_top_k"
CACHED_KEYS = frozenset({STUDENT_KEY, LOGITS_KEY, TOP_K_KEY, TEACHER_FEATURES_KEY})


def paired_inputs(teacher_inputs, student_inputs):
    """The `x` of a batch whose teacher and student inputs differ.

    Labels and sample weights stay outside: `fit(paired_inputs(xt, xs), y)`, or a
    `tf.data.Dataset` yielding `(paired_inputs(xt, xs), y)`. The distiller's `call`,
    `predict` and metrics read `student_inputs`.

    >>> import numpy as np
    >>> x = paired_inputs(np.zeros((2, 8)), np.zeros((2, 4)))
    >>> sorted(x)
    ['student_inputs', 'teacher_inputs']
    """
    return {TEACHER_KEY: teacher_inputs, STUDENT_KEY: student_inputs}


def is_paired(x):
    return isinstance(x, dict) and set(x) == {TEACHER_KEY, STUDENT_KEY}


def is_cached(x):
    """Whether batch input `x` comes from a teacher cache (stored teacher outputs, no teacher inputs)."""
    return isinstance(x, dict) and STUDENT_KEY in x and (LOGITS_KEY in x) != (TOP_K_KEY in x) and set(x) <= CACHED_KEYS


def cached_teacher_outputs(x):
    """`(teacher_logits, teacher_features)` stored in a cached batch input `x`.

    From a top-k cache, `teacher_logits` is the tuple `(values, indices, tail_logsumexp)`.
    """
    logits = x[LOGITS_KEY] if LOGITS_KEY in x else tuple(x[TOP_K_KEY])
    return logits, x.get(TEACHER_FEATURES_KEY, [])


def _padding_mask(inputs):
    return inputs.get("padding_mask") if isinstance(inputs, dict) else None


def student_padding_mask(x):
    """The KerasHub `padding_mask` (batch, positions) of what the student reads, or None."""
    return _padding_mask(student_view(x))


def teacher_padding_mask(x):
    """The KerasHub `padding_mask` of what the teacher reads (a cached batch: the student's), or None."""
    return _padding_mask(student_view(x) if is_cached(x) else teacher_view(x))


def teacher_view(x):
    """What the teacher reads of batch input `x`."""
    return x[TEACHER_KEY] if is_paired(x) else x


def student_view(x):
    """What the student reads of batch input `x`."""
    return x[STUDENT_KEY] if is_paired(x) or is_cached(x) else x
