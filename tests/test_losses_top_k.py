import math

import numpy as np
import pytest
from backend_grad import gradient, numeric_gradient
from keras import ops

from keras_kd.losses import soft_target_loss, top_k_logits, top_k_soft_target_loss


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def logsumexp(z, axis=-1):
    m = z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def reference_top_k(t, k):
    """float64: the k largest logits (largest first), their indices, and the log-sum-exp of the others."""
    t = np.asarray(t, np.float64)
    indices = np.argsort(-t, axis=-1, kind="stable")[..., :k]
    values = np.take_along_axis(t, indices, axis=-1)
    rest = t.copy()
    np.put_along_axis(rest, indices, -np.inf, axis=-1)
    return values, indices, logsumexp(rest)


def reference_loss(t, s, k, temperature, weight=None):
    """float64 NumPy bucketed KL: teacher's top k and a tail rebuilt at T as uniform; exact student tail."""
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    values, indices, tail = reference_top_k(t, k)
    log_n = math.log(t.shape[-1] - k)
    teacher = np.concatenate([values / temperature, ((tail - log_n) / temperature + log_n)[..., None]], -1)
    scaled = s / temperature
    student_top = np.take_along_axis(scaled, indices, axis=-1)
    rest = scaled.copy()
    np.put_along_axis(rest, indices, -np.inf, axis=-1)
    student = np.concatenate([student_top, logsumexp(rest)[..., None]], -1)
    log_p, log_q = log_softmax(teacher), log_softmax(student)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1) * temperature**2
    if weight is not None:
        kl = kl * np.asarray(weight, np.float64).reshape(weight.shape + (1,) * (kl.ndim - weight.ndim))
    return kl.mean()


def test_top_k_logits_matches_numpy():
    t = np.random.default_rng(0).normal(size=(2, 3, 20)).astype("float32") * 3
    values, indices, tail = top_k_logits(t, 5)
    ref_values, ref_indices, ref_tail = reference_top_k(t, 5)
    np.testing.assert_array_equal(ops.convert_to_numpy(indices), ref_indices)
    np.testing.assert_allclose(ops.convert_to_numpy(values), ref_values, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(tail), ref_tail, rtol=1e-5, atol=1e-5)
    assert ops.convert_to_numpy(indices).dtype == np.int32


def test_tail_is_exact_when_it_holds_almost_no_mass():
    t = np.array([[30.0, 29.0, -200.0, -200.0]], "float32")
    _, _, tail = top_k_logits(t, 2)
    tail = ops.convert_to_numpy(tail)
    np.testing.assert_allclose(tail, [-200.0 + np.log(2.0)], rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.5, 6.0])
def test_loss_matches_numpy_reference(temperature):
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(2, 4, 6, 30)) * 2
    mask = (rng.random((4, 6)) > 0.3).astype("float32")
    value = float(top_k_soft_target_loss(top_k_logits(t.astype("float32"), 7), s, temperature, sample_weight=mask))
    assert value == pytest.approx(reference_loss(t, s, 7, temperature, mask), rel=1e-5, abs=1e-6)


def test_gradient_matches_numpy_reference_and_reaches_tail_classes():
    rng = np.random.default_rng(2)
    t, s = rng.normal(size=(2, 3, 12)) * 2
    teacher_top_k = top_k_logits(t.astype("float32"), 4)
    grad = gradient(lambda v: top_k_soft_target_loss(teacher_top_k, v, temperature=2.0), s)
    expected = numeric_gradient(lambda v: reference_loss(t, v, 4, 2.0), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-6)
    _, indices, _ = reference_top_k(t, 4)
    tail = np.ones_like(s, bool)
    np.put_along_axis(tail, indices, False, axis=-1)
    assert np.abs(grad[tail]).min() > 0  # every class outside the teacher's top k gets a gradient


def test_equals_dense_loss_when_the_tails_agree():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(5, 40)) * 3
    s = rng.normal(size=(5, 40)) * 3
    _, indices, _ = reference_top_k(t, 6)
    tail = np.ones_like(t, bool)
    np.put_along_axis(tail, indices, False, axis=-1)
    # At T = 1 any tail works once the student's tail is the teacher's shifted by a constant.
    s_matched = np.where(tail, t + 1.7, s)
    sparse = float(top_k_soft_target_loss(top_k_logits(t.astype("float32"), 6), s_matched, 1.0))
    assert sparse == pytest.approx(float(soft_target_loss(t, s_matched, 1.0)), rel=1e-4)
    # At another T the teacher's tail is rebuilt as uniform: exact when it is.
    t_uniform = np.where(tail, -2.0, np.abs(t) + 3.0)
    s_uniform = np.where(tail, 0.5, s)
    sparse = float(top_k_soft_target_loss(top_k_logits(t_uniform.astype("float32"), 6), s_uniform, 4.0))
    assert sparse == pytest.approx(float(soft_target_loss(t_uniform, s_uniform, 4.0)), rel=1e-4)


def test_lower_bound_at_t1_and_close_on_peaked_lm_logits():
    rng = np.random.default_rng(4)
    vocabulary = 2000
    # LM-like teacher: a few likely tokens over a long Zipf-shaped tail; a student near it.
    ranks = np.argsort(rng.random((16, vocabulary)), axis=-1) + 1
    t = -1.5 * np.log(ranks) + rng.normal(size=(16, vocabulary)) * 0.3
    s = t + rng.normal(size=t.shape) * 0.5
    dense = float(soft_target_loss(t, s, 1.0))
    sparse = float(top_k_soft_target_loss(top_k_logits(t.astype("float32"), 64), s, 1.0))
    assert sparse <= dense * (1 + 1e-5)
    assert sparse == pytest.approx(dense, rel=0.15)
    dense_t2 = float(soft_target_loss(t, s, 2.0))
    sparse_t2 = float(top_k_soft_target_loss(top_k_logits(t.astype("float32"), 64), s, 2.0))
    # A hotter T moves mass into the tail, whose inner differences the buckets drop (0.52 here).
    assert 0.4 * dense_t2 < sparse_t2 < dense_t2


def test_top_k_must_be_smaller_than_the_vocabulary():
    t = np.zeros((2, 5), "float32")
    with pytest.raises(ValueError, match="top_k=5 is not smaller than the vocabulary of 5"):
        top_k_logits(t, 5)
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        top_k_logits(t, 0)
    teacher_top_k = top_k_logits(np.zeros((2, 9), "float32"), 6)
    with pytest.raises(ValueError, match="top_k=6 is not smaller than the vocabulary of 5"):
        top_k_soft_target_loss(teacher_top_k, t)
