import keras
import numpy as np
import pytest
from backend_grad import gradient
from keras import ops

from keras_kd.losses import SoftTargetLoss, soft_target_loss


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference(t, s, temperature, weight=None):
    """float64 NumPy `T**2 * KL(softmax(t/T) || softmax(s/T))`, averaged over all values."""
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    log_p_t, log_p_s = log_softmax(t / temperature), log_softmax(s / temperature)
    kl = (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1) * temperature**2
    if weight is not None:
        weight = np.asarray(weight, np.float64).reshape(weight.shape + (1,) * (kl.ndim - weight.ndim))
        kl = kl * weight
    return kl.mean()


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_matches_numpy_reference(temperature):
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(2, 16, 10)) * 3
    value = float(soft_target_loss(t, s, temperature=temperature))
    assert value == pytest.approx(reference(t, s, temperature), rel=1e-6, abs=1e-6)


def test_sequences_and_sample_weight_match_reference():
    rng = np.random.default_rng(2)
    t, s = rng.normal(size=(2, 4, 7, 5))
    mask = (rng.random((4, 7)) > 0.3).astype("float32")
    value = float(soft_target_loss(t, s, temperature=2.0, sample_weight=mask))
    assert value == pytest.approx(reference(t, s, 2.0, mask), rel=1e-6, abs=1e-6)
    per_example = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    value = float(soft_target_loss(t, s, temperature=2.0, sample_weight=per_example))
    assert value == pytest.approx(reference(t, s, 2.0, per_example), rel=1e-6, abs=1e-6)
    column = per_example[:, None]
    assert float(soft_target_loss(t[:, 0], s[:, 0], 2.0, sample_weight=column)) == pytest.approx(
        reference(t[:, 0], s[:, 0], 2.0, per_example), rel=1e-6, abs=1e-6
    )


def test_mean_with_sample_weight_divides_by_weight_sum():
    rng = np.random.default_rng(3)
    t, s = rng.normal(size=(2, 6, 4))
    w = np.array([1, 1, 0, 0, 1, 0], "float32")
    value = float(soft_target_loss(t, s, 3.0, sample_weight=w, reduction="mean_with_sample_weight"))
    assert value == pytest.approx(reference(t[w > 0], s[w > 0], 3.0), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_gradient_wrt_student_logits(temperature):
    rng = np.random.default_rng(4)
    t, s = rng.normal(size=(2, 8, 6)).astype("float32")
    grad = gradient(lambda v: soft_target_loss(ops.convert_to_tensor(t), v, temperature), s)
    expected = temperature * (softmax(s / temperature) - softmax(t / temperature)) / len(s)
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_zero_when_equal_and_positive_otherwise():
    rng = np.random.default_rng(5)
    t, s = rng.normal(size=(2, 8, 6))
    assert float(soft_target_loss(t, t)) == pytest.approx(0.0, rel=1e-6, abs=1e-6)
    assert float(soft_target_loss(t, s)) > 0


def test_finite_for_huge_logits():
    rng = np.random.default_rng(6)
    t, s = rng.choice([-1e4, 1e4], size=(2, 8, 6)).astype("float32")
    value = float(soft_target_loss(t, s, temperature=1.0))
    assert np.isfinite(value)
    assert value == pytest.approx(reference(t, s, 1.0), rel=1e-5)
    grad = gradient(lambda v: soft_target_loss(ops.convert_to_tensor(t), v, 1.0), s)
    assert np.isfinite(grad).all()


def test_finite_under_mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = keras.layers.Dense(10)
        x = np.random.default_rng(7).normal(size=(4, 3)).astype("float32") * 1e3
        t = layer(x)
        assert keras.backend.standardize_dtype(t.dtype) == "bfloat16"
        value = soft_target_loss(t, ops.zeros_like(t), temperature=4.0)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert np.isfinite(float(value))
    finally:
        keras.config.set_dtype_policy("float32")


def test_loss_class_matches_function_and_serializes():
    rng = np.random.default_rng(8)
    t, s = rng.normal(size=(2, 5, 4)).astype("float32")
    loss = SoftTargetLoss(temperature=3.0)
    assert float(loss(t, s)) == pytest.approx(float(soft_target_loss(t, s, 3.0)), rel=1e-6, abs=1e-6)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, SoftTargetLoss) and clone.temperature == 3.0


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_target_loss(np.zeros((1, 2)), np.zeros((1, 2)), temperature=temperature)


def test_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="Unknown reduction 'sum'"):
        soft_target_loss(np.zeros((1, 2)), np.zeros((1, 2)), reduction="sum")
