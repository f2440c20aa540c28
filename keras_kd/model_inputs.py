"""One batch, two inputs: when teacher and student read the same example differently.

A KerasHub BERT teacher and a student with another vocabulary tokenize the same text into
different token ids; an image teacher may read 224 x 224 pixels where its student reads
112 x 112. Such a batch carries both inputs in a dict with exactly the keys
`"teacher_inputs"` and `"student_inputs"`; every other batch feeds both models the same `x`.
"""

TEACHER_KEY = "teacher_inputs"
STUDENT_KEY = "student_inputs"


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


def teacher_view(x):
    """What the teacher reads of batch input `x`."""
    return x[TEACHER_KEY] if is_paired(x) else x


def student_view(x):
    """What the student reads of batch input `x`."""
    return x[STUDENT_KEY] if is_paired(x) else x
