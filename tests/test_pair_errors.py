"""Misconfigured pairs fail at construction (or the first batch) naming the layers, the shapes and the fix."""

import keras
import numpy as np
import pytest

import keras_kd


def vector_model(name, width=8):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(width, name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h), name=name)


def map_model(name, filters=4):
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(filters, 3, padding="same", name="conv")(inputs)
    h = keras.layers.Flatten(name="flat")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h), name=name)


def test_unknown_layer_names_list_the_closest_ones():
    with pytest.raises(ValueError, match=r"student model 'student' has no layer 'hiden'.*'hidden'"):
        keras_kd.Distiller(vector_model("teacher"), vector_model("student"), pairs=[keras_kd.Hint("hidden", "hiden")])
    with pytest.raises(ValueError, match=r"teacher model 'teacher' has no layer 'block9'"):
        keras_kd.Distiller(vector_model("teacher"), vector_model("student"), pairs=[keras_kd.Hint("block9", "hidden")])


def test_hint_between_ranks_that_cannot_be_reconciled():
    with pytest.raises(ValueError, match=r"Hint\(teacher 'conv', student 'hidden'\).*\(None, 6, 6, 4\).*\(None, 8\)"):
        keras_kd.Distiller(map_model("teacher"), vector_model("student"), pairs=[keras_kd.Hint("conv", "hidden")])


def test_attention_transfer_refuses_vectors():
    with pytest.raises(ValueError, match=r"rank >= 3.*teacher's output is \(None, 8\).*Hint or Relational"):
        keras_kd.Distiller(
            vector_model("teacher"), vector_model("student"), pairs=[keras_kd.AttentionTransfer("hidden", "hidden")]
        )


def test_cosine_needs_equal_widths_and_points_to_hint():
    with pytest.raises(ValueError, match=r"teacher's is \(None, 8\) and the student's \(None, 5\).*use Hint"):
        keras_kd.Distiller(
            vector_model("teacher"),
            vector_model("student", width=5),
            pairs=[keras_kd.CosineEmbedding("hidden", "hidden")],
        )


def test_relational_kd_with_batch_size_one_is_refused():
    distiller = keras_kd.Distiller(
        vector_model("teacher"), vector_model("student"), pairs=[keras_kd.Relational("hidden", "hidden")]
    ).compile()
    x, y = np.zeros((3, 4), "float32"), np.zeros(3, "int64")
    with pytest.raises(ValueError, match="batch size 1"):
        distiller.fit(x, y, batch_size=1, epochs=1, verbose=0)


def test_pairs_must_be_layer_pairs_and_weights_valid():
    with pytest.raises(TypeError, match=r"pairs must be a list of keras_kd.LayerPair objects, got Hint"):
        keras_kd.Distiller(vector_model("teacher"), vector_model("student"), pairs=keras_kd.Hint("hidden", "hidden"))
    with pytest.raises(TypeError, match=r"pairs must hold keras_kd.LayerPair"):
        keras_kd.Distiller(vector_model("teacher"), vector_model("student"), pairs=[("hidden", "hidden")])
    with pytest.raises(ValueError, match=r"weight must be a finite number >= 0, got -1"):
        keras_kd.Hint("hidden", "hidden", weight=-1)
    with pytest.raises(ValueError, match="both 0"):
        keras_kd.Relational("hidden", "hidden", distance_weight=0, angle_weight=0)
    with pytest.raises(ValueError, match="LayerPair needs a loss"):
        keras_kd.LayerPair("hidden", "hidden")
    with pytest.raises(ValueError, match=r"regressor must be 'auto', None or a keras layer"):
        keras_kd.Hint("hidden", "hidden", regressor="linear")


def test_regressor_none_requires_equal_shapes():
    with pytest.raises(ValueError, match=r"differ and regressor=None"):
        keras_kd.Distiller(
            vector_model("teacher"),
            vector_model("student", width=5),
            pairs=[keras_kd.Hint("hidden", "hidden", regressor=None)],
        )


def test_scalar_custom_loss_without_sample_weight_is_refused_when_weights_are_given():
    def scalar_mse(t, s):
        return keras.ops.mean((t - s) ** 2)

    distiller = keras_kd.Distiller(
        vector_model("teacher"), vector_model("student"), pairs=[keras_kd.LayerPair("hidden", "hidden", scalar_mse)]
    ).compile()
    x, y = np.zeros((4, 4), "float32"), np.zeros(4, "int64")
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"returns a scalar and takes no sample_weight"):
        distiller.fit(x, y, sample_weight=np.ones(4), batch_size=4, epochs=1, verbose=0)
