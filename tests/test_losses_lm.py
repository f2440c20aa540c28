"""Language-model soft losses: reverse KL and GKD's generalized JSD against float64 NumPy references."""

import keras
import numpy as np
import pytest
from backend_grad import gradient, numeric_gradient
from keras import ops

from keras_kd.losses import (
    GeneralizedJSD,
    ReverseKL,
    SoftTargetLoss,
    generalized_jsd,
    generalized_jsd_loss,
    reverse_kl,
    reverse_kl_loss,
    soft_target_kl,
    soft_target_loss,
)

BETAS = [0.0, 0.25, 0.5, 0.9, 1.0]


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl(log_a, log_b):
    return (np.exp(log_a) * (log_a - log_b)).sum(-1)


def ref_reverse_kl(t, s, temperature):
    """float64 per-position `T**2 * KL(q || p)`."""
    log_p = log_softmax(np.asarray(t, np.float64) / temperature)
    log_q = log_softmax(np.asarray(s, np.float64) / temperature)
    return temperature**2 * kl(log_q, log_p)


def ref_gjsd(t, s, beta, temperature):
    """float64 per-position `T**2 * JSD(beta)(p || q)`, endpoints the exact forward/reverse KL."""
    log_p = log_softmax(np.asarray(t, np.float64) / temperature)
    log_q = log_softmax(np.asarray(s, np.float64) / temperature)
    if beta == 0:
        return temperature**2 * kl(log_p, log_q)
    if beta == 1:
        return temperature**2 * kl(log_q, log_p)
    log_m = np.logaddexp(log_p + np.log(beta), log_q + np.log1p(-beta))
    return temperature**2 * (beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m))


def ref_gjsd_prob_space(t, s, beta, temperature):
    """The same interior formula with the mixture formed in probability space (moderate logits only)."""
    p = np.exp(log_softmax(np.asarray(t, np.float64) / temperature))
    q = np.exp(log_softmax(np.asarray(s, np.float64) / temperature))
    m = beta * p + (1 - beta) * q
    return temperature**2 * (beta * (p * np.log(p / m)).sum(-1) + (1 - beta) * (q * np.log(q / m)).sum(-1))


def weighted(values, weight=None):
    if weight is None:
        return values.mean()
    weight = np.asarray(weight, np.float64)
    weight = weight.reshape(weight.shape + (1,) * (values.ndim - weight.ndim))
    return (values * weight).mean()


def logits(seed, shape=(2, 3, 7, 11), scale=3.0):
    t, s = np.random.default_rng(seed).normal(size=shape) * scale
    return t.astype("float32"), s.astype("float32")


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_reverse_kl_matches_numpy_reference(temperature):
    t, s = logits(1)
    expected = ref_reverse_kl(t, s, temperature)
    # Per position, float32 log-probabilities carry ~1e-7 absolute error each, scaled by T**2.
    np.testing.assert_allclose(np.asarray(reverse_kl(t, s, temperature)), expected, rtol=1e-5, atol=1e-6)
    value = float(reverse_kl_loss(t, s, temperature=temperature))
    assert value == pytest.approx(expected.mean(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("beta", BETAS)
def test_generalized_jsd_matches_numpy_reference(beta, temperature):
    t, s = logits(2)
    expected = ref_gjsd(t, s, beta, temperature)
    if 0 < beta < 1:
        np.testing.assert_allclose(expected, ref_gjsd_prob_space(t, s, beta, temperature), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(generalized_jsd(t, s, beta, temperature)), expected, rtol=1e-5, atol=1e-6)
    value = float(generalized_jsd_loss(t, s, beta=beta, temperature=temperature))
    assert value == pytest.approx(expected.mean(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_endpoints_are_exactly_forward_and_reverse_kl(temperature):
    t, s = logits(3)
    forward = float(soft_target_loss(t, s, temperature=temperature))
    reverse = float(reverse_kl_loss(t, s, temperature=temperature))
    assert float(generalized_jsd_loss(t, s, beta=0.0, temperature=temperature)) == forward
    assert float(generalized_jsd_loss(t, s, beta=1.0, temperature=temperature)) == reverse
    assert forward != pytest.approx(reverse, rel=1e-3)


def test_endpoints_are_definitions_not_limits():
    """The interior value tends to beta * KL(p||q) as beta -> 0 (GKD paper, TRL), not to KL(p||q)."""
    t, s = logits(4, scale=1.0)
    forward, reverse = ref_gjsd(t, s, 0.0, 1.0).mean(), ref_gjsd(t, s, 1.0, 1.0).mean()
    eps = 1e-4
    assert float(generalized_jsd_loss(t, s, beta=eps)) == pytest.approx(eps * forward, rel=5e-2)
    assert float(generalized_jsd_loss(t, s, beta=1 - eps)) == pytest.approx(eps * reverse, rel=5e-2)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_tensor_beta_matches_python_beta(beta):
    t, s = logits(5, shape=(2, 4, 5, 9))
    expected = np.asarray(generalized_jsd(t, s, beta, 2.0))
    variable = keras.Variable(beta, dtype="float32", trainable=False)
    for tensor_beta in (ops.convert_to_tensor(np.float32(beta)), variable):
        np.testing.assert_allclose(np.asarray(generalized_jsd(t, s, tensor_beta, 2.0)), expected, rtol=1e-6, atol=1e-7)
    grad = gradient(lambda v: generalized_jsd_loss(ops.convert_to_tensor(t), v, variable, 2.0), s)
    assert np.isfinite(grad).all()
    expected_grad = gradient(lambda v: generalized_jsd_loss(ops.convert_to_tensor(t), v, beta, 2.0), s)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_jsd_is_symmetric_at_one_half_and_dual_in_beta(temperature):
    t, s = logits(6)
    np.testing.assert_allclose(
        np.asarray(generalized_jsd(t, s, 0.5, temperature)),
        np.asarray(generalized_jsd(s, t, 0.5, temperature)),
        rtol=1e-5,
        atol=1e-7,
    )
    for beta in BETAS:  # JSD(beta)(p || q) = JSD(1 - beta)(q || p), endpoints included
        np.testing.assert_allclose(
            np.asarray(generalized_jsd(t, s, beta, temperature)),
            np.asarray(generalized_jsd(s, t, 1 - beta, temperature)),
            rtol=1e-5,
            atol=1e-7,
        )


def test_symmetric_jsd_is_bounded_by_log_two():
    t, s = logits(7, scale=30.0)
    values = np.asarray(generalized_jsd(t, s, 0.5, 1.0))
    assert values.max() <= np.log(2) + 1e-6
    assert values.max() > 0.5 * np.log(2)


@pytest.mark.parametrize("beta", BETAS)
def test_zero_when_equal_and_non_negative(beta):
    t, s = logits(8)
    np.testing.assert_allclose(np.asarray(generalized_jsd(t, t, beta, 2.0)), 0.0, atol=1e-6)
    assert (np.asarray(generalized_jsd(t, s, beta, 2.0)) > 0).all()
    # Near equality the values are ~1e-7, at float32 rounding: non-negative up to that rounding.
    near = s + np.random.default_rng(9).normal(size=s.shape).astype("float32") * 1e-3
    assert (np.asarray(generalized_jsd(s, near, beta, 2.0)) >= -1e-6).all()
    assert float(reverse_kl_loss(t, t, 2.0)) == 0.0
    assert (np.asarray(reverse_kl(t, s, 2.0)) > 0).all()
    assert (np.asarray(reverse_kl(s, near, 2.0)) >= -1e-6).all()


@pytest.mark.parametrize("beta", BETAS)
def test_invariant_to_a_constant_added_to_logits(beta):
    t, s = logits(10)
    base = np.asarray(generalized_jsd(t, s, beta, 2.0))
    shifted = np.asarray(generalized_jsd(t + 7.0, s - 3.0, beta, 2.0))
    np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(reverse_kl(t - 5.0, s + 11.0, 2.0)), np.asarray(reverse_kl(t, s, 2.0)), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("beta", BETAS)
def test_finite_for_huge_logits(beta):
    rng = np.random.default_rng(11)
    t, s = rng.choice([-1e4, 1e4], size=(2, 3, 4, 6)).astype("float32")
    for loss_fn, reference in (
        (lambda a, b: generalized_jsd_loss(a, b, beta, 1.0), lambda a, b: ref_gjsd(a, b, beta, 1.0)),
        (lambda a, b: reverse_kl_loss(a, b, 1.0), lambda a, b: ref_reverse_kl(a, b, 1.0)),
    ):
        value = float(loss_fn(t, s))
        assert np.isfinite(value)
        assert value == pytest.approx(reference(t, s).mean(), rel=1e-5)
        grad = gradient(lambda v, f=loss_fn: f(ops.convert_to_tensor(t), v), s)
        assert np.isfinite(grad).all()


def test_finite_and_float32_under_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = keras.layers.Dense(10)
        x = np.random.default_rng(12).normal(size=(4, 3)).astype("float32") * 1e3
        t = layer(x)
        assert keras.backend.standardize_dtype(t.dtype) == "bfloat16"
        s = ops.cast(np.random.default_rng(13).choice([-1e4, 1e4], size=(4, 10)), "bfloat16")
        for value in (
            reverse_kl_loss(t, s, 4.0),
            *(generalized_jsd_loss(t, s, beta, 4.0) for beta in BETAS),
            GeneralizedJSD(beta=0.5)(t, s),
            ReverseKL()(t, s),
        ):
            assert keras.backend.standardize_dtype(value.dtype) == "float32"
            assert np.isfinite(ops.convert_to_numpy(value))
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize(
    "loss_fn, reference",
    [
        (lambda t, s, **kw: reverse_kl_loss(t, s, 2.0, **kw), lambda t, s: ref_reverse_kl(t, s, 2.0)),
        (lambda t, s, **kw: generalized_jsd_loss(t, s, 0.25, 2.0, **kw), lambda t, s: ref_gjsd(t, s, 0.25, 2.0)),
    ],
    ids=["reverse_kl", "generalized_jsd"],
)
def test_sequence_masks_and_sample_weights(loss_fn, reference):
    t, s = logits(14, shape=(2, 4, 7, 5))
    values = reference(t, s)
    rng = np.random.default_rng(15)
    mask = (rng.random((4, 7)) > 0.3).astype("float32")
    per_example = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    for weight in (mask, per_example):
        assert float(loss_fn(t, s, sample_weight=weight)) == pytest.approx(weighted(values, weight), rel=1e-6, abs=1e-6)
    assert float(loss_fn(t[:, 0], s[:, 0], sample_weight=per_example[:, None])) == pytest.approx(
        weighted(values[:, 0], per_example), rel=1e-6, abs=1e-6
    )
    value = float(loss_fn(t, s, sample_weight=mask, reduction="mean_with_sample_weight"))
    assert value == pytest.approx(values[mask > 0].mean(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_reverse_kl_gradient_matches_numeric_gradient(temperature):
    t, s = logits(16, shape=(2, 2, 3, 5))
    grad = gradient(lambda v: reverse_kl_loss(ops.convert_to_tensor(t), v, temperature), s)
    expected = numeric_gradient(lambda v: ref_reverse_kl(t, v, temperature).mean(), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("beta", BETAS)
def test_generalized_jsd_gradient_matches_numeric_gradient(beta, temperature):
    t, s = logits(17, shape=(2, 2, 3, 5))
    grad = gradient(lambda v: generalized_jsd_loss(ops.convert_to_tensor(t), v, beta, temperature), s)
    expected = numeric_gradient(lambda v: ref_gjsd(t, v, beta, temperature).mean(), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "loss, function",
    [
        (SoftTargetLoss(temperature=3.0), lambda t, s, T: soft_target_kl(t, s, T)),
        (ReverseKL(temperature=3.0), lambda t, s, T: reverse_kl(t, s, T)),
        (GeneralizedJSD(beta=0.25, temperature=3.0), lambda t, s, T: generalized_jsd(t, s, 0.25, T)),
    ],
    ids=["soft_target", "reverse_kl", "generalized_jsd"],
)
def test_loss_classes_match_functions_and_serialize(loss, function):
    t, s = logits(18, shape=(2, 3, 4, 6))
    assert float(loss(t, s)) == pytest.approx(float(ops.mean(function(t, s, 3.0))), rel=1e-6, abs=1e-6)
    for temperature in (1.5, keras.Variable(2.5, trainable=False)):
        np.testing.assert_allclose(
            np.asarray(loss.per_position(t, s, temperature)), np.asarray(function(t, s, temperature)), rtol=1e-6
        )
    np.testing.assert_allclose(np.asarray(loss.per_position(t, s)), np.asarray(function(t, s, 3.0)), rtol=1e-6)
    mask = (np.random.default_rng(19).random((3, 4)) > 0.4).astype("float32")
    assert float(loss(t, s, sample_weight=mask)) == pytest.approx(
        float(ops.mean(ops.multiply(function(t, s, 3.0), mask))), rel=1e-6, abs=1e-6
    )
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert float(restored(t, s)) == pytest.approx(float(loss(t, s)), rel=1e-6)


def test_generalized_jsd_config_keeps_beta():
    loss = GeneralizedJSD(beta=0.9, temperature=2.0, name="gkd")
    config = loss.get_config()
    assert config["beta"] == 0.9 and config["temperature"] == 2.0 and config["name"] == "gkd"
    assert ReverseKL().get_config()["temperature"] == 1.0


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_rejects_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        generalized_jsd_loss(np.zeros((1, 2)), np.zeros((1, 2)), beta=beta)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        GeneralizedJSD(beta=beta)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        reverse_kl_loss(np.zeros((1, 2)), np.zeros((1, 2)), temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generalized_jsd_loss(np.zeros((1, 2)), np.zeros((1, 2)), temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ReverseKL(temperature=temperature)


def test_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="Unknown reduction 'sum'"):
        reverse_kl_loss(np.zeros((1, 2)), np.zeros((1, 2)), reduction="sum")
    with pytest.raises(ValueError, match="Unknown reduction 'sum'"):
        generalized_jsd_loss(np.zeros((1, 2)), np.zeros((1, 2)), reduction="sum")
