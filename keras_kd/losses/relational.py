"""Relational knowledge distillation (Park et al., 2019): match the distances and angles between
the examples of a batch rather than the embeddings themselves."""

import collections

import keras
from keras import ops

from keras_kd.losses._common import flatten_examples, weighted_mean
from keras_kd.losses.features import unit_vectors

# Squared distances at or below this count as zero (the diagonal, duplicate examples).
DISTANCE_EPSILON = 1e-12


def batch_of_one_message(shape):
    """The error of a batch of one example, whose embeddings have `shape` (`keras_kd.Relational` reuses it)."""
    return (
        "relational KD compares examples of a batch; batch size 1 has no pairs; use batch size "
        f">= 2 (>= 3 for angles). Got embeddings of shape {tuple(shape)}. If only the last "
        "batch of an epoch is that small, drop it (tf.data: `batch(..., drop_remainder=True)`) or "
        "pick a batch size that leaves a larger remainder."
    )


def _check_batch(teacher, student):
    t_batch, s_batch = teacher.shape[0], student.shape[0]
    if t_batch is not None and s_batch is not None and t_batch != s_batch:
        raise ValueError(
            f"teacher and student embeddings must hold the same examples, got batch sizes {t_batch} "
            f"(teacher {tuple(teacher.shape)}) and {s_batch} (student {tuple(student.shape)})."
        )
    if t_batch == 1 or s_batch == 1:
        raise ValueError(batch_of_one_message(teacher.shape))


def _off_diagonal(x):
    """`(batch, batch)` float32 mask: 1 where i != j. Built without the static batch size."""
    index = ops.cumsum(ops.ones_like(x[:, 0]), axis=0)
    return ops.cast(ops.not_equal(index[:, None], index[None, :]), "float32")


def _example_weights(sample_weight):
    """`(batch,)` float32 weights; `(batch, ...)` per-position weights reduce to their max per example."""
    if sample_weight is None:
        return None
    weight = ops.cast(sample_weight, "float32")
    if len(weight.shape) == 0:
        raise ValueError("sample_weight must have one weight per example, (batch,), got a scalar.")
    if len(weight.shape) > 1:
        weight = ops.max(flatten_examples(weight), axis=1)
    return weight


def _huber(x):
    """Smooth L1 with delta 1: `0.5 x**2` for `|x| < 1`, `|x| - 0.5` beyond."""
    magnitude = ops.abs(x)
    return ops.where(magnitude < 1.0, 0.5 * ops.square(x), magnitude - 0.5)


def _pairwise_distances(x, off_diagonal):
    """Euclidean distances `(batch, batch)`, exactly 0 on the diagonal and for coinciding examples.

    From the differences `x_i - x_j` themselves: exactly 0 for coinciding examples and precise
    for close ones, at O(batch**2 * width) memory (as `rkd_angle_loss`). The Gram-matrix form
    `|x_i|**2 + |x_j|**2 - 2 x_i.x_j` leaves rounding noise of about `eps * |x|**2` in place of
    a zero distance, which the normalisation by the mean distance can blow up to O(1) (e.g. when
    the only weighted examples coincide).
    """
    squared = ops.sum(ops.square(x[:, None, :] - x[None, :, :]), axis=-1)
    positive = ops.logical_and(squared > DISTANCE_EPSILON**2, off_diagonal > 0)
    safe = ops.where(positive, squared, ops.ones_like(squared))
    return ops.where(positive, ops.sqrt(safe), ops.zeros_like(squared))


def _normalised_distances(x, pair_weight, off_diagonal):
    distances = _pairwise_distances(x, off_diagonal)
    mean = weighted_mean(distances, pair_weight, "mean_with_sample_weight")
    safe_mean = ops.where(mean > 0, mean, ops.ones_like(mean))
    return distances / safe_mean


def rkd_distance_loss(teacher_embeddings, student_embeddings, sample_weight=None):
    """RKD's distance-wise loss: Huber between the normalised pairwise distances of student and teacher.

    Formula, with `d_ij = ||x_i - x_j||_2` on embeddings flattened to `(batch, features)`
    and weights `w_ij = w_i * w_j` (all 1 without `sample_weight`):

        mu = sum_{i != j} w_ij d_ij / sum_{i != j} w_ij
        L  = sum_{i, j} w_ij huber(d^s_ij / mu_s - d^t_ij / mu_t) / sum_{i, j} w_ij

    with `huber(x) = 0.5 x**2` for `|x| < 1`, else `|x| - 0.5` (smooth L1, delta 1).
    The mean distance `mu` runs over the pairs `i != j`; the Huber mean runs over all
    `batch**2` entries, the diagonal's zeros included, as in the authors' code
    (`F.smooth_l1_loss` over the whole distance matrix, in lenscloth/RKD and
    RepDistiller), so that their `distance_weight=25` carries over. (Without weights
    that is `(batch - 1) / batch` of the mean over the pairs `i != j` alone, which
    keras-kd up to 0.1.0 used.) Teacher and student widths may differ. The same
    weights enter the normalising mean, so an example of weight 0 is excluded entirely;
    `L = 0` when the weights sum to 0. Per-position weights `(batch, seq)` reduce to
    their maximum per example (an example counts if any of its positions does).

    Distances of squared size <= 1e-24 (the diagonal, duplicate examples) are set to
    exactly 0 with a zero gradient, so the square root's infinite slope at 0 never
    reaches the gradient (JAX would give NaN). Cost: `O(batch**2 * width)` time and memory.

    Args:
        teacher_embeddings: `(batch, ...)` teacher embeddings (rank > 2 flattened per example).
        student_embeddings: `(batch, ...)` student embeddings, any width.
        sample_weight: optional `(batch,)` per-example weights.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: for a statically known batch size of 1 (no pairs).

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import rkd_distance_loss
    >>> t = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(float(rkd_distance_loss(t, 3.0 * t + 1.0)), 6)  # scale and shift do not matter
    0.0
    >>> s = np.array([[0.0], [1.0], [2.0]])  # a line: distances 1, 2, 1
    >>> round(float(rkd_distance_loss(t, s)), 4)  # the mean over all 3 * 3 entries
    0.0717
    """
    teacher = flatten_examples(ops.cast(teacher_embeddings, "float32"))
    student = flatten_examples(ops.cast(student_embeddings, "float32"))
    _check_batch(teacher, student)
    off_diagonal = _off_diagonal(teacher)
    entry_weight = None  # the weights of all batch**2 entries; the diagonal's Huber values are exactly 0
    pair_weight = off_diagonal
    weight = _example_weights(sample_weight)
    if weight is not None:
        entry_weight = weight[:, None] * weight[None, :]
        pair_weight = pair_weight * entry_weight
    d_teacher = _normalised_distances(teacher, pair_weight, off_diagonal)
    d_student = _normalised_distances(student, pair_weight, off_diagonal)
    return weighted_mean(_huber(d_student - d_teacher), entry_weight, "mean_with_sample_weight")


def _angle_cosines(x):
    """`c[j, i, k] = <e_ij, e_kj>` with `e_ij = (x_i - x_j) / ||x_i - x_j||` (0 when x_i == x_j)."""
    directions = unit_vectors(x[None, :, :] - x[:, None, :])  # [j, i] = unit(x_i - x_j)
    return ops.matmul(directions, ops.transpose(directions, (0, 2, 1)))


def rkd_angle_loss(teacher_embeddings, student_embeddings, sample_weight=None):
    """RKD's angle-wise loss: Huber between the cosines of the angles the examples form.

    Formula, on embeddings flattened to `(batch, features)`, with unit vectors
    `e_ij = (x_i - x_j) / ||x_i - x_j||` and the cosine of the angle at `x_j`

        c_ijk = <e_ij, e_kj>

    over all `batch**3` triplets `(i, j, k)` with weights `w_ijk = w_i * w_j * w_k`
    (all 1 without `sample_weight`):

        L = sum_{i, j, k} w_ijk huber(c^s_ijk - c^t_ijk) / sum_{i, j, k} w_ijk

    with `huber(x) = 0.5 x**2` for `|x| < 1`, else `|x| - 0.5` (smooth L1, delta 1);
    `L = 0` when the weights sum to 0. This is the authors' normalisation
    (`F.smooth_l1_loss` over the whole `batch**3` cosine tensor, in lenscloth/RKD and
    RepDistiller), so that their `angle_weight=50` carries over. The degenerate
    triplets (`i == j` or `k == j`) have a zero difference vector, whose unit vector
    is exactly 0, so their cosine is 0 on both sides: they add 0 to the sum and 1 to
    the count, as do the triplets `i == k` (cosine 1 on both sides, up to rounding).
    (Without weights the mean is `(batch - 1)**2 / batch**2` of the mean over the
    triplets `i != j, k != j` alone, which keras-kd up to 0.1.0 used.) The
    unit vectors of duplicate examples (`x_i == x_j`, `i != j`) are 0 too, with a
    zero gradient through the normalisation (see `unit_vectors`), so the gradient is
    finite on every backend. Per-position weights `(batch, seq)` reduce to their
    maximum per example. With batch size 2 every non-degenerate triplet has
    `i == k`: the loss is 0 up to rounding.

    Cost: `O(batch**3 * width)` time and `O(batch**2 * width + batch**3)` memory; at
    batch 128 this can cost more than a small student's whole step.

    Args:
        teacher_embeddings: `(batch, ...)` teacher embeddings (rank > 2 flattened per example).
        student_embeddings: `(batch, ...)` student embeddings, any width.
        sample_weight: optional `(batch,)` per-example weights.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: for a statically known batch size of 1.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import rkd_angle_loss
    >>> t = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # a right angle at x_0
    >>> round(float(rkd_angle_loss(t, 3.0 * t - 1.0)), 6)  # the angles survive scale and shift
    0.0
    >>> s = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> round(float(rkd_angle_loss(t, s)), 4)  # the mean over all 3 * 3 * 3 triplets
    0.0038
    """
    teacher = flatten_examples(ops.cast(teacher_embeddings, "float32"))
    student = flatten_examples(ops.cast(student_embeddings, "float32"))
    _check_batch(teacher, student)
    triplet_weight = None  # all batch**3 triplets; the degenerate ones have cosine 0 on both sides
    weight = _example_weights(sample_weight)
    if weight is not None:
        triplet_weight = weight[:, None, None] * weight[None, :, None] * weight[None, None, :]  # [j, i, k]
    difference = _angle_cosines(student) - _angle_cosines(teacher)
    return weighted_mean(_huber(difference), triplet_weight, "mean_with_sample_weight")


# Teacher embeddings and sample weights, passed through `Loss.__call__` together.
_WithWeights = collections.namedtuple("_WithWeights", ["embeddings", "sample_weight"])


class _RelationalLoss(keras.losses.Loss):
    """A relational loss weights pairs/triplets of examples, not values: `sample_weight` goes to the function."""

    loss_fn = None

    def __init__(self, name, **kwargs):
        reduction = kwargs.pop("reduction", "sum_over_batch_size")  # fixed: a weighted mean over pairs/triplets
        if reduction != "sum_over_batch_size":
            raise ValueError(
                f"{type(self).__name__}(reduction={reduction!r}): a relational loss is one weighted mean over the "
                "batch's pairs (or triplets) of examples, so its reduction is fixed and would not be applied. Drop "
                "reduction=; weight examples with sample_weight."
            )
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # The weights ride along with y_true (thread-safe, unlike stashing them on self), and the
        # scalar goes through Keras's reduction as a (1,) value so that Keras scales it for
        # tf.distribute as it does every other loss.
        if sample_weight is None:
            return super().__call__(y_true, y_pred)
        return super().__call__(_WithWeights(y_true, sample_weight), y_pred)

    def call(self, y_true, y_pred):
        """The batch's relational loss as a `(1,)` tensor; `y_true` holds the teacher's embeddings."""
        weight = None
        if isinstance(y_true, _WithWeights):
            y_true, weight = y_true
        return ops.reshape(type(self).loss_fn(y_true, y_pred, weight), (1,))

    def get_config(self):
        """The `keras.losses.Loss` config without `reduction`, which is fixed."""
        config = super().get_config()
        config.pop("reduction", None)
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class RKDDistanceLoss(_RelationalLoss):
    """`keras.losses.Loss` form of `rkd_distance_loss`: `y_true` holds the teacher's embeddings.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import RKDDistanceLoss
    >>> x = np.random.default_rng(0).normal(size=(4, 8))
    >>> float(RKDDistanceLoss()(x, 2.0 * x))
    0.0
    """

    loss_fn = staticmethod(rkd_distance_loss)

    def __init__(self, name="rkd_distance_loss", **kwargs):
        super().__init__(name=name, **kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class RKDAngleLoss(_RelationalLoss):
    """`keras.losses.Loss` form of `rkd_angle_loss`: `y_true` holds the teacher's embeddings.

    Example:

    >>> import numpy as np
    >>> from keras_kd.losses import RKDAngleLoss
    >>> x = np.random.default_rng(0).normal(size=(4, 8))
    >>> float(RKDAngleLoss()(x, 2.0 * x))
    0.0
    """

    loss_fn = staticmethod(rkd_angle_loss)

    def __init__(self, name="rkd_angle_loss", **kwargs):
        super().__init__(name=name, **kwargs)
