"""The bad-input catalogue, KerasHub models: tiny tasks built from config with in-memory vocabularies.

See `tests/test_bad_inputs.py` for the rules every test follows and `docs/bad_inputs.md` for the table.
"""

import pytest

keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("tensorflow")

from test_hub_text import (  # noqa: E402
    LABELS,
    TEXTS,
    WORDS,
    bert_classifier,
    bert_vocabulary,
    gpt2_causal_lm,
    gpt2_vocabulary,
)

import keras_kd  # noqa: E402
from keras_kd.hub import student_from_teacher  # noqa: E402


def test_a_causal_lm_student_with_another_vocabulary_size():
    teacher = gpt2_causal_lm(gpt2_vocabulary())
    student = gpt2_causal_lm(gpt2_vocabulary(WORDS[:5]), words=WORDS[:5])
    sizes = (len(gpt2_vocabulary()), len(gpt2_vocabulary(WORDS[:5])))
    with pytest.raises(
        ValueError,
        match=rf"The teacher '.*' has a vocabulary of {sizes[0]} tokens and the student '.*' one of {sizes[1]}.*build "
        "the student with the teacher's tokenizer and vocabulary_size",
    ):
        keras_kd.Distiller(teacher, student)


def test_a_causal_lm_student_whose_tokenizer_maps_ids_to_other_tokens():
    vocabulary = gpt2_vocabulary()
    tokens = list(vocabulary)
    shuffled = {token: i for i, token in enumerate([tokens[0], *reversed(tokens[1:])])}
    with pytest.raises(
        ValueError,
        match=r"map ids to different tokens \(first difference at id 1\).*give the student the teacher's preprocessor",
    ):
        keras_kd.Distiller(gpt2_causal_lm(vocabulary), gpt2_causal_lm(shuffled))


def test_raw_strings_for_a_student_task_without_a_preprocessor():
    teacher = bert_classifier(bert_vocabulary(), sequence_length=12)
    student = keras_hub.models.BertTextClassifier(
        student_from_teacher(teacher.backbone, 1), num_classes=3, preprocessor=None
    )
    distiller = keras_kd.Distiller(teacher, student).compile(optimizer="adam")
    with pytest.raises(
        ValueError, match=r"The student BertTextClassifier .* has no preprocessor.*Give the student task a preprocessor"
    ):
        distiller.fit(TEXTS, LABELS, epochs=1, verbose=0)


def test_raw_strings_for_a_teacher_classifier_without_a_preprocessor():
    student = bert_classifier(bert_vocabulary(), sequence_length=12)
    teacher = keras_hub.models.BertTextClassifier(
        student_from_teacher(student.backbone, 2), num_classes=3, preprocessor=None
    )
    distiller = keras_kd.Distiller(teacher, student).compile(optimizer="adam")
    with pytest.raises(
        ValueError, match=r"The teacher BertTextClassifier .* has no preprocessor.*Give the teacher task its"
    ):
        distiller.evaluate(TEXTS, LABELS, verbose=0)


def test_an_unknown_backbone_layer_lists_the_backbone_layers():
    teacher = bert_classifier(bert_vocabulary(), sequence_length=12)
    student = student_from_teacher(teacher, 1)
    with pytest.raises(ValueError) as error:
        keras_kd.Distiller(
            teacher,
            student,
            pairs=[keras_kd.CosineEmbedding("backbone/transformer_layer_7", "backbone/transformer_layer_0")],
        )
    message = str(error.value)
    assert "has no layer 'backbone/transformer_layer_7'" in message and "Name nested layers by their path" in message
    for name in ("transformer_layer_0", "transformer_layer_1", "token_embedding"):
        assert name in message
