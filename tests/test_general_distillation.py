"""Feature-only (general) distillation: `Distiller(..., soft_loss=None, pairs=[...])` on tiny KerasHub backbones.

Backbones return dicts (`sequence_output`, `pooled_output`) and no logits; the data has no labels. Pairs
name the models' output keys or layers, optionally pooled over the padding mask.
"""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from backend_grad import gradient

keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("tensorflow")

from test_hub_text import TEXTS, bert_vocabulary  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.features import pool  # noqa: E402

SEQUENCE_LENGTH = 8


def backbone(num_layers=2, hidden_dim=16, seed=0):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=len(bert_vocabulary()),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=SEQUENCE_LENGTH,
    )


def preprocessor():
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=bert_vocabulary())
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)


def tokens(n=12, seed=0):
    """Token dicts with padding: row i has 3 + i % 5 real tokens."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(5, len(bert_vocabulary()), size=(n, SEQUENCE_LENGTH)).astype("int32")
    mask = (np.arange(SEQUENCE_LENGTH)[None, :] < (3 + np.arange(n) % 5)[:, None]).astype("int32")
    return {"token_ids": token_ids * mask, "segment_ids": np.zeros_like(token_ids), "padding_mask": mask}


def numpy_of(values):
    return {key: keras.ops.convert_to_numpy(value) for key, value in values.items()}


def masked_mean(hidden, mask):
    mask = mask.astype("float64")[..., None]
    return (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)


def sentence_pairs():
    return [
        keras_kd.CosineEmbedding("sequence_output", "sequence_output", pooling="mean"),
        keras_kd.Relational("sequence_output", "sequence_output", pooling="mean", angle_weight=0.0),
        keras_kd.Hint("pooled_output", "pooled_output"),
    ]


def test_feature_only_fit_is_label_free_moves_the_student_and_logs_the_pair_terms():
    teacher, student = backbone(2, seed=0), backbone(1, seed=1)
    teacher_before = [keras.ops.convert_to_numpy(v) for v in teacher.weights]
    student_before = [keras.ops.convert_to_numpy(v) for v in student.trainable_weights]
    distiller = keras_kd.Distiller(teacher, student, soft_loss=None, pairs=sentence_pairs())
    assert distiller.feature_only and distiller.alpha == 0.0
    history = distiller.compile(optimizer=keras.optimizers.Adam(1e-2)).fit(tokens(), batch_size=4, epochs=2, verbose=0)
    assert sorted(history.history) == ["cosine_loss", "hint_loss", "loss", "relational_loss"]
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = [keras.ops.convert_to_numpy(v) for v in student.trainable_weights]
    moved = [not np.allclose(b, a) for b, a in zip(student_before, after)]
    assert sum(moved) > len(moved) // 2
    for before, variable in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(variable))


def test_call_and_predict_return_the_students_dict_outputs():
    teacher, student = backbone(2, seed=0), backbone(1, seed=1)
    distiller = keras_kd.Distiller(teacher, student, soft_loss=None, pairs=sentence_pairs())
    x = tokens(8)
    expected = numpy_of(student(x))
    predicted = distiller.predict(x, batch_size=4, verbose=0)
    assert sorted(predicted) == ["pooled_output", "sequence_output"]
    for key in expected:
        np.testing.assert_allclose(predicted[key], expected[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(numpy_of(distiller(x))[key], expected[key], rtol=1e-5, atol=1e-6)


def test_output_pairs_compare_exactly_the_models_outputs():
    """Each term against NumPy on the models' own outputs: mean-pooled MSE, pooled cosine, pooled_output MSE."""
    teacher, student = backbone(2, seed=0), backbone(2, seed=1)
    pairs = [
        keras_kd.Hint("sequence_output", "sequence_output", pooling="mean"),
        keras_kd.CosineEmbedding("sequence_output", "sequence_output", pooling="mean"),
        keras_kd.LayerPair("pooled_output", "pooled_output", loss="mse", name="pooled"),
    ]
    distiller = keras_kd.Distiller(teacher, student, soft_loss=None, pairs=pairs).compile("sgd")
    x = tokens(8)
    logs = distiller.evaluate(x, batch_size=8, verbose=0, return_dict=True)
    t, s = numpy_of(teacher(x)), numpy_of(student(x))
    t_mean = masked_mean(t["sequence_output"], x["padding_mask"])
    s_mean = masked_mean(s["sequence_output"], x["padding_mask"])
    cos = (t_mean * s_mean).sum(-1) / np.linalg.norm(t_mean, axis=-1) / np.linalg.norm(s_mean, axis=-1)
    np.testing.assert_allclose(logs["hint_loss"], np.mean((t_mean - s_mean) ** 2), rtol=1e-4)
    np.testing.assert_allclose(logs["cosine_loss"], np.mean(1 - cos), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logs["pooled_loss"], np.mean((t["pooled_output"] - s["pooled_output"]) ** 2), rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], logs["hint_loss"] + logs["cosine_loss"] + logs["pooled_loss"], rtol=1e-5)


def test_an_output_and_a_layer_pair_cost_one_forward_pass_per_model():
    teacher, student = backbone(2, seed=0), backbone(1, seed=1)
    calls = {"teacher": 0, "student": 0}
    for role, model in (("teacher", teacher), ("student", student)):
        original = model.call

        def counting(*args, _original=original, _role=role, **kwargs):
            calls[_role] += 1
            return _original(*args, **kwargs)

        model.call = counting
    pairs = [
        keras_kd.CosineEmbedding("sequence_output", "sequence_output", pooling="mean"),
        keras_kd.Hint("transformer_layer_1", "transformer_layer_0"),
    ]
    distiller = keras_kd.Distiller(teacher, student, soft_loss=None, pairs=pairs).compile("sgd", run_eagerly=True)
    x = tokens(4)
    distiller.train_on_batch(x)  # the first batch also runs the teacher once, eagerly, to check its outputs
    calls.update(teacher=0, student=0)
    distiller.train_on_batch(x)
    assert calls == {"teacher": 1, "student": 1}


def test_mean_pooling_ignores_padding_against_numpy():
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(4, 6, 5)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], "int32")
    pooled = keras.ops.convert_to_numpy(pool(hidden, mask))
    np.testing.assert_allclose(pooled, masked_mean(hidden.astype("float64"), mask), rtol=1e-6, atol=1e-7)
    assert np.all(pooled[3] == 0.0)  # no real token: 0, not NaN
    garbage = hidden.copy()
    garbage[mask == 0] = 1e6
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pool(garbage, mask)), pooled, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pool(hidden, mask, "first")), hidden[:, 0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pool(hidden)), hidden.mean(1), rtol=1e-6)


def test_mean_pooling_gradient_is_zero_on_padding_and_one_over_the_count_elsewhere():
    hidden = np.random.default_rng(4).normal(size=(2, 4, 3)).astype("float32")
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], "int32")
    grad = gradient(lambda h: keras.ops.sum(pool(h, mask)), hidden)
    expected = np.broadcast_to((mask / mask.sum(1, keepdims=True))[..., None], hidden.shape)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_raw_strings_through_the_distillers_preprocessor():
    teacher, student = backbone(2, seed=0), backbone(1, seed=1)
    reader = preprocessor()
    distiller = keras_kd.Distiller(teacher, student, soft_loss=None, pairs=sentence_pairs(), preprocessor=reader)
    history = distiller.compile(optimizer=keras.optimizers.Adam(1e-2)).fit(TEXTS, batch_size=3, epochs=2, verbose=0)
    assert "cosine_loss" in history.history and "soft_loss" not in history.history
    predicted = distiller.predict(TEXTS, batch_size=3, verbose=0)
    expected = numpy_of(student(reader(TEXTS)))
    np.testing.assert_allclose(predicted["sequence_output"], expected["sequence_output"], rtol=1e-5, atol=1e-5)


def test_a_cosine_pair_across_widths_learns_a_projection_outside_the_student():
    teacher, student = backbone(2, hidden_dim=16, seed=0), backbone(1, hidden_dim=8, seed=1)
    pair = keras_kd.CosineEmbedding("sequence_output", "sequence_output", pooling="mean", regressor="auto")
    distiller = keras_kd.Distiller(teacher, student, soft_loss=None, pairs=[pair])
    assert pair.regressor.units == 16
    regressor_before = keras.ops.convert_to_numpy(pair.regressor.kernel)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2)).fit(tokens(), batch_size=4, verbose=0)
    assert not np.allclose(regressor_before, keras.ops.convert_to_numpy(pair.regressor.kernel))
    assert all(id(v) != id(pair.regressor.kernel) for v in student.weights)


def test_feature_only_from_a_teacher_cache_of_a_layer(tmp_path):
    """A cache stores the teacher's layer outputs (and its logits, unused here): a feature-only student reads them."""
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="embedding"), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="embedding")], name="embedder")
    pair = keras_kd.Hint("embedding", "embedding")
    cache = keras_kd.TeacherCache.build(teacher, x, str(tmp_path / "cache"), pairs=[pair], verbose=0)
    distiller = keras_kd.Distiller(cache, student, soft_loss=None, pairs=[keras_kd.Hint("embedding", "embedding")])
    before = keras.ops.convert_to_numpy(student.layers[0].kernel)
    history = distiller.compile("adam").fit(cache.dataset(batch_size=8), epochs=1, verbose=0)
    assert sorted(history.history) == ["hint_loss", "loss"]
    assert not np.allclose(before, keras.ops.convert_to_numpy(student.layers[0].kernel))


def test_saved_feature_only_distiller_loads_in_a_fresh_process(tmp_path):
    teacher, student = backbone(2, seed=0), backbone(1, seed=1)
    distiller = keras_kd.Distiller(
        teacher, student, soft_loss=None, pairs=sentence_pairs(), preprocessor=preprocessor()
    )
    distiller.compile(optimizer="adam").fit(TEXTS, batch_size=3, verbose=0)
    path = tmp_path / "general.keras"
    distiller.save(path)
    expected = distiller.predict(TEXTS[:2], verbose=0)["pooled_output"]
    code = (
        "import json, sys, keras, keras_kd\n"
        f"d = keras.saving.load_model({str(path)!r})\n"
        f"texts = {TEXTS!r}\n"
        "out = d.predict(texts[:2], verbose=0)['pooled_output']\n"
        "history = d.fit(texts, batch_size=3, verbose=0)\n"
        "print(json.dumps({'feature_only': d.feature_only, 'pooling': [p.pooling for p in d.pairs],\n"
        "                  'logs': sorted(history.history), 'pooled': out.tolist()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["feature_only"] is True
    assert loaded["pooling"] == ["mean", "mean", None]
    assert loaded["logs"] == ["cosine_loss", "hint_loss", "loss", "relational_loss"]
    np.testing.assert_allclose(np.array(loaded["pooled"]), expected, rtol=1e-4, atol=1e-5)


def test_validation_strings_and_a_hint_warmup_on_an_output_pair():
    teacher, student = backbone(2, seed=0), backbone(1, seed=1)
    pair = keras_kd.Hint("sequence_output", "sequence_output", pooling="mean")
    distiller = keras_kd.Distiller(teacher, student, soft_loss=None, pairs=[pair], preprocessor=preprocessor())
    distiller.compile("adam")
    history = distiller.fit(TEXTS, validation_data=(TEXTS[:3],), batch_size=3, verbose=0)
    assert sorted(history.history) == ["hint_loss", "loss", "val_hint_loss", "val_loss"]
    # The warm-up trains what the output depends on: every trainable variable of the student but its pooler.
    warmup = keras_kd.callbacks.HintWarmup(epochs=1)
    history = distiller.fit(tokens(8), batch_size=4, epochs=2, verbose=0, callbacks=[warmup])
    assert history.history["hint_warmup"] == [1.0, 0.0]
    warmed = distiller._objective.warmup_variable_ids
    assert {v.path for v in student.trainable_variables if id(v) not in warmed} == {
        "pooled_dense/kernel",
        "pooled_dense/bias",
    }
