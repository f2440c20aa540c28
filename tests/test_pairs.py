import keras
import numpy as np
import pytest
from conftest import toy_data

import keras_kd
from keras_kd.losses import attention_transfer_loss, cosine_embedding_loss, hint_loss


def cnn(filters, name, dropout=0.0, size=8):
    inputs = keras.Input((size, size, 1))
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="block1")(inputs)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="block2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="embedding")(h)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    outputs = keras.layers.Dense(3, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


def images(n=32, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, size, size, 1)).astype("float32"), rng.integers(0, 3, n)


def weights_of(layer):
    return [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]


def changed(before, layer):
    return any(not np.array_equal(a, b) for a, b in zip(before, weights_of(layer)))


def test_every_pair_kind_trains_and_logs_one_entry():
    x, y = images()
    teacher, student = cnn(8, "teacher"), cnn(4, "student")
    pairs = [
        keras_kd.Hint("block2", "block2"),
        keras_kd.AttentionTransfer([("block1", "block1"), ("block2", "block2")]),
        keras_kd.Relational("embedding", "embedding"),
        keras_kd.CosineEmbedding("logits", "logits"),
    ]
    distiller = keras_kd.Distiller(teacher, student, pairs=pairs).compile("adam")
    history = distiller.fit(x, y, validation_data=(x, y), batch_size=16, epochs=2, verbose=0)
    names = ["hint_loss", "attention_loss", "relational_loss", "cosine_loss"]
    assert distiller.pair_log_names == names
    for name in names + ["loss", "soft_loss", "hard_loss"]:
        assert np.isfinite(history.history[name]).all(), name
        assert f"val_{name}" in history.history


def test_logged_terms_add_up_to_the_loss_and_match_the_loss_functions():
    x, y = images(16)
    teacher, student = cnn(8, "teacher"), cnn(8, "student")
    pairs = [keras_kd.Hint("block1", "block1", weight=2.0), keras_kd.AttentionTransfer("block2", "block2")]
    distiller = keras_kd.Distiller(teacher, student, alpha=0.25, pairs=pairs).compile("adam")
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    expected = 0.25 * logs["hard_loss"] + 0.75 * logs["soft_loss"] + logs["hint_loss"] + logs["attention_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)

    def features(model, name):
        return keras.Model(model.inputs[0], model.get_layer(name).output)(x)

    hint = 2.0 * float(hint_loss(features(teacher, "block1"), features(student, "block1")))
    assert logs["hint_loss"] == pytest.approx(hint, rel=1e-5)
    attention = 1000.0 * float(attention_transfer_loss(features(teacher, "block2"), features(student, "block2")))
    assert logs["attention_loss"] == pytest.approx(attention, rel=1e-5)


def test_repeated_kinds_are_numbered_and_named_pairs_use_their_name():
    teacher, student = cnn(8, "teacher"), cnn(4, "student")
    pairs = [
        keras_kd.Hint("block1", "block1"),
        keras_kd.Hint("block2", "block2"),
        keras_kd.LayerPair("embedding", "embedding", loss=keras.losses.MeanAbsoluteError(), name="l1"),
    ]
    distiller = keras_kd.Distiller(teacher, cnn(8, "student"), pairs=pairs)
    assert distiller.pair_log_names == ["hint_loss_1", "hint_loss_2", "l1_loss"]
    del student


def test_custom_layer_pair_with_a_function_honours_sample_weights():
    x, y = toy_data(n=16)
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5, name="h"), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5, name="h"), keras.layers.Dense(3)])

    def squared(t, s):
        return keras.ops.sum((t - s) ** 2, axis=-1)

    distiller = keras_kd.Distiller(teacher, student, pairs=[keras_kd.LayerPair("h", "h", loss=squared)]).compile()
    weight = np.zeros(16, "float32")
    weight[:4] = 1.0
    logs = distiller.evaluate(x, y, sample_weight=weight, batch_size=16, verbose=0, return_dict=True)
    t, s = (keras.ops.convert_to_numpy(m.get_layer("h")(x)) for m in (teacher, student))
    expected = (((t - s) ** 2).sum(-1) * weight).mean()
    assert logs["pair_loss"] == pytest.approx(expected, rel=1e-5)


def test_pairs_reach_layers_inside_nested_models():
    x, y = images(16)
    inner = cnn(4, "inner")
    inputs = keras.Input((8, 8, 1))
    student = keras.Model(inputs, inner(inputs), name="wrapper")
    distiller = keras_kd.Distiller(cnn(8, "teacher"), student, pairs=[keras_kd.Hint("block2", "inner/block2")])
    before = weights_of(inner.get_layer("block2"))
    distiller.compile("adam").fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert changed(before, inner.get_layer("block2"))


class SubclassedStudent(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.features = keras.layers.Dense(6, activation="relu", name="features")
        self.logits = keras.layers.Dense(3, name="logits")

    def call(self, x, training=False):
        return self.logits(self.features(x))


def test_subclassed_students_are_captured_and_get_regressors():
    x, y = toy_data(n=32)
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(12, name="features"), keras.layers.Dense(3)])
    student = SubclassedStudent()
    student(x[:2])
    distiller = keras_kd.Distiller(teacher, student, pairs=[keras_kd.Hint("features", "features")])
    assert distiller.pairs[0].regressor.units == 12
    history = distiller.compile("adam").fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.isfinite(history.history["hint_loss"]).all()


@pytest.mark.parametrize(
    "student_size, kind",
    [(8, "conv1x1"), (12, "fitnets"), (4, "upsample")],
)
def test_automatic_regressors_for_feature_maps(student_size, kind):
    teacher = cnn(8, "teacher", size=8)
    student = cnn(3, "student", size=student_size)
    x = np.zeros((2, 8, 8, 1), "float32")
    del x
    distiller = keras_kd.Distiller(teacher, student, pairs=[keras_kd.Hint("block1", "block1")])
    regressor = distiller.pairs[0].regressor
    output = regressor(keras.ops.zeros((2, student_size, student_size, 3)))
    assert tuple(output.shape) == (2, 8, 8, 8)
    if kind == "fitnets":
        assert regressor.kernel_size == (5, 5)
    if kind == "conv1x1":
        assert regressor.kernel_size == (1, 1)


def test_regressors_exist_before_fit_train_with_the_student_and_stay_out_of_its_file(tmp_path):
    x, y = images(32)
    distiller = keras_kd.Distiller(cnn(8, "teacher"), cnn(4, "student"), pairs=[keras_kd.Hint("block2", "block2")])
    regressor = distiller.pairs[0].regressor
    assert regressor.built and all(any(v is w for w in distiller.trainable_variables) for v in regressor.weights)
    before = weights_of(regressor)
    distiller.compile("adam").fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert changed(before, regressor)
    distiller.student.save(tmp_path / "student.keras")
    reloaded = keras.saving.load_model(tmp_path / "student.keras")
    assert len(reloaded.weights) == len(distiller.student.weights)


def test_user_regressor_is_used_and_checked():
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(12, name="h"), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="h"), keras.layers.Dense(3)])
    projection = keras.layers.Dense(12, use_bias=False, name="my_projection")
    distiller = keras_kd.Distiller(teacher, student, pairs=[keras_kd.Hint("h", "h", regressor=projection)])
    assert distiller.pairs[0].regressor is projection
    with pytest.raises(ValueError, match=r"regressor 'too_narrow' maps the student's \(None, 4\) to \(None, 5\)"):
        keras_kd.Distiller(
            teacher, student, pairs=[keras_kd.Hint("h", "h", regressor=keras.layers.Dense(5, name="too_narrow"))]
        )


def test_distiller_with_pairs_saves_loads_and_fits_again(tmp_path):
    x, y = images(32)
    pairs = [
        keras_kd.Hint("block2", "block2"),
        keras_kd.AttentionTransfer([("block1", "block1")], p=1.5),
        keras_kd.Relational("embedding", "embedding", angle_weight=0.0),
        keras_kd.CosineEmbedding("logits", "logits", weight=0.5),
        keras_kd.LayerPair("logits", "logits", loss="mean_absolute_error", name="l1"),
    ]
    distiller = keras_kd.Distiller(cnn(8, "teacher"), cnn(4, "student"), pairs=pairs).compile("adam")
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert loaded.pair_log_names == ["hint_loss", "attention_loss", "relational_loss", "cosine_loss", "l1_loss"]
    assert loaded.pairs[1].p == 1.5
    assert (loaded.pairs[2].distance_weight, loaded.pairs[2].angle_weight) == (25.0, 0.0)
    assert loaded.pairs[3].weight == 0.5
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.pairs[0].regressor.kernel),
        keras.ops.convert_to_numpy(distiller.pairs[0].regressor.kernel),
    )
    expected = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    actual = loaded.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    for name in loaded.pair_log_names:
        assert actual[name] == pytest.approx(expected[name], rel=1e-5), name
    history = loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["hint_loss"]).all()


def test_cosine_term_leaves_out_padded_positions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 5)).astype("float32")
    y = rng.integers(0, 3, size=(4, 6))

    def sequence_model(name):
        inputs = keras.Input((6, 5))
        hidden = keras.layers.Dense(7, name="hidden")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3)(hidden), name=name)

    teacher, student = sequence_model("teacher"), sequence_model("student")
    distiller = keras_kd.Distiller(teacher, student, pairs=[keras_kd.CosineEmbedding("hidden", "hidden")]).compile()
    mask = np.ones((4, 6), "float32")
    mask[:, 4:] = 0.0
    logs = distiller.evaluate(x, y, sample_weight=mask, batch_size=4, verbose=0, return_dict=True)
    t, s = (keras.ops.convert_to_numpy(m.get_layer("hidden")(x)) for m in (teacher, student))
    assert logs["cosine_loss"] == pytest.approx(float(cosine_embedding_loss(t[:, :4], s[:, :4])), rel=1e-5)
    x_changed_padding = x.copy()
    x_changed_padding[:, 4:] = 100.0
    logs_changed = distiller.evaluate(
        x_changed_padding, y, sample_weight=mask, batch_size=4, verbose=0, return_dict=True
    )
    assert logs_changed["cosine_loss"] == pytest.approx(logs["cosine_loss"], rel=1e-5)


def test_hint_warmup_trains_only_up_to_the_hinted_layer_then_everything():
    x, y = images(32)
    teacher, student = cnn(8, "teacher"), cnn(4, "student")
    distiller = keras_kd.Distiller(teacher, student, pairs=[keras_kd.Hint("block1", "block1")])
    distiller.compile("adam", jit_compile=keras.backend.backend() != "torch")
    upstream, downstream = student.get_layer("block1"), student.get_layer("block2")
    regressor = distiller.pairs[0].regressor
    snapshots = [weights_of(layer) for layer in (upstream, downstream, regressor)]
    history = distiller.fit(
        x, y, batch_size=16, epochs=2, verbose=0, callbacks=[keras_kd.callbacks.HintWarmup(epochs=2)]
    )
    assert changed(snapshots[0], upstream) and changed(snapshots[2], regressor)
    assert not changed(snapshots[1], downstream)
    assert history.history["hint_warmup"] == [1.0, 1.0]
    assert distiller.hint_warmup == 0.0
    history = distiller.fit(
        x, y, batch_size=16, epochs=3, initial_epoch=2, verbose=0, callbacks=[keras_kd.callbacks.HintWarmup(epochs=2)]
    )
    assert history.history["hint_warmup"] == [0.0]
    assert changed(snapshots[1], downstream)


def test_pairs_reach_transformer_layers_of_a_kerashub_backbone():
    keras_hub = pytest.importorskip("keras_hub")

    def tiny_bert(layers):
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=50,
            num_layers=layers,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            max_sequence_length=12,
        )
        return keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=3, preprocessor=None)

    teacher, student = tiny_bert(4), tiny_bert(2)
    rng = np.random.default_rng(0)
    padding = np.ones((8, 12), "int32")
    padding[:, 9:] = 0
    x = {"token_ids": rng.integers(1, 50, (8, 12)), "segment_ids": np.zeros((8, 12), "int32"), "padding_mask": padding}
    y = rng.integers(0, 3, 8)
    pair = keras_kd.CosineEmbedding("backbone/transformer_layer_3", "backbone/transformer_layer_1")
    distiller = keras_kd.Distiller(teacher, student, pairs=[pair]).compile("adam")
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)

    def hidden(model, name):
        backbone = model.backbone
        return keras.Model(backbone.inputs, backbone.get_layer(name).output)(x)

    # The padding mask among the inputs keeps padded positions out of the cosine term.
    expected = cosine_embedding_loss(
        hidden(teacher, "transformer_layer_3"), hidden(student, "transformer_layer_1"), mask=padding
    )
    assert logs["cosine_loss"] == pytest.approx(float(expected), rel=1e-4)
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["cosine_loss"]).all()
