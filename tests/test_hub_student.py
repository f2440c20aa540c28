import functools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from keras_kd.hub import student_from_teacher  # noqa: E402
from keras_kd.hub.student import default_layers  # noqa: E402

TINY = dict(vocabulary_size=60, num_layers=4, hidden_dim=16, intermediate_dim=32)


def bert(**kwargs):
    return keras_hub.models.BertBackbone(**TINY, num_heads=2, max_sequence_length=16, **kwargs)


def gpt2(**kwargs):
    return keras_hub.models.GPT2Backbone(**TINY, num_heads=2, max_sequence_length=16, **kwargs)


def llama3(**kwargs):
    return keras_hub.models.Llama3Backbone(**TINY, num_query_heads=2, num_key_value_heads=1, **kwargs)


def llama_tied(**kwargs):
    return keras_hub.models.LlamaBackbone(
        **TINY, num_query_heads=2, num_key_value_heads=1, tie_word_embeddings=True, **kwargs
    )


BACKBONES = {"bert": bert, "gpt2": gpt2, "llama3": llama3, "llama_tied": llama_tied}


@functools.cache
def shared_teacher(family):
    """One teacher per family for the tests that only read it (building models dominates this file's time)."""
    return BACKBONES[family]()


# The layers with weights outside the transformer stack, per family.
OTHER_LAYERS = {
    "bert": ["token_embedding", "position_embedding", "segment_embedding", "embeddings_layer_norm", "pooled_dense"],
    "gpt2": ["token_embedding", "position_embedding", "layer_norm"],
    "llama3": ["token_embedding", "sequence_output_layernorm"],
    "llama_tied": ["token_embedding", "sequence_output_layernorm"],
}


def token_inputs(backbone, batch=2, length=8):
    rng = np.random.default_rng(1)
    inputs = {
        "token_ids": rng.integers(1, 60, size=(batch, length)).astype("int32"),
        "padding_mask": np.ones((batch, length), "int32"),
    }
    inputs["padding_mask"][0, -2:] = 0
    if "segment_ids" in backbone.input:
        inputs["segment_ids"] = np.zeros((batch, length), "int32")
    return inputs


def assert_same_weights(student_layer, teacher_layer):
    student_weights, teacher_weights = student_layer.get_weights(), teacher_layer.get_weights()
    assert len(student_weights) == len(teacher_weights) > 0
    for s, t in zip(student_weights, teacher_weights):
        np.testing.assert_array_equal(s, t)


def assert_stack_copied(student, teacher, layers):
    for i, index in enumerate(layers):
        student_layer = student.get_layer(f"transformer_layer_{i}")
        assert_same_weights(student_layer, teacher.get_layer(f"transformer_layer_{index}"))


def layer_output(backbone, index, inputs):
    layer = backbone.get_layer(f"transformer_layer_{index}")
    return keras.ops.convert_to_numpy(keras.Model(backbone.input, layer.output)(inputs))


def test_default_layers_rule():
    assert default_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert default_layers(24, 6) == [0, 4, 8, 12, 16, 20]
    assert default_layers(12, 5) == [0, 2, 4, 7, 9]
    assert default_layers(4, 3) == [0, 1, 2]
    assert default_layers(4, 1) == [0]
    assert default_layers(5, 5) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_backbone_student_copies_embeddings_chosen_layers_norms_and_computes_the_same(family):
    teacher = shared_teacher(family)
    student = student_from_teacher(teacher, 2)

    assert type(student) is type(teacher)
    assert student.num_layers == 2 and student.get_config()["num_layers"] == 2
    assert student.trainable and student.name == f"{teacher.name}_student"
    expected = {k: v for k, v in teacher.get_config().items() if k not in ("num_layers", "name")}
    if family.startswith("llama"):  # the student's config also holds what LlamaBackbone.get_config forgets
        expected["tie_word_embeddings"] = teacher.tie_word_embeddings
    assert {k: v for k, v in student.get_config().items() if k not in ("num_layers", "name")} == expected
    per_layer = teacher.get_layer("transformer_layer_0").count_params()
    assert student.count_params() == teacher.count_params() - 2 * per_layer

    assert_stack_copied(student, teacher, [0, 2])  # 4 -> 2: every other layer
    for name in OTHER_LAYERS[family]:
        assert_same_weights(student.get_layer(name), teacher.get_layer(name))
    tied = student.get_layer("token_embedding").tie_weights
    assert tied == teacher.get_layer("token_embedding").tie_weights == (family != "llama3")
    if family == "llama3":  # the untied LM head lives in the token embedding
        assert len(student.get_layer("token_embedding").weights) == 2

    # With layers=[0, 1] the student's first two layers are the teacher's: same hidden states.
    student = student_from_teacher(teacher, 2, layers=[0, 1])
    inputs = token_inputs(teacher)
    expected = layer_output(teacher, 1, inputs)
    np.testing.assert_allclose(layer_output(student, 1, inputs), expected, atol=1e-5, rtol=1e-5)


def test_explicit_layers_full_depth_and_frozen_teacher():
    teacher = shared_teacher("gpt2")
    student = student_from_teacher(teacher, 3, layers=[1, 2, 3])
    assert_stack_copied(student, teacher, [1, 2, 3])
    copy = student_from_teacher(teacher, np.int64(4))
    inputs = token_inputs(teacher)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(copy(inputs)), keras.ops.convert_to_numpy(teacher(inputs)), atol=1e-6
    )

    frozen = gpt2()
    frozen.trainable = False
    student = student_from_teacher(frozen, 1)
    assert student.trainable and len(student.trainable_weights) == len(student.weights)


def test_bert_classifier_student_keeps_head_and_arguments():
    teacher = keras_hub.models.BertTextClassifier(shared_teacher("bert"), num_classes=3, preprocessor=None, dropout=0.2)
    student = student_from_teacher(teacher, 2)
    assert type(student) is keras_hub.models.BertTextClassifier
    assert student.backbone.num_layers == 2 and student.backbone.name == teacher.backbone.name
    assert student.preprocessor is None
    config, teacher_config = student.get_config(), teacher.get_config()
    for key in ("num_classes", "activation", "dropout"):
        assert config[key] == teacher_config[key]
    assert_same_weights(student.get_layer("logits"), teacher.get_layer("logits"))
    assert_same_weights(student.backbone.get_layer("pooled_dense"), teacher.backbone.get_layer("pooled_dense"))
    inputs = token_inputs(teacher.backbone)
    assert keras.ops.shape(student(inputs)) == keras.ops.shape(teacher(inputs)) == (2, 3)
    # All four layers: the student is the teacher, head included.
    full = student_from_teacher(teacher, 4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(full(inputs)), keras.ops.convert_to_numpy(teacher(inputs)), atol=1e-6
    )


@pytest.mark.parametrize(
    "task_class, family",
    [("GPT2CausalLM", "gpt2"), ("Llama3CausalLM", "llama3"), ("LlamaCausalLM", "llama_tied")],
)
def test_causal_lm_student(task_class, family):
    cls = getattr(keras_hub.models, task_class)
    teacher = cls(shared_teacher(family), preprocessor=None)
    student = student_from_teacher(teacher, 2)
    assert type(student) is cls and student.backbone.num_layers == 2
    assert_same_weights(student.backbone.get_layer("token_embedding"), teacher.backbone.get_layer("token_embedding"))
    inputs = token_inputs(teacher.backbone)
    logits = student(inputs)
    assert keras.ops.shape(logits) == keras.ops.shape(teacher(inputs)) == (2, 8, 60)
    full = student_from_teacher(teacher, 4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(full(inputs)), keras.ops.convert_to_numpy(teacher(inputs)), atol=1e-5
    )


def test_a_tied_llama_student_keeps_its_tie_through_save_to_preset_and_save(tmp_path):
    # KerasHub 0.32's LlamaBackbone.get_config forgets tie_word_embeddings: rebuilt from its files, a tied
    # student would come back untied, and fail to load its weights.
    teacher = keras_hub.models.LlamaCausalLM(shared_teacher("llama_tied"), preprocessor=None)
    student = student_from_teacher(teacher, 2)
    assert student.backbone.get_config()["tie_word_embeddings"] is True
    assert type(student.backbone).get_config is keras_hub.models.LlamaBackbone.get_config  # the class is KerasHub's
    inputs = token_inputs(teacher.backbone)
    student.save_to_preset(str(tmp_path / "preset"))
    student.save(tmp_path / "student.keras")
    for restored in (
        keras_hub.models.CausalLM.from_preset(str(tmp_path / "preset")),
        keras.saving.load_model(tmp_path / "student.keras"),
    ):
        assert type(restored) is keras_hub.models.LlamaCausalLM and restored.backbone.tie_word_embeddings
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(restored(inputs)), keras.ops.convert_to_numpy(student(inputs)), atol=1e-6
        )


def test_task_with_a_preprocessor_shares_it_and_predicts_strings():
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "few", "words", "more", "text"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)
    teacher = keras_hub.models.BertTextClassifier(shared_teacher("bert"), num_classes=3, preprocessor=preprocessor)
    student = student_from_teacher(teacher, 2)
    assert student.preprocessor is teacher.preprocessor
    predictions = student.predict(["a few words"], verbose=0)
    assert predictions.shape == (1, 3) and np.all(np.isfinite(predictions))


RELOAD_SCRIPT = r"""
import json, sys, warnings
import keras
import keras_kd  # registers the serializable classes

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    distiller = keras.saving.load_model(sys.argv[1])
texts = json.loads(sys.argv[2])
out = {
    "warnings": [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)],
    "shared": distiller.student.preprocessor is distiller.teacher.preprocessor,
    "student": distiller.predict(texts, verbose=0).tolist(),
    "teacher": distiller.teacher.predict(texts, verbose=0).tolist(),
}
print("RESULT" + json.dumps(out))
"""


def test_distiller_of_a_student_sharing_the_preprocessor_reloads_in_a_fresh_process(tmp_path):
    # The README's KerasHub recipe (issue 17): a fine-tuned task teacher, student_from_teacher sharing its
    # preprocessor. Keras saves the shared tokenizer's vocabulary once and loses the sharing in the nested
    # configs, so a second tokenizer used to load without a vocabulary ("expected str ... not NoneType"); and
    # the fine-tuned teacher's own optimizer state used to load with "Skipping variable loading for optimizer".
    pytest.importorskip("tensorflow")  # KerasHub's tokenizers
    import keras_kd

    words = ["the", "match", "ended", "in", "a", "draw", "shares", "fell", "after", "results", "film", "won"]
    texts = ["the match ended in a draw", "shares fell after results", "the film won", "a draw after the match"]
    labels = np.array([0, 1, 2, 0])
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=12)
    teacher = keras_hub.models.BertTextClassifier(bert(), num_classes=3, preprocessor=preprocessor)
    teacher.optimizer.build(teacher.trainable_variables)  # as fine-tuning the teacher with its own fit does
    assert len(teacher.optimizer.variables) > 2
    student = student_from_teacher(teacher, num_layers=1)
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5)
    distiller.compile(optimizer="adam")
    distiller.train_on_batch(texts, labels)
    path = tmp_path / "distiller.keras"
    distiller.save(path)

    run = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(path), json.dumps(texts)],
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT") :])
    assert result["shared"]
    assert not [w for w in result["warnings"] if "optimizer" in w], result["warnings"]
    np.testing.assert_allclose(result["student"], distiller.predict(texts, verbose=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["teacher"], teacher.predict(texts, verbose=0), rtol=1e-5, atol=1e-5)


# --- errors -----------------------------------------------------------------------------------


def test_num_layers_errors():
    teacher = shared_teacher("bert")
    for num_layers in (0, -1, 5):
        with pytest.raises(ValueError, match=rf"between 1 and the teacher's 4 transformer layers, got {num_layers}"):
            student_from_teacher(teacher, num_layers)
    with pytest.raises(TypeError, match="num_layers must be an integer, got '2'"):
        student_from_teacher(teacher, "2")
    with pytest.raises(TypeError, match="num_layers must be an integer, got 2.0"):
        student_from_teacher(teacher, 2.0)


def test_layers_errors():
    teacher = shared_teacher("bert")
    cases = [
        ([0], r"num_layers=2 but layers=\[0\] has 1\. Pass 2 indices, e\.g\. layers=\[0, 2\]"),
        ([0, 1, 2], r"layers=\[0, 1, 2\] has 3"),
        ([0, 4], r"layers=\[0, 4\] has indices \[4\] outside the teacher's layers 0 to 3"),
        ([-1, 2], r"indices \[-1\] outside"),
        ([1, 1], r"layers=\[1, 1\] must be strictly increasing \(no repeats\)"),
        ([2, 0], r"layers=\[2, 0\] must be strictly increasing.*layers=\[0, 2\]"),
    ]
    for layers, message in cases:
        with pytest.raises(ValueError, match=message):
            student_from_teacher(teacher, 2, layers=layers)
    with pytest.raises(TypeError, match="integer teacher layer indices"):
        student_from_teacher(teacher, 2, layers=[0, 1.5])
    with pytest.raises(TypeError, match="list of teacher layer indices"):
        student_from_teacher(teacher, 2, layers="02")


class NoDepthBackbone(keras_hub.models.Backbone):
    def __init__(self, **kwargs):
        inputs = keras.Input((4,), name="features")
        super().__init__(inputs, keras.layers.Dense(2, name="dense")(inputs), **kwargs)


class BlockBackbone(keras_hub.models.Backbone):
    def __init__(self, num_layers=2, **kwargs):
        inputs = keras.Input((4,), name="features")
        x = inputs
        for i in range(num_layers):
            x = keras.layers.Dense(4, name=f"block_{i}")(x)
        super().__init__(inputs, x, **kwargs)
        self.num_layers = num_layers

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers}


def test_models_that_are_not_supported():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="needs a KerasHub Backbone or Task.*got Sequential 'plain'"):
        student_from_teacher(model, 1)
    with pytest.raises(ValueError, match=r"NoDepthBackbone 'no_depth' has no integer `num_layers` in its config"):
        student_from_teacher(NoDepthBackbone(name="no_depth"), 1)
    with pytest.raises(ValueError, match=r"has num_layers=2 but no layer named 'transformer_layer_0'.*block_0"):
        student_from_teacher(BlockBackbone(), 1)


class ExtraArgClassifier(keras_hub.models.BertTextClassifier):
    """Its get_config forgets a required argument, so it cannot be rebuilt from it."""

    def __init__(self, backbone, num_classes, extra, **kwargs):
        super().__init__(backbone, num_classes, **kwargs)
        self._extra = extra


def test_task_that_cannot_be_rebuilt():
    teacher = ExtraArgClassifier(shared_teacher("bert"), 3, extra=object(), preprocessor=None)
    with pytest.raises(ValueError, match=r"Cannot rebuild the task class ExtraArgClassifier.*'extra'"):
        student_from_teacher(teacher, 2)
