"""Binary soft targets: the Bernoulli form of the tempered KL for single-logit (binary) classifiers."""

import numpy as np
import pytest
from backend_grad import gradient
from keras import ops

from keras_kd.losses import (
    binary_soft_target_kl,
    binary_soft_target_loss,
    generalized_jsd,
    reverse_kl,
    soft_target_kl,
    two_class_logits,
)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_values(t, s, temperature):
    """float64 NumPy `T**2 * KL(Bernoulli(p_t) || Bernoulli(p_s))`, `p = sigmoid(z / T)`, per example.

    The last axis (of size 1) is dropped. `log p = -log(1 + exp(-z))` and `log(1 - p) = -log(1 + exp(z))`,
    written with `logaddexp` so that logits far from 0 keep finite logs.
    """
    t = np.asarray(t, np.float64)[..., 0] / temperature
    s = np.asarray(s, np.float64)[..., 0] / temperature
    log_p1, log_p0 = -np.logaddexp(0.0, -t), -np.logaddexp(0.0, t)
    log_q1, log_q0 = -np.logaddexp(0.0, -s), -np.logaddexp(0.0, s)
    return temperature**2 * (np.exp(log_p1) * (log_p1 - log_q1) + np.exp(log_p0) * (log_p0 - log_q0))


def reference(t, s, temperature, weight=None):
    """`reference_values` averaged over all values (`sum_over_batch_size`), weighted by `weight`."""
    values = reference_values(t, s, temperature)
    if weight is not None:
        weight = np.asarray(weight, np.float64)
        values = values * weight.reshape(weight.shape + (1,) * (values.ndim - weight.ndim))
    return values.mean()


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_matches_numpy_reference(temperature):
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(2, 16, 1)) * 3
    # float32 log-probabilities are off by a few rounding units each; the KL's value near 0 cannot hide that,
    # times T**2 (see tests/test_loss_properties.py, softmax_atol).
    atol = 2e-6 * temperature**2
    values = ops.convert_to_numpy(binary_soft_target_kl(t, s, temperature))
    np.testing.assert_allclose(values, reference_values(t, s, temperature), rtol=1e-5, atol=atol)
    value = float(binary_soft_target_loss(t, s, temperature=temperature))
    assert value == pytest.approx(reference(t, s, temperature), rel=1e-5, abs=atol)


def test_sequences_and_sample_weight_match_reference():
    rng = np.random.default_rng(2)
    t, s = rng.normal(size=(2, 4, 7, 1)) * 2
    mask = (rng.random((4, 7)) > 0.3).astype("float32")
    value = float(binary_soft_target_loss(t, s, temperature=2.0, sample_weight=mask))
    assert value == pytest.approx(reference(t, s, 2.0, mask), rel=1e-5, abs=1e-6)
    per_example = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    value = float(binary_soft_target_loss(t, s, 2.0, sample_weight=per_example, reduction="mean_with_sample_weight"))
    expected = (reference_values(t, s, 2.0) * per_example[:, None]).sum() / (per_example.sum() * 7)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_gradient_wrt_student_logit(temperature):
    rng = np.random.default_rng(4)
    t, s = (rng.normal(size=(2, 8, 1)) * 2).astype("float32")
    grad = gradient(lambda v: binary_soft_target_loss(ops.convert_to_tensor(t), v, temperature), s)
    expected = temperature * (sigmoid(s / temperature) - sigmoid(t / temperature)) / len(s)
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_equals_the_softmax_form_on_two_class_logits():
    """What the distiller computes for single-logit outputs: the softmax losses on `[0, z]`."""
    rng = np.random.default_rng(5)
    t, s = rng.normal(size=(2, 6, 1)) * 4
    two_t, two_s = two_class_logits(t), two_class_logits(s)
    np.testing.assert_allclose(ops.convert_to_numpy(two_t)[..., 0], 0.0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(soft_target_kl(two_t, two_s, 3.0)), reference_values(t, s, 3.0), rtol=1e-5, atol=1e-6
    )
    # The reverse KL and the generalized JSD get their Bernoulli forms the same way.
    np.testing.assert_allclose(
        ops.convert_to_numpy(reverse_kl(two_t, two_s, 3.0)), reference_values(s, t, 3.0), rtol=1e-5, atol=1e-6
    )
    p, q = sigmoid(t[..., 0] / 3.0), sigmoid(s[..., 0] / 3.0)
    m = 0.5 * (p + q)

    def bernoulli_kl(a, b):
        return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))

    jsd = 9.0 * (0.5 * bernoulli_kl(p, m) + 0.5 * bernoulli_kl(q, m))
    np.testing.assert_allclose(ops.convert_to_numpy(generalized_jsd(two_t, two_s, 0.5, 3.0)), jsd, rtol=1e-5, atol=1e-6)


def test_zero_when_equal_and_finite_for_huge_logits():
    t = np.array([[3.0], [-2.0], [0.0]])
    assert float(binary_soft_target_loss(t, t)) == pytest.approx(0.0, abs=1e-7)
    huge = np.array([[1e4], [-1e4]], "float32")
    value = float(binary_soft_target_loss(huge, -huge, temperature=1.0))
    assert np.isfinite(value) and value == pytest.approx(1e4 * 2 / 2, rel=1e-3)
    grad = gradient(lambda v: binary_soft_target_loss(ops.convert_to_tensor(huge), v, 1.0), -huge)
    assert np.isfinite(grad).all()


def test_refuses_several_logits_and_bad_arguments():
    with pytest.raises(
        ValueError,
        match=r"binary_soft_target_kl takes one logit per example .*got shape \(2, 3\).*"
        r"soft_target_kl",
    ):
        binary_soft_target_loss(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        binary_soft_target_loss(np.zeros((2, 1)), np.zeros((2, 1)), temperature=0)
    with pytest.raises(ValueError, match="Unknown reduction 'mean'"):
        binary_soft_target_loss(np.zeros((2, 1)), np.zeros((2, 1)), reduction="mean")
