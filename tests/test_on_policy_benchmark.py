"""`benchmarks/on_policy.py`'s pure helpers (metrics, prompts, batches) against NumPy, on the current backend.

No model is loaded: the metric functions get tiny random logits, so this runs in seconds.
"""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import on_policy  # noqa: E402


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def random_case(seed=0, batch=3, positions=5, vocabulary=11):
    rng = np.random.default_rng(seed)
    student = rng.normal(0, 3, (batch, positions, vocabulary)).astype("float32")
    teacher = rng.normal(0, 3, (batch, positions, vocabulary)).astype("float32")
    labels = rng.integers(0, vocabulary, (batch, positions))
    weights = (rng.random((batch, positions)) < 0.6).astype("float32")
    weights[0, 0] = 1.0  # at least one weighted position
    return student, teacher, labels, weights


@pytest.mark.parametrize("seed", [0, 1])
def test_reverse_kl_sum_matches_numpy(seed):
    student, teacher, _, weights = random_case(seed)
    log_s, log_t = log_softmax(student), log_softmax(teacher)
    kl = (np.exp(log_s) * (log_s - log_t)).sum(axis=-1)
    total, count = on_policy.reverse_kl_sum(student, teacher, weights)
    np.testing.assert_allclose(total, (kl * weights).sum(), rtol=1e-5)
    assert count == weights.sum()
    assert on_policy.reverse_kl_sum(student, student, weights)[0] == pytest.approx(0.0, abs=1e-4)
    # Reverse, not forward: swapping the models changes the value.
    forward = (np.exp(log_t) * (log_t - log_s)).sum(axis=-1)
    assert not np.isclose((kl * weights).sum(), (forward * weights).sum(), rtol=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_nll_sum_matches_numpy(seed):
    _, teacher, labels, weights = random_case(seed)
    picked = np.take_along_axis(log_softmax(teacher), labels[..., None], axis=-1)[..., 0]
    total, count = on_policy.nll_sum(teacher, labels, weights)
    np.testing.assert_allclose(total, -(picked * weights).sum(), rtol=1e-5)
    assert count == weights.sum()


def test_completion_marks_and_scoring_batch():
    prompt_mask = np.array([[1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], bool)
    # Row 0 generated 3 tokens (ending at its end token), row 1 ran to the end: 7 slots, 4 kept.
    output_mask = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], bool)
    completion = on_policy.completion_marks(output_mask, prompt_mask, max_new_tokens=4)
    np.testing.assert_array_equal(completion, [[0, 0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0, 0, 0]])

    token_ids = np.arange(1, 17).reshape(2, 8)
    x, labels, weights = on_policy.scoring_batch(token_ids, prompt_mask, completion)
    np.testing.assert_array_equal(x["token_ids"], [[1, 2, 3, 4, 5, 6, 0], [9, 10, 11, 12, 13, 0, 0]])
    np.testing.assert_array_equal(x["padding_mask"], [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(labels, [[2, 3, 4, 5, 6, 0, 0], [10, 11, 12, 13, 0, 0, 0]])
    # Position t predicts token t + 1: only the predictions of generated tokens count.
    np.testing.assert_array_equal(weights, [[0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0]])


def test_split_opening():
    article = (
        "Ad sales boost Time Warner profit\n\nQuarterly profits at US media giant TimeWarner jumped 76% to "
        "$1.13bn (£600m) for the three months.\n\nThe firm, which is now one of the biggest investors, said so."
    )
    prompt, continuation = on_policy.split_opening(article)
    assert (
        prompt == "Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn (£600m) for the three months."
    )
    assert continuation == " The firm, which is now one of the biggest investors, said so."
    assert on_policy.split_opening('Title\n\n"We won." He said so.')[0] == '"We won."'
    assert on_policy.split_opening("Title\n\nNo sentence end here") is None
    assert on_policy.split_opening("Title\n\nOnly one sentence.") is None


def test_length_batches_group_similar_prompts():
    lengths = [9, 3, 7, 3, 5, 8, 4, 6, 10]
    order = on_policy.length_batches(lengths, 3, np.random.default_rng(0))
    assert sorted(order) == list(range(len(lengths)))
    batches = {tuple(sorted(lengths[i] for i in order[start : start + 3])) for start in range(0, 9, 3)}
    assert batches == {(3, 3, 4), (5, 6, 7), (8, 9, 10)}
    assert order == on_policy.length_batches(lengths, 3, np.random.default_rng(0))


def test_small_helpers():
    assert on_policy.generation_length([5, 20], 8, limit=64) == 32
    assert on_policy.generation_length([5, 60], 8, limit=64) == 64
    assert on_policy.mean_and_spread([2.0]) == (2.0, 0.0)
    mean, spread = on_policy.mean_and_spread([1.0, 2.0, 3.0])
    assert (mean, spread) == (2.0, 1.0)
    assert on_policy.format_cell([1.0, 2.0, 3.0], digits=2) == "2.00 ± 1.00"
    assert on_policy.format_cell([5.0]) == "5.000"
    assert set(on_policy.METHODS) == {"supervised", "sequence", "on_policy", "gkd"}
