import keras
import numpy as np
import pytest
from backend_grad import gradient, numeric_gradient
from keras import ops

from keras_kd.losses import AttentionTransferLoss, attention_map, attention_transfer_loss


def pool_reference(x, target):
    """float64 average pooling of the spatial axes of channels-last `x` to `target`, window by window."""
    x = np.asarray(x, np.float64)
    spatial = x.shape[1:-1]
    factors = [size // goal for size, goal in zip(spatial, target)]
    out = np.zeros((x.shape[0], *target, x.shape[-1]))
    for position in np.ndindex(*target):
        window = tuple(slice(p * f, (p + 1) * f) for p, f in zip(position, factors))
        out[(slice(None), *position)] = x[(slice(None), *window)].mean(axis=tuple(range(1, 1 + len(spatial))))
    return out


def map_reference(x, p=2):
    """float64 mean over channels of |x|**p, flattened per example, L2-normalised (0 stays 0)."""
    x = np.asarray(x, np.float64)
    a = (np.abs(x) ** p).mean(axis=-1).reshape(len(x), -1)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)


def at_reference(t, s, p=2, weight=None, reduction="sum_over_batch_size"):
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    target = tuple(min(a, b) for a, b in zip(t.shape[1:-1], s.shape[1:-1]))
    q_t, q_s = map_reference(pool_reference(t, target), p), map_reference(pool_reference(s, target), p)
    values = ((q_s - q_t) ** 2).mean(axis=1)
    if weight is None:
        return values.mean()
    weight = np.asarray(weight, np.float64).reshape(len(values))
    if reduction == "mean_with_sample_weight":
        return (weight * values).sum() / weight.sum() if weight.sum() else 0.0
    return (weight * values).sum() / len(values)


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (3, 5, 2), (2, 2, 3, 2, 4)])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_attention_map_matches_reference(shape, p):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    q = np.asarray(ops.convert_to_numpy(attention_map(x, p=p)))
    assert q.shape == (shape[0], int(np.prod(shape[1:-1])))
    np.testing.assert_allclose(q, map_reference(x, p), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_loss_matches_reference_with_different_channels(p):
    rng = np.random.default_rng(1)
    t = rng.normal(size=(3, 4, 4, 6)).astype("float32")
    s = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    assert float(attention_transfer_loss(t, s, p=p)) == pytest.approx(at_reference(t, s, p), rel=1e-5)


@pytest.mark.parametrize(
    "t_shape, s_shape",
    [
        ((2, 8, 8, 3), (2, 4, 4, 5)),  # teacher larger
        ((2, 2, 4, 3), (2, 4, 8, 3)),  # student larger
        ((2, 8, 2, 3), (2, 4, 4, 2)),  # larger on one axis, smaller on the other
        ((2, 9, 4), (2, 3, 4)),  # one spatial axis, factor 3
    ],
)
def test_larger_map_is_average_pooled(t_shape, s_shape):
    rng = np.random.default_rng(2)
    t = rng.normal(size=t_shape).astype("float32")
    s = rng.normal(size=s_shape).astype("float32")
    assert float(attention_transfer_loss(t, s)) == pytest.approx(at_reference(t, s), rel=1e-5)
    grad = gradient(lambda v: attention_transfer_loss(ops.convert_to_tensor(t), v), s)
    np.testing.assert_allclose(grad, numeric_gradient(lambda v: at_reference(t, v), s), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("p", [2, 3])
def test_gradient_wrt_student(p):
    rng = np.random.default_rng(3)
    t = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    s = rng.normal(size=(2, 3, 3, 2)).astype("float32")
    weight = np.array([2.0, 0.5], "float32")
    grad = gradient(lambda v: attention_transfer_loss(ops.convert_to_tensor(t), v, p=p, sample_weight=weight), s)
    expected = numeric_gradient(lambda v: at_reference(t, v, p, weight), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-6)


def test_sample_weights():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(4, 4, 4, 3)).astype("float32")
    s = rng.normal(size=(4, 4, 4, 5)).astype("float32")
    weight = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    for w in (weight, weight[:, None]):
        assert float(attention_transfer_loss(t, s, sample_weight=w)) == pytest.approx(
            at_reference(t, s, 2, weight), rel=1e-5
        )
        value = float(attention_transfer_loss(t, s, sample_weight=w, reduction="mean_with_sample_weight"))
        assert value == pytest.approx(at_reference(t, s, 2, weight, "mean_with_sample_weight"), rel=1e-5)
    keep = np.array([1, 0, 1, 0], "float32")
    value = float(attention_transfer_loss(t, s, sample_weight=keep, reduction="mean_with_sample_weight"))
    assert value == pytest.approx(float(attention_transfer_loss(t[keep > 0], s[keep > 0])), rel=1e-5)


def test_identical_and_zero_features_are_finite():
    rng = np.random.default_rng(5)
    t = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    assert float(attention_transfer_loss(t, t)) == pytest.approx(0.0, abs=1e-7)
    assert float(attention_transfer_loss(t, -2.0 * t)) == pytest.approx(0.0, abs=1e-7)
    zeros = np.zeros_like(t)
    assert float(attention_transfer_loss(zeros, zeros)) == 0.0
    grad = gradient(lambda v: attention_transfer_loss(ops.convert_to_tensor(zeros), v), zeros)
    assert np.isfinite(grad).all() and not grad.any()
    # a zero student map against a real teacher map: sum(Q_t**2) / N per example = 1 / 9
    assert float(attention_transfer_loss(t, zeros)) == pytest.approx(1.0 / 9.0, rel=1e-5)
    grad = gradient(lambda v: attention_transfer_loss(ops.convert_to_tensor(t), v), zeros)
    assert np.isfinite(grad).all()
    assert np.isfinite(np.asarray(ops.convert_to_numpy(attention_map(zeros)))).all()
    partly = t.copy()
    partly[0] = 0.0
    grad = gradient(lambda v: attention_transfer_loss(ops.convert_to_tensor(t), v, p=1), partly)
    assert np.isfinite(grad).all()


def test_rejects_vectors():
    with pytest.raises(ValueError, match=r"rank >= 3.*\(4, 16\).*Hint.*Relational"):
        attention_transfer_loss(np.zeros((4, 16)), np.zeros((4, 16)))
    with pytest.raises(ValueError, match=r"rank >= 3.*\(4, 16\)"):
        attention_map(np.zeros((4, 16)))


def test_rejects_non_integer_ratios_and_rank_mismatch():
    with pytest.raises(ValueError, match=r"integer multiples.*\(2, 6, 6, 3\).*\(2, 4, 4, 3\)"):
        attention_transfer_loss(np.zeros((2, 6, 6, 3)), np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"same rank.*\(2, 4, 4, 3\).*\(2, 4, 3\)"):
        attention_transfer_loss(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="p must be > 0"):
        attention_transfer_loss(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 3)), p=0)
    with pytest.raises(ValueError, match="p must be > 0"):
        AttentionTransferLoss(p=-1)


def test_loss_class_matches_function_and_serializes():
    rng = np.random.default_rng(6)
    t = rng.normal(size=(3, 4, 4, 3)).astype("float32")
    s = rng.normal(size=(3, 2, 2, 5)).astype("float32")
    weight = np.array([1.0, 0.0, 3.0], "float32")
    loss = AttentionTransferLoss(p=3)
    assert float(loss(t, s)) == pytest.approx(float(attention_transfer_loss(t, s, p=3)), rel=1e-6)
    assert float(loss(t, s, sample_weight=weight)) == pytest.approx(
        float(attention_transfer_loss(t, s, p=3, sample_weight=weight)), rel=1e-6
    )
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, AttentionTransferLoss) and clone.p == 3
    again = AttentionTransferLoss.from_config(loss.get_config())
    assert again.get_config() == loss.get_config()
    assert float(again(t, s)) == pytest.approx(float(loss(t, s)), rel=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_inputs_give_finite_float32(dtype):
    rng = np.random.default_rng(7)
    t = ops.cast(rng.normal(size=(2, 4, 4, 3)) * 200, dtype)
    s = ops.cast(rng.normal(size=(2, 2, 2, 6)) * 200, dtype)
    for value in (attention_transfer_loss(t, s), AttentionTransferLoss()(t, s), attention_map(s)):
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert np.isfinite(np.asarray(ops.convert_to_numpy(value))).all()
    t32 = np.asarray(ops.convert_to_numpy(ops.cast(t, "float32")))
    s32 = np.asarray(ops.convert_to_numpy(ops.cast(s, "float32")))
    assert float(attention_transfer_loss(t, s)) == pytest.approx(at_reference(t32, s32), rel=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="dynamic batch sizes are a TF-graph case")
def test_unknown_batch_size_in_a_tf_graph():
    import tensorflow as tf

    rng = np.random.default_rng(8)
    t = rng.normal(size=(3, 4, 4, 3)).astype("float32")
    s = rng.normal(size=(3, 2, 2, 5)).astype("float32")

    @tf.function(input_signature=[tf.TensorSpec((None, 4, 4, 3)), tf.TensorSpec((None, 2, 2, 5))])
    def loss(a, b):
        return attention_transfer_loss(a, b)

    assert float(loss(t, s)) == pytest.approx(at_reference(t, s), rel=1e-5)
