import itertools

import keras
import numpy as np
import pytest
from backend_grad import gradient, numeric_gradient
from keras import ops

from keras_kd.losses import RKDAngleLoss, RKDDistanceLoss, rkd_angle_loss, rkd_distance_loss


def flatten(x):
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def huber(x):
    return 0.5 * x**2 if abs(x) < 1 else abs(x) - 0.5


def example_weights(weight, batch):
    if weight is None:
        return np.ones(batch)
    weight = np.asarray(weight, np.float64)
    return weight.reshape(batch, -1).max(axis=1)


def distance_reference(t, s, weight=None):
    """float64 RKD distance loss, entry by entry: the distances normalised by their mean over the pairs
    i != j, then the Huber mean over all B**2 entries of the distance matrix, its zero diagonal included
    (the authors' `F.smooth_l1_loss(d, t_d, reduction='elementwise_mean')`)."""
    t, s = flatten(t), flatten(s)
    w = example_weights(weight, len(t))
    entries = list(itertools.product(range(len(t)), repeat=2))
    pairs = [(i, j) for i, j in entries if i != j]

    def normalised(x):
        d = {(i, j): np.linalg.norm(x[i] - x[j]) for i, j in entries}
        total = sum(w[i] * w[j] for i, j in pairs)
        mu = sum(w[i] * w[j] * d[i, j] for i, j in pairs) / total if total else 0.0
        return {entry: value / (mu if mu > 0 else 1.0) for entry, value in d.items()}

    d_t, d_s = normalised(t), normalised(s)
    num = sum(w[i] * w[j] * huber(d_s[i, j] - d_t[i, j]) for i, j in entries)
    den = sum(w[i] * w[j] for i, j in entries)
    return num / den if den else 0.0


def unit(v):
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else np.zeros_like(v)


def angle_reference(t, s, weight=None):
    """float64 RKD angle loss, triplet by triplet: the Huber mean over all B**3 triplets (i, j, k), the
    degenerate ones (i == j or k == j: a zero difference, cosine 0 on both sides) included, as the
    authors' `F.smooth_l1_loss(s_angle, t_angle, reduction='elementwise_mean')`."""
    t, s = flatten(t), flatten(s)
    w = example_weights(weight, len(t))
    num = den = 0.0
    for i, j, k in itertools.product(range(len(t)), repeat=3):
        c_t = unit(t[i] - t[j]) @ unit(t[k] - t[j])
        c_s = unit(s[i] - s[j]) @ unit(s[k] - s[j])
        num += w[i] * w[j] * w[k] * huber(c_s - c_t)
        den += w[i] * w[j] * w[k]
    return num / den if den else 0.0


CASES = [
    ("distance", rkd_distance_loss, distance_reference),
    ("angle", rkd_angle_loss, angle_reference),
]
LOSSES = pytest.mark.parametrize("name, loss_fn, reference", CASES, ids=[c[0] for c in CASES])


@LOSSES
@pytest.mark.parametrize("t_shape, s_shape", [((5, 4), (5, 7)), ((4, 2, 3), (4, 5)), ((3, 6), (3, 2, 2, 2))])
def test_matches_reference(name, loss_fn, reference, t_shape, s_shape):
    rng = np.random.default_rng(0)
    t = rng.normal(size=t_shape).astype("float32")
    s = (rng.normal(size=s_shape) * 3).astype("float32")
    assert float(loss_fn(t, s)) == pytest.approx(reference(t, s), rel=1e-5)


def test_angle_mean_runs_over_all_batch_cubed_triplets():
    # batch 3: 3**3 = 27 triplets (the authors' count): 6 with i != j != k, 6 with i == k != j (value 0),
    # 15 degenerate ones with i == j or k == j (cosine 0 on both sides, value 0)
    t = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    cosines_t = {(1, 0, 2): 0.0, (0, 1, 2): 1 / np.sqrt(2), (0, 2, 1): 1 / np.sqrt(2)}
    cosines_s = {(1, 0, 2): 1 / np.sqrt(2), (0, 1, 2): 0.0, (0, 2, 1): 1 / np.sqrt(2)}
    expected = 2 * sum(huber(cosines_s[key] - cosines_t[key]) for key in cosines_t) / 27
    assert float(rkd_angle_loss(t, s)) == pytest.approx(expected, rel=1e-5)
    assert angle_reference(t, s) == pytest.approx(expected, rel=1e-12)


def test_distance_mean_runs_over_all_batch_squared_entries():
    # batch 3 on a line: distances 1, 2, 1 against a right isosceles triangle's 1, sqrt(2), 1; the Huber
    # mean divides the 6 off-diagonal values by 3**2 = 9 (the authors' count), not by 6
    t = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s = np.array([[0.0], [1.0], [2.0]])
    d_t = np.array([1.0, 1.0, np.sqrt(2.0)])  # pairs (0, 1), (0, 2), (1, 2)
    d_s = np.array([1.0, 2.0, 1.0])
    values = [huber(a / d_s.mean() - b / d_t.mean()) for a, b in zip(d_s, d_t)]
    expected = 2 * sum(values) / 9
    assert float(rkd_distance_loss(t, s)) == pytest.approx(expected, rel=1e-5)
    assert distance_reference(t, s) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("batch", [3, 8])
def test_distance_is_the_pair_mean_times_b_minus_1_over_b(batch):
    # the mean over all B**2 entries is (B - 1) / B of the mean over the pairs i != j alone (0.875 at
    # batch 8: a mean over the pairs would make the authors' distance_weight=25 14 % stronger)
    rng = np.random.default_rng(12)
    t = rng.normal(size=(batch, 4)).astype("float32")
    s = rng.normal(size=(batch, 3)).astype("float32")
    pairs = batch * (batch - 1)
    d_t, d_s = (np.linalg.norm(x[:, None] - x[None], axis=-1) for x in (flatten(t), flatten(s)))
    off = ~np.eye(batch, dtype=bool)
    d_t, d_s = d_t / d_t[off].mean(), d_s / d_s[off].mean()
    pair_mean = sum(huber(v) for v in (d_s - d_t)[off]) / pairs
    assert float(rkd_distance_loss(t, s)) == pytest.approx(pair_mean * (batch - 1) / batch, rel=1e-5)


@LOSSES
def test_invariant_to_scale_and_shift(name, loss_fn, reference):
    t = np.random.default_rng(1).normal(size=(5, 6)).astype("float32")
    assert float(loss_fn(t, t)) == 0.0
    assert float(loss_fn(t, 2.5 * t - 4.0)) == pytest.approx(0.0, abs=1e-6)
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(6, 6)))[0].astype("float32")
    assert float(loss_fn(t, t @ rotation)) == pytest.approx(0.0, abs=1e-6)


@LOSSES
def test_sample_weights(name, loss_fn, reference):
    rng = np.random.default_rng(3)
    t = rng.normal(size=(5, 4)).astype("float32")
    s = rng.normal(size=(5, 3)).astype("float32")
    weight = np.array([1.0, 0.5, 2.0, 0.0, 1.5], "float32")
    assert float(loss_fn(t, s, sample_weight=weight)) == pytest.approx(reference(t, s, weight), rel=1e-5)
    assert float(loss_fn(t, s, sample_weight=weight[:, None])) == pytest.approx(reference(t, s, weight), rel=1e-5)
    # an example of weight 0 is excluded entirely, also from the normalising mean distance
    keep = np.array([1, 0, 1, 1, 0], "float32")
    assert float(loss_fn(t, s, sample_weight=keep)) == pytest.approx(float(loss_fn(t[keep > 0], s[keep > 0])), rel=1e-5)
    # per-position weights (batch, seq) reduce to their max per example
    per_position = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]], "float32")
    assert float(loss_fn(t, s, sample_weight=per_position)) == pytest.approx(
        float(loss_fn(t[keep > 0], s[keep > 0])), rel=1e-5
    )
    assert reference(t, s, per_position) == pytest.approx(reference(t[keep > 0], s[keep > 0]), rel=1e-12)


@LOSSES
def test_all_zero_weights_give_zero_and_finite_gradient(name, loss_fn, reference):
    rng = np.random.default_rng(4)
    t, s = rng.normal(size=(2, 4, 3)).astype("float32")
    weight = np.zeros(4, "float32")
    assert float(loss_fn(t, s, sample_weight=weight)) == 0.0
    grad = gradient(lambda v: loss_fn(ops.convert_to_tensor(t), v, sample_weight=weight), s)
    assert np.isfinite(grad).all() and not grad.any()


@LOSSES
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_wrt_student(name, loss_fn, reference, weighted):
    rng = np.random.default_rng(5)
    t = rng.normal(size=(4, 5)).astype("float32")
    s = rng.normal(size=(4, 3)).astype("float32")
    weight = np.array([1.0, 2.0, 0.5, 1.0], "float32") if weighted else None
    grad = gradient(lambda v: loss_fn(ops.convert_to_tensor(t), v, sample_weight=weight), s)
    expected = numeric_gradient(lambda v: reference(t, v, weight), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


def test_distance_gradient_in_the_linear_huber_range():
    # a student whose normalised distances differ from the teacher's by more than 1 for some pairs
    t = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0]], "float32")
    s = np.array([[0.0], [4.0], [8.0], [8.5]], "float32")
    grad = gradient(lambda v: rkd_distance_loss(ops.convert_to_tensor(t), v), s)
    expected = numeric_gradient(lambda v: distance_reference(t, v), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


@LOSSES
def test_identical_duplicate_and_zero_embeddings_are_finite(name, loss_fn, reference):
    rng = np.random.default_rng(6)
    t = rng.normal(size=(4, 3)).astype("float32")
    grad = gradient(lambda v: loss_fn(ops.convert_to_tensor(t), v), t)
    assert np.isfinite(grad).all() and np.abs(grad).max() < 1e-5
    duplicates = rng.normal(size=(4, 3)).astype("float32")
    duplicates[2] = duplicates[0]
    value = float(loss_fn(t, duplicates))
    # the distance term's Gram-matrix form leaves a coinciding pair a float32 rounding distance of
    # about sqrt(1e-7) * |x|, not exactly 0: a relative effect of ~1e-4 on the loss
    assert np.isfinite(value) and value == pytest.approx(reference(t, duplicates), rel=1e-3)
    assert np.isfinite(gradient(lambda v: loss_fn(ops.convert_to_tensor(t), v), duplicates)).all()
    zeros = np.zeros((4, 3), "float32")
    assert np.isfinite(float(loss_fn(t, zeros)))
    assert float(loss_fn(zeros, zeros)) == 0.0
    for teacher in (t, zeros):
        assert np.isfinite(gradient(lambda v, teacher=teacher: loss_fn(ops.convert_to_tensor(teacher), v), zeros)).all()


def test_distance_precise_for_embeddings_with_a_large_common_offset():
    rng = np.random.default_rng(7)
    t = (1000.0 + rng.normal(size=(5, 16)) * 0.1).astype("float32")
    s = (-500.0 + rng.normal(size=(5, 8)) * 0.1).astype("float32")
    assert float(rkd_distance_loss(t, s)) == pytest.approx(distance_reference(t, s), rel=1e-4)


def test_angle_batch_of_two_is_zero():
    rng = np.random.default_rng(8)
    t, s = rng.normal(size=(2, 2, 3)).astype("float32")
    # only degenerate and i == k triplets: both cosines are 0 or 1 (up to float32 rounding)
    assert float(rkd_angle_loss(t, s)) == pytest.approx(0.0, abs=1e-12)
    assert angle_reference(t, s) == pytest.approx(0.0, abs=1e-24)


@LOSSES
def test_rejects_batch_size_one_and_mismatched_batches(name, loss_fn, reference):
    with pytest.raises(ValueError, match=r"batch size 1 has no pairs; use batch size >= 2 \(>= 3 for angles\)"):
        loss_fn(np.zeros((1, 4)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"same examples.*batch sizes 3.*4"):
        loss_fn(np.zeros((3, 4)), np.zeros((4, 4)))


@pytest.mark.parametrize("cls, fn", [(RKDDistanceLoss, rkd_distance_loss), (RKDAngleLoss, rkd_angle_loss)])
def test_loss_classes_match_functions_and_serialize(cls, fn):
    rng = np.random.default_rng(9)
    t = rng.normal(size=(5, 4)).astype("float32")
    s = rng.normal(size=(5, 6)).astype("float32")
    weight = np.array([1.0, 0.0, 2.0, 1.0, 0.5], "float32")
    loss = cls()
    assert float(loss(t, s)) == pytest.approx(float(fn(t, s)), rel=1e-6)
    assert float(loss(t, s, sample_weight=weight)) == pytest.approx(float(fn(t, s, sample_weight=weight)), rel=1e-6)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is cls and clone.get_config() == loss.get_config()
    again = cls.from_config(loss.get_config())
    assert float(again(t, s, sample_weight=weight)) == pytest.approx(float(loss(t, s, sample_weight=weight)), rel=1e-6)
    named = cls.from_config({**loss.get_config(), "name": "relational"})
    assert named.name == "relational"


@LOSSES
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_inputs_give_finite_float32(name, loss_fn, reference, dtype):
    rng = np.random.default_rng(10)
    t = ops.cast(rng.normal(size=(4, 6)) * 100, dtype)
    s = ops.cast(rng.normal(size=(4, 3)) * 100, dtype)
    cls = RKDDistanceLoss if name == "distance" else RKDAngleLoss
    for value in (loss_fn(t, s), cls()(t, s)):
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert np.isfinite(float(value))
    t32 = np.asarray(ops.convert_to_numpy(ops.cast(t, "float32")))
    s32 = np.asarray(ops.convert_to_numpy(ops.cast(s, "float32")))
    assert float(loss_fn(t, s)) == pytest.approx(reference(t32, s32), rel=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="dynamic batch sizes are a TF-graph case")
@LOSSES
def test_unknown_batch_size_in_a_tf_graph(name, loss_fn, reference):
    import tensorflow as tf

    rng = np.random.default_rng(11)
    t = rng.normal(size=(4, 2, 3)).astype("float32")
    s = rng.normal(size=(4, 5)).astype("float32")
    weight = np.array([1.0, 0.0, 2.0, 1.0], "float32")

    @tf.function(input_signature=[tf.TensorSpec((None, 2, 3)), tf.TensorSpec((None, 5)), tf.TensorSpec((None,))])
    def loss(a, b, w):
        return loss_fn(a, b, sample_weight=w)

    assert float(loss(t, s, weight)) == pytest.approx(reference(t, s, weight), rel=1e-5)
