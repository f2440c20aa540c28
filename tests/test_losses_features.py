import keras
import numpy as np
import pytest
from backend_grad import gradient, numeric_gradient
from keras import ops

from keras_kd.losses import CosineEmbeddingLoss, HintLoss, cosine_embedding_loss, hint_loss


def broadcast_weight(weight, values):
    weight = np.asarray(weight, np.float64)
    return np.broadcast_to(weight.reshape(weight.shape + (1,) * (values.ndim - weight.ndim)), values.shape)


def hint_reference(t, s, weight=None, reduction="sum_over_batch_size"):
    """float64 NumPy mean over features of (t - s)**2, then weighted mean over examples/positions."""
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    values = ((t - s) ** 2).mean(axis=-1)
    if weight is None:
        return values.mean()
    weight = broadcast_weight(weight, values)
    if reduction == "mean_with_sample_weight":
        return (weight * values).sum() / weight.sum() if weight.sum() else 0.0
    return (weight * values).sum() / values.size


def cosine_reference(t, s, mask=None):
    """float64 NumPy 1 - cos per position (a zero vector has cosine 0), masked mean over positions."""
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    norms = np.linalg.norm(t, axis=-1) * np.linalg.norm(s, axis=-1)
    dots = (t * s).sum(axis=-1)
    cosine = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    values = 1.0 - cosine
    weight = np.ones_like(values) if mask is None else broadcast_weight(mask, values)
    return (weight * values).sum() / weight.sum() if weight.sum() else 0.0


# --- hint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 4), (2, 3, 3, 5)])
def test_hint_matches_reference_and_plain_mse(shape):
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(2, *shape)).astype("float32")
    value = float(hint_loss(t, s))
    assert value == pytest.approx(hint_reference(t, s), rel=1e-5)
    assert value == pytest.approx(np.mean((t.astype(np.float64) - s) ** 2), rel=1e-5)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight"])
def test_hint_sample_weights(reduction):
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    per_example = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    per_position = (rng.random((4, 5)) > 0.4).astype("float32")
    for weight in (per_example, per_example[:, None], per_position):
        value = float(hint_loss(t, s, sample_weight=weight, reduction=reduction))
        assert value == pytest.approx(hint_reference(t, s, weight, reduction), rel=1e-5)


def test_hint_zero_weights_drop_examples():
    rng = np.random.default_rng(2)
    t, s = rng.normal(size=(2, 5, 4)).astype("float32")
    keep = np.array([1, 0, 1, 1, 0], "float32")
    value = float(hint_loss(t, s, sample_weight=keep, reduction="mean_with_sample_weight"))
    assert value == pytest.approx(float(hint_loss(t[keep > 0], s[keep > 0])), rel=1e-5)


def test_hint_gradient_wrt_student():
    rng = np.random.default_rng(3)
    t, s = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    weight = np.array([1.0, 0.5, 2.0], "float32")
    grad = gradient(lambda v: hint_loss(ops.convert_to_tensor(t), v, sample_weight=weight), s)
    expected = numeric_gradient(lambda v: hint_reference(t, v, weight), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    # analytic form: -2 w (t - s) / number of elements
    np.testing.assert_allclose(grad, -2 * weight[:, None, None] * (t - s) / t.size, rtol=1e-5, atol=1e-7)


def test_hint_zero_when_equal_and_finite_at_zero():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(3, 4)).astype("float32")
    assert float(hint_loss(t, t)) == 0.0
    zeros = np.zeros((3, 4), "float32")
    grad = gradient(lambda v: hint_loss(ops.convert_to_tensor(zeros), v), zeros)
    assert np.isfinite(grad).all() and not grad.any()


def test_hint_rejects_different_shapes():
    with pytest.raises(ValueError, match=r"same shape.*\(2, 8\).*\(2, 4\).*regressor"):
        hint_loss(np.zeros((2, 8)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="Unknown reduction"):
        hint_loss(np.zeros((2, 4)), np.zeros((2, 4)), reduction="sum")


# --- cosine ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 8)])
def test_cosine_matches_reference(shape):
    rng = np.random.default_rng(5)
    t, s = rng.normal(size=(2, *shape)).astype("float32")
    assert float(cosine_embedding_loss(t, s)) == pytest.approx(cosine_reference(t, s), rel=1e-5)


def test_cosine_mask():
    rng = np.random.default_rng(6)
    t, s = rng.normal(size=(2, 3, 5, 4)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], "float32")
    value = float(cosine_embedding_loss(t, s, mask=mask))
    assert value == pytest.approx(cosine_reference(t, s, mask), rel=1e-5)
    # the mean over unmasked positions only: equal to the plain mean over the kept positions
    assert value == pytest.approx(cosine_reference(t[mask > 0], s[mask > 0]), rel=1e-5)
    per_example = np.array([1, 0, 1], "float32")
    value = float(cosine_embedding_loss(t, s, mask=per_example))
    assert value == pytest.approx(cosine_reference(t[per_example > 0], s[per_example > 0]), rel=1e-5)


def test_cosine_all_zero_mask_gives_zero_and_finite_gradient():
    rng = np.random.default_rng(7)
    t, s = rng.normal(size=(2, 2, 3, 4)).astype("float32")
    mask = np.zeros((2, 3), "float32")
    assert float(cosine_embedding_loss(t, s, mask=mask)) == 0.0
    grad = gradient(lambda v: cosine_embedding_loss(ops.convert_to_tensor(t), v, mask=mask), s)
    assert np.isfinite(grad).all() and not grad.any()


def test_cosine_gradient_wrt_student():
    rng = np.random.default_rng(8)
    t, s = rng.normal(size=(2, 2, 3, 4)).astype("float32")
    mask = np.array([[1, 1, 0], [0, 1, 1]], "float32")
    grad = gradient(lambda v: cosine_embedding_loss(ops.convert_to_tensor(t), v, mask=mask), s)
    expected = numeric_gradient(lambda v: cosine_reference(t, v, mask), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_cosine_zero_vectors_and_identical_inputs():
    rng = np.random.default_rng(9)
    t = rng.normal(size=(3, 4, 6)).astype("float32")
    assert float(cosine_embedding_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_embedding_loss(t, 3.0 * t)) == pytest.approx(0.0, abs=1e-6)
    grad = gradient(lambda v: cosine_embedding_loss(ops.convert_to_tensor(t), v), t)
    assert np.isfinite(grad).all() and np.abs(grad).max() < 1e-5
    s = rng.normal(size=(3, 4, 6)).astype("float32")
    s[0, 1] = 0.0
    t[1, 2] = 0.0
    value = float(cosine_embedding_loss(t, s))
    assert np.isfinite(value) and value == pytest.approx(cosine_reference(t, s), rel=1e-5)
    grad = gradient(lambda v: cosine_embedding_loss(ops.convert_to_tensor(t), v), s)
    assert np.isfinite(grad).all()
    assert not grad[0, 1].any()  # a zero student vector has no direction to move
    zeros = np.zeros((2, 3), "float32")
    assert float(cosine_embedding_loss(zeros, zeros)) == 1.0
    assert np.isfinite(gradient(lambda v: cosine_embedding_loss(ops.convert_to_tensor(zeros), v), zeros)).all()


# --- Loss classes and dtypes -----------------------------------------------------------------


def test_loss_classes_match_functions_and_serialize():
    rng = np.random.default_rng(10)
    t, s = rng.normal(size=(2, 3, 5, 4)).astype("float32")
    mask = (rng.random((3, 5)) > 0.3).astype("float32")
    per_example = np.array([1.0, 0.0, 2.0], "float32")

    hint = HintLoss(reduction="mean_with_sample_weight")
    assert float(hint(t, s)) == pytest.approx(float(hint_loss(t, s)), rel=1e-6)
    for weight in (mask, per_example):
        expected = float(hint_loss(t, s, sample_weight=weight, reduction="mean_with_sample_weight"))
        assert float(hint(t, s, sample_weight=weight)) == pytest.approx(expected, rel=1e-6)
    assert float(HintLoss()(t, s, sample_weight=per_example)) == pytest.approx(
        float(hint_loss(t, s, sample_weight=per_example)), rel=1e-6
    )

    cosine = CosineEmbeddingLoss()
    assert float(cosine(t, s)) == pytest.approx(float(cosine_embedding_loss(t, s)), rel=1e-6)
    for weight in (mask, per_example):
        expected = float(cosine_embedding_loss(t, s, mask=weight))
        assert float(cosine(t, s, sample_weight=weight)) == pytest.approx(expected, rel=1e-6)

    for loss in (hint, cosine):
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
        again = type(loss).from_config(loss.get_config())
        assert float(again(t, s, sample_weight=mask)) == pytest.approx(float(loss(t, s, sample_weight=mask)), rel=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_inputs_give_finite_float32(dtype):
    rng = np.random.default_rng(11)
    t, s = rng.normal(size=(2, 2, 3, 8)).astype("float32") * 300
    t_low, s_low = ops.cast(t, dtype), ops.cast(s, dtype)
    for value in (
        hint_loss(t_low, s_low),
        cosine_embedding_loss(t_low, s_low),
        HintLoss()(t_low, s_low),
        CosineEmbeddingLoss()(t_low, s_low),
    ):
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert np.isfinite(float(value))
    t_cast = np.asarray(ops.convert_to_numpy(ops.cast(t_low, "float32")))
    s_cast = np.asarray(ops.convert_to_numpy(ops.cast(s_low, "float32")))
    assert float(hint_loss(t_low, s_low)) == pytest.approx(hint_reference(t_cast, s_cast), rel=1e-5)
    assert float(cosine_embedding_loss(t_low, s_low)) == pytest.approx(cosine_reference(t_cast, s_cast), rel=1e-5)
