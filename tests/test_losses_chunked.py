"""`keras_kd.losses.chunked.chunked_weighted_mean`: the dense value and gradients, a chunk of positions at a time."""

import numpy as np
import pytest
from backend_grad import gradient
from keras import ops

from keras_kd.losses import reverse_kl, soft_target_kl
from keras_kd.losses._common import weighted_mean
from keras_kd.losses.chunked import chunked_weighted_mean

BATCH, POSITIONS, VOCABULARY = 3, 7, 11
RNG = np.random.default_rng(0)
H_T = RNG.normal(size=(BATCH, POSITIONS, 6)).astype("float32")
H_S = RNG.normal(size=(BATCH, POSITIONS, 4)).astype("float32")
W_T = RNG.normal(size=(6, VOCABULARY)).astype("float32")
W_S = RNG.normal(size=(4, VOCABULARY)).astype("float32")
MASK = (RNG.random((BATCH, POSITIONS)) > 0.3).astype("float32")


def numpy_kl(t, s, temperature):
    def log_softmax(z):
        z = z / temperature
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    log_t, log_s = log_softmax(t), log_softmax(s)
    return temperature**2 * (np.exp(log_t) * (log_t - log_s)).sum(-1)


def head(weights):
    return lambda hidden: ops.matmul(hidden, ops.convert_to_tensor(weights))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 10])
@pytest.mark.parametrize(
    "sample_weight, reduction",
    [
        (None, "sum_over_batch_size"),
        (MASK, "sum_over_batch_size"),
        (MASK, "mean_with_sample_weight"),
        (np.array([1.0, 0.0, 2.0], "float32"), "mean_with_sample_weight"),
    ],
)
def test_matches_the_numpy_reference(chunk_size, sample_weight, reduction):
    temperature = 2.0
    value = chunked_weighted_mean(
        lambda t, s: soft_target_kl(t, s, temperature),
        H_T,
        H_S,
        head(W_T),
        head(W_S),
        chunk_size,
        sample_weight,
        reduction,
    )
    values = numpy_kl(H_T.astype("float64") @ W_T, H_S.astype("float64") @ W_S, temperature)
    weight = (
        np.ones_like(values)
        if sample_weight is None
        else np.broadcast_to(sample_weight.reshape(BATCH, -1), values.shape)
    )
    total = (values * weight).sum()
    expected = total / weight.sum() if reduction == "mean_with_sample_weight" else total / values.size
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [2, 3, 7])
@pytest.mark.parametrize("term", [soft_target_kl, reverse_kl])
def test_gradients_equal_the_dense_terms(chunk_size, term):
    def chunked(weights):
        return chunked_weighted_mean(
            lambda t, s: term(t, s, 2.0), H_T, H_S, head(W_T), lambda h: ops.matmul(h, weights), chunk_size, MASK
        )

    def dense(weights):
        return weighted_mean(term(ops.matmul(H_T, W_T), ops.matmul(ops.convert_to_tensor(H_S), weights), 2.0), MASK)

    np.testing.assert_allclose(gradient(chunked, W_S), gradient(dense, W_S), rtol=1e-5, atol=1e-7)

    def chunked_by_hidden(hidden):
        return chunked_weighted_mean(lambda t, s: term(t, s, 2.0), H_T, hidden, head(W_T), head(W_S), chunk_size, MASK)

    def dense_by_hidden(hidden):
        return weighted_mean(term(ops.matmul(H_T, W_T), ops.matmul(hidden, W_S), 2.0), MASK)

    np.testing.assert_allclose(gradient(chunked_by_hidden, H_S), gradient(dense_by_hidden, H_S), rtol=1e-5, atol=1e-7)


def test_the_teacher_side_gets_no_gradient():
    def by_teacher_weights(weights):
        loss = chunked_weighted_mean(
            lambda t, s: soft_target_kl(t, s, 2.0), H_T, H_S, lambda h: ops.matmul(h, weights), head(W_S), 3
        )
        return loss + 0.0 * ops.sum(weights)  # so that every backend differentiates with respect to `weights`

    np.testing.assert_array_equal(gradient(by_teacher_weights, W_T), np.zeros_like(W_T))


def test_bad_arguments():
    kl = lambda t, s: soft_target_kl(t, s, 2.0)  # noqa: E731
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match=r"chunk_size must be an int >= 1, got"):
            chunked_weighted_mean(kl, H_T, H_S, head(W_T), head(W_S), bad)
    with pytest.raises(ValueError, match=r"must share their \(batch, positions\) dimensions"):
        chunked_weighted_mean(kl, H_T[:, :5], H_S, head(W_T), head(W_S), 2)
    with pytest.raises(ValueError, match=r"needs \(batch, positions, width\) hidden states"):
        chunked_weighted_mean(kl, H_T[:, 0], H_S[:, 0], head(W_T), head(W_S), 2)
    with pytest.raises(ValueError, match="reduction"):
        chunked_weighted_mean(kl, H_T, H_S, head(W_T), head(W_S), 2, reduction="sum")
