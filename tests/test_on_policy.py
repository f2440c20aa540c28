"""`Distiller(..., on_policy=keras_kd.OnPolicy(...))` on tiny KerasHub GPT-2 models built from config.

Which model wrote a batch's completions is read off the training loss: a callback makes a model
emit one token id at every position (its final layer norm's scale 0, its offset a direction whose
logits single out that id), so a student trained with `alpha=1` on completions it wrote itself
with its current weights has a cross-entropy near 0, and a large one on anything else.
"""

import json
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from test_hub_text import gpt2_causal_lm, gpt2_vocabulary  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.hub import student_from_teacher  # noqa: E402

PROMPTS = ["the match", "shares fell", "the film", "a draw"]
COMPLETIONS = [" ended in a draw", " after results", " won a prize", " after the match"]
SEQUENCE_LENGTH = 12


def models(seed=0):
    """A 2-layer GPT-2 teacher and a 1-layer student from its layers, without dropout (steps are deterministic)."""
    teacher = gpt2_causal_lm(gpt2_vocabulary(), sequence_length=SEQUENCE_LENGTH, seed=seed, dropout=0.0)
    return teacher, student_from_teacher(teacher, 1)


def emitting(model, token):
    """Sets `model`'s final layer norm so that it predicts `token` at every position, near certainly."""
    embeddings = keras.ops.convert_to_numpy(model.backbone.token_embedding.embeddings)
    direction = embeddings[token] - embeddings.mean(axis=0)
    logits = embeddings @ direction
    assert logits.argmax() == token
    gap = logits[token] - np.sort(logits)[-2]
    norm = model.backbone.get_layer("layer_norm")
    norm.set_weights(
        [np.zeros_like(w) if i == 0 else direction * (60.0 / gap) for i, w in enumerate(norm.get_weights())]
    )


def emittable(model, count):
    """`count` token ids (not the end token) that `emitting` can make the model predict."""
    embeddings = keras.ops.convert_to_numpy(model.backbone.token_embedding.embeddings)
    centred = embeddings - embeddings.mean(axis=0)
    found = [t for t in range(1, len(embeddings)) if (embeddings @ centred[t]).argmax() == t]
    assert len(found) >= count
    return found[:count]


class Emit(keras.callbacks.Callback):
    """Before each batch, makes the given models emit that batch's token."""

    def __init__(self, tokens_by_model):
        super().__init__()
        self.tokens_by_model = tokens_by_model

    def on_train_batch_begin(self, batch, logs=None):
        for model, tokens in self.tokens_by_model:
            emitting(model, tokens[batch])


def fit_emitting(policy, emit_teacher):
    teacher, student = models()
    student_tokens, teacher_tokens = emittable(student, 2), emittable(student, 4)[2:]
    emit = [(student, student_tokens)] + ([(teacher, teacher_tokens)] if emit_teacher else [])
    distiller = keras_kd.Distiller(teacher, student, alpha=1.0, on_policy=policy)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = distiller.fit(PROMPTS, batch_size=2, shuffle=False, verbose=0, callbacks=[Emit(emit)])
    # The labels are sampled completions: no "the teacher predicts n of the first batch's labels" warning.
    assert not [w for w in caught if "of the first batch" in str(w.message)]
    return history.history


def test_the_student_writes_with_its_weights_as_they_are_at_each_batch():
    # Each batch's student emits another token: only completions written after the change score ~0.
    logs = fit_emitting(keras_kd.OnPolicy(student_fraction=1.0, max_new_tokens=4, seed=0), emit_teacher=False)
    assert logs["hard_loss"][0] < 1e-3
    assert logs["on_policy_share"] == [1.0]
    assert logs["completion_length"] == [4.0]


def test_sequence_level_completions_come_from_the_teacher():
    logs = fit_emitting(
        keras_kd.OnPolicy(student_fraction=0.0, teacher_fraction=1.0, max_new_tokens=4, seed=0), emit_teacher=True
    )
    assert logs["hard_loss"][0] > 10.0  # the student emits other tokens than the teacher wrote
    assert logs["on_policy_share"] == [0.0]


def test_data_completions_reproduce_token_level_distillation():
    """`student_fraction=teacher_fraction=0`: the same step as a plain distiller on prompt + completion, prompt
    positions weighted 0."""
    teacher, student = models()
    _, plain_student = models()
    policy = keras_kd.OnPolicy(student_fraction=0.0, teacher_fraction=0.0, max_new_tokens=8)
    on_policy = keras_kd.Distiller(teacher, student, soft_loss="reverse_kl", alpha=0.3, on_policy=policy)
    on_policy.compile(optimizer=keras.optimizers.SGD(100.0))
    logs = on_policy.fit(PROMPTS[:2], COMPLETIONS[:2], batch_size=2, shuffle=False, verbose=0).history

    preprocessor = student.preprocessor
    x, y, weights = preprocessor([p + c for p, c in zip(PROMPTS[:2], COMPLETIONS[:2])])
    weights = keras.ops.convert_to_numpy(weights).astype("float32")
    for row, prompt in enumerate(PROMPTS[:2]):
        prompt_tokens = 1 + len(keras.ops.convert_to_numpy(preprocessor.tokenizer(prompt)))  # the start token too
        weights[row, : prompt_tokens - 1] = 0.0  # predictions of prompt tokens
    x = {key: keras.ops.convert_to_numpy(value) for key, value in x.items()}
    plain = keras_kd.Distiller(teacher, plain_student, soft_loss="reverse_kl", alpha=0.3)
    plain.compile(optimizer=keras.optimizers.SGD(100.0))
    plain_logs = plain.train_on_batch(x, keras.ops.convert_to_numpy(y), sample_weight=weights, return_dict=True)

    for key in ("loss", "soft_loss", "hard_loss"):
        np.testing.assert_allclose(logs[key][0], float(plain_logs[key]), rtol=1e-5, err_msg=key)
    assert logs["soft_loss"][0] > 0
    for a, b in zip(student.trainable_variables, plain_student.trainable_variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6)
    assert logs["completion_length"][0] == weights.sum(axis=1).mean()  # one weighted prediction per token


def test_the_mixture_fractions_hold_over_many_batches():
    policy = keras_kd.OnPolicy(student_fraction=0.3, teacher_fraction=0.5, seed=1)
    sources = [policy.next_source() for _ in range(4000)]
    for source, share in (("student", 0.3), ("teacher", 0.5), ("data", 0.2)):
        assert abs(sources.count(source) / len(sources) - share) < 0.03, source

    teacher, student = models()
    distiller = keras_kd.Distiller(
        teacher,
        student,
        on_policy=keras_kd.OnPolicy(student_fraction=0.5, teacher_fraction=0.25, max_new_tokens=3, seed=3),
    )
    distiller.compile(optimizer="sgd")
    prompts, completions = PROMPTS * 8, COMPLETIONS * 8
    logs = distiller.fit(prompts, completions, batch_size=1, verbose=0).history
    same_draws = keras_kd.OnPolicy(student_fraction=0.5, teacher_fraction=0.25, seed=3)
    expected = [same_draws.next_source() for _ in range(32)]
    assert logs["on_policy_share"][0] == expected.count("student") / 32
    assert 0.3 < logs["on_policy_share"][0] < 0.7
    assert logs["generation_seconds"][0] > 0 and logs["training_seconds"][0] > 0


def test_prompt_and_padding_positions_weigh_zero():
    from keras_kd.on_policy.sequences import completion_marks, training_batch

    prompt_mask = np.array([[1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]], bool)
    generated_mask = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]], bool)
    tokens = np.arange(14).reshape(2, 7)
    completion = completion_marks(generated_mask, prompt_mask)
    x, y, weights = training_batch({"token_ids": tokens, "padding_mask": generated_mask}, completion)
    np.testing.assert_array_equal(y, tokens[:, 1:])
    np.testing.assert_array_equal(x["token_ids"], tokens[:, :-1])
    # Position t predicts token t + 1: row 0's tokens 3 and 4 were generated, so positions 2 and 3 count.
    np.testing.assert_array_equal(weights, [[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]])


def test_on_policy_is_saved_and_loaded_in_a_fresh_process(tmp_path):
    teacher, student = models()
    policy = keras_kd.OnPolicy(
        student_fraction=0.5, teacher_fraction=0.2, max_new_tokens=5, temperature=0.7, top_p=0.9, seed=4
    )
    distiller = keras_kd.Distiller(teacher, student, soft_loss="reverse_kl", on_policy=policy)
    distiller.compile(optimizer="sgd")
    path = tmp_path / "on_policy.keras"
    distiller.save(path)
    code = (
        "import json, sys, keras, keras_kd\n"
        f"d = keras.saving.load_model({str(path)!r})\n"
        "print(json.dumps(d.on_policy.get_config()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == policy.get_config()
