"""Pseudo-labelling: a teacher labels unlabelled inputs once, for a student to train on.

A student with few labelled examples and many unlabelled ones can learn from the teacher's
labels of the unlabelled ones (self-training; Lee 2013 for hard pseudo-labels, Xie et al. 2020,
"Noisy Student", for soft ones and confidence filtering). `pseudo_label` runs the teacher over
the inputs once and returns them with its labels: probabilities (`soft=True`) or class ids
(`soft=False`), optionally only the examples whose top probability reaches `threshold`.
"""

import numbers

import keras
import numpy as np

from keras_kd import validation as checks
from keras_kd.data.arrays import batch_size_of, dataset_batches, is_in_memory


class PseudoLabels(tuple):
    """`(x, y)`: the kept inputs and the teacher's labels, NumPy arrays; returned by `pseudo_label`.

    Unpack it (`x, y = labels`) or pass it to `fit` (`student.fit(*labels)`, or
    `tf.data.Dataset.from_tensor_slices(tuple(labels))` for a tf.data pipeline).

    Attributes:
        x: the kept inputs, in their input order and structure (an array, or a dict/list of arrays).
        y: float32 probabilities `(kept, classes)` when `soft`, else int64 class ids `(kept,)`.
        indices: int64 positions of the kept examples among all the inputs, in order.
        confidence: float32 top probability of the teacher (at temperature 1) of each kept example.
        kept: the number of kept examples.
        total: the number of inputs.
        threshold: the threshold used, or None.

    Example:

    >>> import numpy as np, keras, keras_kd
    >>> teacher = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> teacher.set_weights([np.array([[4.0, 0.0], [0.0, 4.0]]), np.zeros(2)])  # logits 4 * x
    >>> x = np.array([[1.0, 0.0], [0.1, 0.0], [0.0, 1.0]], "float32")
    >>> labels = keras_kd.recipes.pseudo_label(teacher, x, threshold=0.9, soft=False, verbose=0)
    >>> labels.kept, labels.total, labels.indices.tolist(), labels.y.tolist()
    (2, 3, [0, 2], [0, 1])
    >>> kept_x, kept_y = labels  # a tuple (x, y)
    >>> kept_x.shape
    (2, 2)
    >>> labels.summary()
    "pseudo_label: kept 2 of 3 examples (66.7 %) with the teacher's top probability >= 0.9, as class ids"
    """

    def __new__(cls, x, y, indices, confidence, total, threshold):
        self = super().__new__(cls, (x, y))
        self.indices = indices
        self.confidence = confidence
        self.total = total
        self.threshold = threshold
        return self

    @property
    def x(self):
        """The kept inputs (`self[0]`)."""
        return self[0]

    @property
    def y(self):
        """The teacher's labels of the kept inputs (`self[1]`)."""
        return self[1]

    @property
    def kept(self):
        """The number of kept examples."""
        return len(self.indices)

    def summary(self):
        """One line: how many examples were kept, of how many, and why."""
        share = 100.0 * self.kept / self.total if self.total else 0.0
        kind = "soft labels" if self.y.ndim == 2 else "class ids"
        rule = "" if self.threshold is None else f" with the teacher's top probability >= {self.threshold}"
        return f"pseudo_label: kept {self.kept:,} of {self.total:,} examples ({share:.1f} %){rule}, as {kind}"

    def __repr__(self):
        return f"<PseudoLabels: {self.summary().removeprefix('pseudo_label: ')}>"


def pseudo_label(teacher, unlabeled, threshold=None, soft=True, temperature=1.0, batch_size=None, verbose=1):
    """Labels `unlabeled` inputs with `teacher`'s predictions, running the teacher once per example.

    Args:
        teacher: a built `keras.Model` returning logits of shape `(batch, classes)`.
        unlabeled: the inputs only: NumPy arrays (an array, or a dict/list of arrays; batched by
            `batch_size`), or a batched `tf.data.Dataset`, a `keras.utils.PyDataset` or another
            iterable of batches yielding `x`. Labelled data (a tuple `(x, y)`, or a dataset
            yielding `(x, y)`) is refused: drop the labels first (`dataset.map(lambda x, y: x)`).
        threshold: `None` keeps every example; `q` in `(0, 1]` keeps those whose top teacher
            probability (at temperature 1) is at least `q`.
        soft: `True` labels with the teacher's probabilities `softmax(logits / temperature)`
            (for `keras.losses.CategoricalCrossentropy`, next to one-hot real labels); `False`
            with its class ids, `argmax(logits)` (for `SparseCategoricalCrossentropy`).
        temperature: `T > 0` that softens the soft labels (1: the teacher's own probabilities).
            Only for `soft=True`.
        batch_size: the teacher's batch size for in-memory arrays (default 32); not for datasets.
        verbose: 1 shows a progress bar and a summary line, 0 is silent.

    Returns:
        A `PseudoLabels`, the tuple `(x, y)` of NumPy arrays (for every kind of input and every
        backend: `student.fit(*labels)` works everywhere; the teacher's labels are computed once,
        so they are held in memory whatever the input), with `.kept`, `.total`, `.indices` and
        `.confidence`.

    Raises:
        ValueError, TypeError: labelled input, a threshold outside `(0, 1]`, a `temperature`
            with `soft=False`, a teacher that does not return `(batch, classes)` logits.

    Example:

    >>> import numpy as np, keras, keras_kd
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.random.rand(100, 4).astype("float32")
    >>> soft = keras_kd.recipes.pseudo_label(teacher, x, verbose=0)
    >>> soft.x.shape, soft.y.shape, soft.y.dtype.name, bool(np.allclose(soft.y.sum(-1), 1.0))
    ((100, 4), (100, 3), 'float32', True)
    >>> hard = keras_kd.recipes.pseudo_label(teacher, x, threshold=0.5, soft=False, verbose=0)
    >>> hard.y.dtype.name, hard.kept <= hard.total == 100, bool((hard.confidence >= 0.5).all())
    ('int64', True, True)
    """
    checks.check_model("teacher", teacher)
    checks.check_teacher_built(teacher)
    checks.check_outputs_logits("teacher", teacher)
    threshold = _check_threshold(threshold)
    if not isinstance(soft, bool):
        raise TypeError(f"soft must be True (probabilities) or False (class ids), got {soft!r}.")
    temperature = checks.check_temperature(temperature)
    if not soft and temperature != 1.0:
        raise ValueError(
            f"temperature={temperature} softens soft labels, but soft=False labels with class ids, which the "
            "temperature does not change. Pass soft=True, or leave temperature at 1.0."
        )

    in_memory = is_in_memory(unlabeled)
    total = batch_size_of(unlabeled) if in_memory else None
    progbar = keras.utils.Progbar(total, unit_name="example") if verbose else None
    labels, confidences, kept_x, indices = [], [], [], []
    position = 0
    for x in _input_batches(unlabeled, batch_size, in_memory):
        logits = _teacher_logits(teacher, x)
        n = logits.shape[0]
        confidence = _softmax(logits).max(axis=-1)
        keep = np.ones(n, bool) if threshold is None else confidence >= threshold
        label = _softmax(logits / temperature).astype("float32") if soft else np.argmax(logits, axis=-1)
        labels.append(label[keep])
        confidences.append(confidence[keep].astype("float32"))
        indices.append(position + np.flatnonzero(keep))
        if not in_memory:
            kept_x.append(keras.tree.map_structure(lambda a, keep=keep: a[keep], x))
        position += n
        if progbar is not None:
            progbar.update(position)
    if position == 0:
        raise ValueError("unlabeled is empty: there are no inputs to label.")

    indices = np.concatenate(indices).astype("int64")
    if in_memory:
        x = keras.tree.map_structure(lambda a: np.asarray(a)[indices], unlabeled)
    else:
        x = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *kept_x)
    y = np.concatenate(labels) if soft else np.concatenate(labels).astype("int64")
    result = PseudoLabels(x, y, indices, np.concatenate(confidences), position, threshold)
    if verbose:
        print(result.summary())
    return result


def _check_threshold(threshold):
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be None or a number in (0, 1], got {threshold!r}.")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(
            f"threshold must lie in (0, 1], got {threshold}: it is the top probability the teacher must give an "
            "example for it to be kept (e.g. 0.9). Use threshold=None to keep every example."
        )
    return float(threshold)


def _labels_error(what):
    return ValueError(
        f"unlabeled must hold inputs only, but {what}. pseudo_label makes the labels: drop the given ones first "
        "(arrays: pass x alone; a tf.data.Dataset: dataset.map(lambda x, y: x)). Several inputs go in a list or "
        "a dict, not a tuple."
    )


def _input_batches(unlabeled, batch_size, in_memory):
    """Yields the batches of `x` as NumPy structures, in order."""
    if in_memory:
        if isinstance(unlabeled, tuple):
            raise _labels_error(f"it is a tuple of {len(unlabeled)} arrays, which Keras reads as (x, y, ...)")
        batch_size = 32 if batch_size is None else batch_size
        if not checks.is_integer(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        total = batch_size_of(unlabeled)
        for start in range(0, total, batch_size):
            yield keras.tree.map_structure(lambda a, start=start: np.asarray(a[start : start + batch_size]), unlabeled)
        return
    if batch_size is not None:
        raise ValueError(
            f"batch_size={batch_size!r} is for in-memory arrays; unlabeled is a {type(unlabeled).__name__}, which is "
            "already batched. Batch the dataset itself (dataset.batch(n)), or leave batch_size=None."
        )
    spec = getattr(unlabeled, "element_spec", None)
    if isinstance(spec, tuple) and len(spec) > 1:
        raise _labels_error(f"the dataset yields tuples of {len(spec)} elements, (x, y, ...)")
    batches = dataset_batches(unlabeled, "unlabeled", "NumPy arrays (an array, or a dict/list of arrays)")
    for batch in batches:
        if isinstance(batch, tuple):
            if len(batch) != 1:
                raise _labels_error(f"its batches are tuples of {len(batch)} elements, (x, y, ...)")
            batch = batch[0]
        yield keras.tree.map_structure(np.asarray, batch)


def _teacher_logits(teacher, x):
    logits = teacher.predict_on_batch(x)
    if isinstance(logits, (dict, list, tuple)) or len(np.shape(logits)) != 2:
        shape = np.shape(logits) if not isinstance(logits, (dict, list, tuple)) else type(logits).__name__
        raise ValueError(
            f"pseudo_label gives one label per example, so the teacher must return logits of shape (batch, classes); "
            f"{teacher.name!r} returned {shape}. Use a classifier head, or a model that returns only the logits."
        )
    # NaN logits would become silent labels (argmax of NaN is 0) or NaN probabilities: refuse them.
    checks.check_finite_teacher_outputs(f"The teacher {teacher.name!r}", logits, x, "a batch of pseudo_label's inputs")
    return np.asarray(logits, dtype=np.float64)


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
