"""The bad-input catalogue, `Distiller(..., on_policy=keras_kd.OnPolicy(...))`: tiny KerasHub GPT-2 models.

See `tests/test_bad_inputs.py` for the rules every test follows and `docs/bad_inputs.md` for the table.
"""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from test_hub_text import WORDS, gpt2_causal_lm, gpt2_vocabulary  # noqa: E402
from test_on_policy import PROMPTS, SEQUENCE_LENGTH, models  # noqa: E402

import keras_kd  # noqa: E402


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(student_fraction=1.5), r"student_fraction must be a number in \[0, 1\].*got 1.5"),
        (dict(teacher_fraction=-0.1), r"teacher_fraction must be a number in \[0, 1\].*got -0.1"),
        (dict(student_fraction="half"), r"student_fraction must be a number in \[0, 1\].*got 'half'"),
    ],
)
def test_an_on_policy_fraction_outside_zero_one(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_kd.OnPolicy(**kwargs)


def test_on_policy_fractions_that_sum_above_one():
    with pytest.raises(
        ValueError, match=r"student_fraction \+ teacher_fraction must be at most 1, got 0.7 \+ 0.5 = 1.2"
    ):
        keras_kd.OnPolicy(student_fraction=0.7, teacher_fraction=0.5)


@pytest.mark.parametrize("bad", [0, -4, 2.5, None])
def test_max_new_tokens_below_one_or_not_an_int(bad):
    with pytest.raises(ValueError, match=rf"max_new_tokens must be an int >= 1.*got {bad!r}"):
        keras_kd.OnPolicy(max_new_tokens=bad)


@pytest.mark.parametrize(
    "kwargs, message", [(dict(temperature=0.0), "temperature must be"), (dict(top_p=1.5), "top_p")]
)
def test_a_sampling_temperature_or_top_p_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_kd.OnPolicy(**kwargs)


def test_on_policy_that_is_not_an_on_policy_object():
    teacher, student = models()
    with pytest.raises(TypeError, match=r"on_policy must be a keras_kd.OnPolicy \(or None\), got \{'student_fraction"):
        keras_kd.Distiller(teacher, student, on_policy={"student_fraction": 1.0})


def test_on_policy_with_a_teacher_cache(tmp_path):
    teacher, student = models()
    tokens = teacher.preprocessor(PROMPTS)[0]
    x = {key: keras.ops.convert_to_numpy(value) for key, value in tokens.items()}
    cache = keras_kd.TeacherCache.build(teacher, x, tmp_path / "cache", top_k=4, verbose=0)
    with pytest.raises(
        ValueError, match=r"on_policy needs a teacher model, not a TeacherCache.*Pass the teacher CausalLM"
    ):
        keras_kd.Distiller(cache, student, on_policy=keras_kd.OnPolicy())


def test_on_policy_for_models_that_are_not_causal_lms():
    classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="classifier")
    teacher, _ = models()
    with pytest.raises(ValueError, match=r"on_policy takes KerasHub CausalLM models; the student 'classifier' is a"):
        keras_kd.Distiller(teacher, classifier, on_policy=keras_kd.OnPolicy())


def test_on_policy_for_models_whose_vocabularies_differ():
    teacher = gpt2_causal_lm(gpt2_vocabulary())
    student = gpt2_causal_lm(gpt2_vocabulary(WORDS[:5]), words=WORDS[:5])
    with pytest.raises(ValueError, match=r"has a vocabulary of \d+ tokens and the student .* one of \d+"):
        keras_kd.Distiller(teacher, student, on_policy=keras_kd.OnPolicy(max_new_tokens=4))


def test_on_policy_for_a_student_without_a_preprocessor():
    teacher, student = models()
    student.preprocessor = None
    with pytest.raises(
        ValueError, match=r"tokenizes the prompts with the student's preprocessor, but the student .* none"
    ):
        keras_kd.Distiller(teacher, student, on_policy=keras_kd.OnPolicy())


def test_max_new_tokens_that_leave_no_room_for_a_prompt():
    teacher, student = models()
    with pytest.raises(ValueError, match=rf"max_new_tokens={SEQUENCE_LENGTH} leaves no room for a prompt"):
        keras_kd.Distiller(teacher, student, on_policy=keras_kd.OnPolicy(max_new_tokens=SEQUENCE_LENGTH))


def test_a_prompt_longer_than_the_sequence_length_minus_max_new_tokens():
    teacher, student = models()
    distiller = keras_kd.Distiller(teacher, student, on_policy=keras_kd.OnPolicy(max_new_tokens=8)).compile("sgd")
    with pytest.raises(
        ValueError,
        match=r"A prompt takes \d+ tokens .* sequence_length=12 and max_new_tokens=8 leaves 4 for the prompt.*"
        r"sequence_length = \d+",
    ):
        distiller.fit(["the match ended in a draw after results"], verbose=0)


def test_supervised_batches_without_completions():
    teacher, student = models()
    policy = keras_kd.OnPolicy(student_fraction=0.5, max_new_tokens=4)
    distiller = keras_kd.Distiller(teacher, student, on_policy=policy).compile("sgd")
    with pytest.raises(ValueError, match=r"for a share of 0.5 of the batches, but fit got prompts only.*completions"):
        distiller.fit(PROMPTS, verbose=0)


def test_on_policy_fit_with_token_ids_instead_of_prompts():
    teacher, student = models()
    distiller = keras_kd.Distiller(teacher, student, on_policy=keras_kd.OnPolicy(max_new_tokens=4)).compile("sgd")
    with pytest.raises(ValueError, match=r"fit with on_policy takes prompts as raw strings.*got dict"):
        distiller.fit({"token_ids": np.zeros((2, 12), "int32")}, verbose=0)


def test_on_policy_fit_with_validation_data():
    teacher, student = models()
    distiller = keras_kd.Distiller(teacher, student, on_policy=keras_kd.OnPolicy(max_new_tokens=4)).compile("sgd")
    with pytest.raises(ValueError, match=r"fit\(validation_data=...\) is not supported with on_policy"):
        distiller.fit(PROMPTS, validation_data=PROMPTS, verbose=0)
