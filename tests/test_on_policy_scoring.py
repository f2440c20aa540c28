"""`keras_kd.on_policy.score_completions`: the teacher's scores of the student's own completions (tiny GPT-2s)."""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from test_hub_text import WORDS, gpt2_causal_lm, gpt2_vocabulary  # noqa: E402
from test_on_policy import PROMPTS, emittable, emitting, models  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.on_policy.scoring import token_scores  # noqa: E402


def reference_scores(student_logits, teacher_logits, labels, weights):
    """float64 NumPy: summed KL(p_s || p_t), -log p_t(label), -log p_s(label) over the weighted positions."""
    log_s = student_logits - np.logaddexp.reduce(student_logits, axis=-1, keepdims=True)
    log_t = teacher_logits - np.logaddexp.reduce(teacher_logits, axis=-1, keepdims=True)
    kl = (np.exp(log_s) * (log_s - log_t)).sum(axis=-1)
    pick = np.take_along_axis
    return {
        "reverse_kl": (kl * weights).sum(),
        "teacher_nll": (-pick(log_t, labels[..., None], -1)[..., 0] * weights).sum(),
        "student_nll": (-pick(log_s, labels[..., None], -1)[..., 0] * weights).sum(),
        "tokens": weights.sum(),
    }


def test_token_scores_match_a_float64_reference():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(0, 3, (2, 5, 11)), rng.normal(0, 3, (2, 5, 11))
    labels, weights = rng.integers(0, 11, (2, 5)), (rng.random((2, 5)) > 0.4).astype("float64")
    got = token_scores(student.astype("float32"), teacher.astype("float32"), labels, weights)
    for key, value in reference_scores(student, teacher, labels, weights).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=key)


def test_greedy_completions_are_scored_by_the_teacher_at_the_student_tokens():
    teacher, student = models()
    token = emittable(student, 1)[0]
    emitting(student, token)  # the student's greedy completion repeats `token`, near certainly
    scores = keras_kd.on_policy.score_completions(student, teacher, PROMPTS, max_new_tokens=3, greedy=True)

    word = next(w for w, i in gpt2_vocabulary().items() if i == token)
    assert scores["completions"] == [word.replace("Ġ", " ") * 3] * len(PROMPTS)
    assert scores["tokens"] == 3 * len(PROMPTS) and scores["completion_length"] == 3
    assert scores["student_nll"] < 1e-3

    # The teacher's own log-probability of `token` after each prompt and the tokens written so far.
    preprocessor = teacher.preprocessor
    expected = {"teacher_nll": 0.0, "reverse_kl": 0.0}
    for prompt in PROMPTS:
        ids = list(keras.ops.convert_to_numpy(preprocessor.generate_preprocess([prompt])["token_ids"])[0])
        length = int(keras.ops.convert_to_numpy(preprocessor.generate_preprocess([prompt])["padding_mask"])[0].sum())
        sequence = np.array([ids[:length] + [token] * 3], "int32")
        x = {"token_ids": sequence[:, :-1], "padding_mask": np.ones_like(sequence[:, :-1], bool)}
        labels = sequence[:, 1:]
        weights = np.zeros(labels.shape)
        weights[0, length - 1 :] = 1.0
        teacher.preprocessor = student.preprocessor = None
        t_logits = np.asarray(teacher.predict_on_batch(x), "float64")
        s_logits = np.asarray(student.predict_on_batch(x), "float64")
        teacher.preprocessor = student.preprocessor = preprocessor
        reference = reference_scores(s_logits, t_logits, labels, weights)
        expected["teacher_nll"] += reference["teacher_nll"] / scores["tokens"]
        expected["reverse_kl"] += reference["reverse_kl"] / scores["tokens"]
    np.testing.assert_allclose(scores["teacher_nll"], expected["teacher_nll"], rtol=1e-4)
    np.testing.assert_allclose(scores["reverse_kl"], expected["reverse_kl"], rtol=1e-4)
    assert scores["teacher_nll"] > 1.0  # the teacher does not emit `token`


def test_sampled_completions_stay_within_max_new_tokens_and_the_student_keeps_its_preprocessor():
    teacher, student = models()
    preprocessor, sampler = student.preprocessor, student.sampler
    scores = keras_kd.on_policy.score_completions(
        student, teacher, PROMPTS * 3, max_new_tokens=5, temperature=1.5, seed=1, batch_size=5
    )
    assert len(scores["completions"]) == 12
    assert 0 < scores["completion_length"] <= 5 and 12 <= scores["tokens"] <= 60
    assert scores["reverse_kl"] > 0 and np.isfinite(scores["teacher_nll"])
    assert student.preprocessor is preprocessor and student.sampler is sampler


def test_bad_inputs_are_refused_with_the_fix():
    teacher, student = models()
    with pytest.raises(ValueError, match=r"teacher has a vocabulary of \d+ tokens and the student one of \d+"):
        other = gpt2_causal_lm(gpt2_vocabulary(WORDS[:5]), words=WORDS[:5])
        keras_kd.on_policy.score_completions(other, teacher, PROMPTS, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompts must be a non-empty list of strings, got str"):
        keras_kd.on_policy.score_completions(student, teacher, "the match", max_new_tokens=4)
    with pytest.raises(ValueError, match=r"score_completions takes KerasHub CausalLM models; the teacher"):
        keras_kd.on_policy.score_completions(
            student, keras.Sequential([keras.layers.Dense(2)]), PROMPTS, max_new_tokens=4
        )
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int >= 1"):
        keras_kd.on_policy.score_completions(student, teacher, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        keras_kd.on_policy.score_completions(student, teacher, PROMPTS, max_new_tokens=4, batch_size=0)
    with pytest.raises(ValueError, match=r"A prompt takes \d+ tokens .* leaves 2 for the prompt"):
        keras_kd.on_policy.score_completions(student, teacher, ["the match ended in a draw"], max_new_tokens=10)
