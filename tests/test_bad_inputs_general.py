"""The bad-input catalogue, feature-only (general) distillation: `Distiller(..., soft_loss=None, pairs=[...])`.

See `tests/test_bad_inputs.py` for the rules every test follows and `docs/bad_inputs.md` for the table.
"""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from test_general_distillation import backbone, tokens  # noqa: E402
from test_hub_text import TEXTS  # noqa: E402

import keras_kd  # noqa: E402

COSINE = keras_kd.CosineEmbedding


def test_soft_loss_none_without_pairs():
    with pytest.raises(ValueError, match=r"soft_loss=None .* but pairs is \(\), so there would be nothing to train on"):
        keras_kd.Distiller(backbone(2), backbone(1, seed=1), soft_loss=None)


def test_an_unknown_output_key_lists_the_models_outputs():
    with pytest.raises(
        ValueError,
        match=r"has no layer 'sentence_embedding'.*The student also returns the outputs "
        r"\['pooled_output', 'sequence_output'\], which a pair can name",
    ):
        keras_kd.Distiller(
            backbone(2), backbone(1, seed=1), soft_loss=None, pairs=[COSINE("sequence_output", "sentence_embedding")]
        )


def test_alpha_with_soft_loss_none():
    with pytest.raises(ValueError, match=r"alpha=0.5 with soft_loss=None: alpha mixes the hard-label term"):
        keras_kd.Distiller(
            backbone(2),
            backbone(1, seed=1),
            soft_loss=None,
            alpha=0.5,
            pairs=[COSINE("pooled_output", "pooled_output")],
        )


def test_an_embedding_pair_across_widths_without_a_regressor():
    with pytest.raises(
        ValueError,
        match=r"CosineEmbedding\(teacher 'sequence_output', student 'sequence_output'\): the cosine term compares "
        r"vectors of equal width, but the teacher's output is \(None, 16\) and the student's \(None, 8\), and "
        r"regressor=None\. Pass regressor='auto'",
    ):
        keras_kd.Distiller(
            backbone(2, hidden_dim=16),
            backbone(1, hidden_dim=8, seed=1),
            soft_loss=None,
            pairs=[COSINE("sequence_output", "sequence_output", pooling="mean")],
        )


def test_labels_given_to_feature_only_distillation():
    distiller = keras_kd.Distiller(
        backbone(2), backbone(1, seed=1), soft_loss=None, pairs=[COSINE("pooled_output", "pooled_output")]
    ).compile("sgd")
    with pytest.raises(ValueError, match=r"soft_loss=None .* but the batch has labels of shape \(4,\).*dataset.map"):
        distiller.fit(tokens(8), np.zeros(8, "int32"), batch_size=4, verbose=0)


def test_pooling_an_output_that_is_not_a_sequence():
    with pytest.raises(
        ValueError,
        match=r"pooling='mean' pools hidden states of shape \(batch, positions, width\).*the teacher's "
        r"'pooled_output' is \(None, 16\)",
    ):
        keras_kd.Distiller(
            backbone(2),
            backbone(1, seed=1),
            soft_loss=None,
            pairs=[COSINE("pooled_output", "pooled_output", pooling="mean")],
        )


def test_an_unknown_pooling_mode():
    with pytest.raises(ValueError, match=r"CosineEmbedding\(pooling='max'\): pooling is None .* 'mean' .* 'first'"):
        COSINE("sequence_output", "sequence_output", pooling="max")


def test_raw_strings_for_backbones_without_a_preprocessor():
    distiller = keras_kd.Distiller(
        backbone(2), backbone(1, seed=1), soft_loss=None, pairs=[COSINE("pooled_output", "pooled_output")]
    ).compile("sgd")
    with pytest.raises(ValueError, match=r"has no preprocessor.*Distiller\(\.\.\., preprocessor=\.\.\.\)"):
        distiller.fit(TEXTS, batch_size=3, verbose=0)


def test_a_preprocessor_that_is_not_callable():
    with pytest.raises(TypeError, match=r"preprocessor must be a KerasHub preprocessor .*got 'bert'"):
        keras_kd.Distiller(
            backbone(2),
            backbone(1, seed=1),
            soft_loss=None,
            pairs=[COSINE("pooled_output", "pooled_output")],
            preprocessor="bert",
        )


@pytest.mark.parametrize("name, value", [("temperature", 2.0), ("alpha", 0.0), ("soft_loss_warmup", 1.0)])
def test_setting_a_soft_term_setting_on_a_feature_only_distiller(name, value):
    distiller = keras_kd.Distiller(
        backbone(2), backbone(1, seed=1), soft_loss=None, pairs=[COSINE("pooled_output", "pooled_output")]
    )
    with pytest.raises(ValueError, match=rf"distiller.{name} = {value!r}: this distiller has soft_loss=None"):
        setattr(distiller, name, value)
    assert keras.ops.convert_to_numpy(distiller._variables.alpha) == 0.0
