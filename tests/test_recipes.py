"""`keras_kd.recipes`: progressive distillation through assistants, and pseudo-labelling."""

import glob
import importlib
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import toy_data

import keras_kd

# The modules; `keras_kd.recipes.progressive` and `.pseudo_label` are the functions.
progressive_module = importlib.import_module("keras_kd.recipes.progressive")
pseudo_label_module = importlib.import_module("keras_kd.recipes.pseudo_label")

FEATURES, CLASSES = 8, 3


def mlp(hidden, name, classes=CLASSES):
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden"),
            keras.layers.Dense(classes, name=f"{name}_logits"),
        ],
        name=name,
    )


def trained_teacher(x, y):
    teacher = mlp(32, "teacher")
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return teacher


@pytest.fixture
def spy_distillers(monkeypatch):
    """Records every Distiller that `progressive` builds."""
    built = []

    class Recording(keras_kd.Distiller):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(progressive_module, "Distiller", Recording)
    return built


def test_recipes_are_public():
    assert keras_kd.recipes.progressive is progressive_module.progressive
    assert keras_kd.recipes.pseudo_label is pseudo_label_module.pseudo_label
    assert {"progressive", "pseudo_label"} <= set(keras_kd.recipes.__all__)


# ----------------------------------------------------------------------------- progressive


def test_progressive_distils_down_the_chain(spy_distillers):
    x, y = toy_data()
    teacher = trained_teacher(x, y)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    assistant, student = mlp(16, "assistant"), mlp(4, "student")
    initial = [model.get_weights() for model in (assistant, student)]
    models, report = keras_kd.recipes.progressive(
        teacher,
        [assistant, student],
        (x, y),
        epochs_per_stage=[2, 3],
        validation_data=(x, y),
        compile=dict(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"]),
        temperature=2.0,
        alpha=0.3,
        verbose=0,
    )
    assert models[0] is assistant and models[1] is student
    # Stage 1: teacher -> assistant; stage 2: the trained assistant -> student.
    assert [(d.teacher, d.student) for d in spy_distillers] == [(teacher, assistant), (assistant, student)]
    assert all(d.temperature == 2.0 and d.alpha == pytest.approx(0.3) for d in spy_distillers)
    # A fresh optimizer per stage, cloned from the one given, stepped only by its own stage (4 batches/epoch).
    first, second = (d.optimizer for d in spy_distillers)
    assert first is not second
    assert int(first.iterations) == 2 * 4 and int(second.iterations) == 3 * 4
    assert float(second.learning_rate) == pytest.approx(1e-2)
    for model, weights in zip((assistant, student), initial):
        assert any(not np.allclose(a, b) for a, b in zip(model.get_weights(), weights))
    for a, b in zip(teacher.get_weights(), teacher_weights):
        np.testing.assert_array_equal(a, b)
    assert teacher.trainable and assistant.trainable and student.trainable  # flags restored

    assert [(row["stage"], row["teacher"], row["student"], row["epochs"]) for row in report] == [
        (1, "teacher", "assistant", 2),
        (2, "assistant", "student", 3),
    ]
    for row in report:
        assert {"loss", "val_loss", "val_hard_loss", "val_soft_loss", "val_accuracy", "seconds"} <= set(row)
        assert np.isfinite([row["loss"], row["val_loss"], row["val_accuracy"]]).all()
    logits = keras.ops.convert_to_numpy(student(x))
    assert report[1]["val_accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == y), abs=1e-6)
    table = str(report).splitlines()
    assert table[0].split() == ["stage", "teacher", "->", "student", "epochs", "loss", "val_loss", "val_accuracy"] + [
        "seconds"
    ]
    assert table[2].split()[:5] == ["2", "assistant", "->", "student", "3"]


def test_progressive_per_stage_pairs_and_unlabelled_data(spy_distillers):
    x, y = toy_data()
    teacher = trained_teacher(x, y)
    pairs = [[keras_kd.Hint("teacher_hidden", "assistant_hidden")], []]
    _, report = keras_kd.recipes.progressive(
        teacher, [mlp(16, "assistant"), mlp(4, "student")], x, 1, pairs=pairs, verbose=0
    )
    assert [type(p).__name__ for p in spy_distillers[0].pairs] == ["Hint"] and spy_distillers[1].pairs == []
    assert len(report) == 2 and all(np.isfinite(row["loss"]) for row in report)


def test_cached_stages_match_online_within_float16(tmp_path):
    x, y = toy_data()
    teacher = trained_teacher(x, y)
    chains = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        chains.append([mlp(16, "assistant"), mlp(4, "student")])
    kwargs = dict(
        epochs_per_stage=2,
        validation_data=(x, y),
        batch_size=16,
        shuffle=False,
        compile=dict(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"]),
        verbose=0,
    )
    _, online = keras_kd.recipes.progressive(teacher, chains[0], (x, y), **kwargs)
    _, cached = keras_kd.recipes.progressive(teacher, chains[1], (x, y), cache=str(tmp_path), **kwargs)
    for a, b in zip(online, cached):
        for key in ("loss", "val_loss", "val_hard_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-2, abs=1e-3)
    for online_model, cached_model in zip(*chains):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(cached_model(x)), keras.ops.convert_to_numpy(online_model(x)), atol=1e-2
        )
    # The caches are kept per stage and teacher, for training and validation.
    for stage in (1, 2):
        (directory,) = glob.glob(os.path.join(tmp_path, f"stage-{stage}-*"))
        assert sorted(os.listdir(directory)) == ["train", "validation"]


def test_cache_true_uses_a_temporary_directory_from_a_dataset(tmp_path, monkeypatch):
    x, y = toy_data()
    teacher = trained_teacher(x, y)
    monkeypatch.setattr(progressive_module.tempfile, "tempdir", str(tmp_path))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    _, report = keras_kd.recipes.progressive(teacher, [mlp(4, "student")], dataset, 1, cache=True, verbose=0)
    assert np.isfinite(report[0]["loss"])
    # Removed after the stage (TensorFlow's autograph writes its own generated files to the temporary directory).
    assert [name for name in os.listdir(tmp_path) if not name.startswith("__autograph_generated_file")] == []


def test_progressive_prints_stage_headers(capsys):
    x, y = toy_data(n=32)
    keras_kd.recipes.progressive(trained_teacher(x, y), [mlp(4, "student")], (x, y), 1, verbose=2)
    assert "Stage 1/1: teacher -> student, 1 epoch" in capsys.readouterr().out


@pytest.mark.parametrize(
    "students, error, match",
    [
        ([], ValueError, r"students is empty: give at least the student, \[student\]"),
        ("model", TypeError, "students must be a list of keras.Model"),
        ([None], TypeError, r"students\[0\] must be a keras.Model, got NoneType"),
    ],
)
def test_bad_students(students, error, match):
    x, y = toy_data(n=32)
    with pytest.raises(error, match=match):
        keras_kd.recipes.progressive(mlp(8, "teacher"), students, (x, y), 1, verbose=0)


def test_non_model_among_students_is_named():
    with pytest.raises(TypeError, match=r"students\[1\] must be a keras.Model, got Dense"):
        keras_kd.recipes.progressive(mlp(8, "teacher"), [mlp(4, "a"), keras.layers.Dense(3)], toy_data(), 1)


def test_single_model_as_students_gets_a_hint():
    with pytest.raises(TypeError, match=r"got Sequential. For one student, pass \[student\]"):
        keras_kd.recipes.progressive(mlp(8, "teacher"), mlp(4, "student"), toy_data(), 1)


def test_same_model_twice_is_refused():
    student = mlp(4, "student")
    with pytest.raises(ValueError, match=r"students\[1\] is the same model as students\[0\] \('student'\)"):
        keras_kd.recipes.progressive(mlp(8, "teacher"), [student, student], toy_data(), 1)


@pytest.mark.parametrize(
    "epochs, error, match",
    [
        ([1], ValueError, "epochs_per_stage has 1 entries but there are 2 stages"),
        ([1, 1, 1], ValueError, "epochs_per_stage has 3 entries but there are 2 stages"),
        (0, ValueError, r"epochs_per_stage must be an int >= 1 \(epochs of stage 1\), got 0"),
        ([2, 0], ValueError, r"epochs_per_stage\[1\] must be an int >= 1 \(epochs of stage 2\), got 0"),
        ([2, 1.5], ValueError, r"epochs_per_stage\[1\] must be an int >= 1 \(epochs of stage 2\), got 1.5"),
        ("3", TypeError, "epochs_per_stage must be an int or a list of 2 ints, got '3'"),
    ],
)
def test_bad_epochs_per_stage(epochs, error, match):
    with pytest.raises(error, match=match):
        keras_kd.recipes.progressive(mlp(8, "teacher"), [mlp(4, "a"), mlp(2, "s")], toy_data(), epochs)


def test_flat_pairs_are_refused():
    pairs = [keras_kd.Hint("teacher_hidden", "a_hidden")]
    with pytest.raises(ValueError, match=r"give one list of pairs per stage, pairs=\[\[...stage 1...\]"):
        keras_kd.recipes.progressive(mlp(8, "teacher"), [mlp(4, "a"), mlp(2, "s")], toy_data(), 1, pairs=pairs)
    with pytest.raises(ValueError, match="pairs has 1 lists but there are 2 stages"):
        keras_kd.recipes.progressive(mlp(8, "teacher"), [mlp(4, "a"), mlp(2, "s")], toy_data(), 1, pairs=[pairs])


def test_bad_compile_and_cache_arguments():
    args = (mlp(8, "teacher"), [mlp(4, "a"), mlp(2, "s")], toy_data(), 1)
    with pytest.raises(TypeError, match="compile must be a dict of Distiller.compile arguments"):
        keras_kd.recipes.progressive(*args, compile="adam")
    with pytest.raises(ValueError, match="compile has 1 dicts but there are 2 stages"):
        keras_kd.recipes.progressive(*args, compile=[{}])
    with pytest.raises(TypeError, match="cache must be False .*, True .* or a directory path"):
        keras_kd.recipes.progressive(*args, cache=3)


def test_shape_mismatch_names_the_stage():
    x, y = toy_data(n=32)
    teacher = trained_teacher(x, y)
    assistant, student = mlp(16, "assistant"), mlp(4, "student", classes=4)
    with pytest.raises(
        ValueError,
        match=r"Stage 2 of 2 \('assistant' -> 'student'\): Teacher outputs shape \(None, 3\) but student outputs "
        r"shape \(None, 4\)",
    ):
        keras_kd.recipes.progressive(teacher, [assistant, student], (x, y), 1, verbose=0)
    assert teacher.trainable and assistant.trainable  # restored on failure too


# ----------------------------------------------------------------------------- pseudo_label


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def teacher_logits(teacher, x):
    return keras.ops.convert_to_numpy(teacher(x, training=False)).astype(np.float64)


def test_soft_and_hard_labels_match_the_teacher():
    x, y = toy_data(n=100)
    teacher = trained_teacher(x, y)
    logits = teacher_logits(teacher, x)
    soft = keras_kd.recipes.pseudo_label(teacher, x, temperature=2.0, batch_size=16, verbose=0)
    np.testing.assert_allclose(soft.x, x)
    np.testing.assert_allclose(soft.y, softmax(logits / 2.0), atol=1e-5)
    assert soft.y.dtype == np.float32 and soft.kept == soft.total == 100
    np.testing.assert_allclose(soft.confidence, softmax(logits).max(-1), atol=1e-5)
    hard = keras_kd.recipes.pseudo_label(teacher, x, soft=False, verbose=0)
    np.testing.assert_array_equal(hard.y, np.argmax(logits, -1))
    assert hard.y.dtype == np.int64
    np.testing.assert_array_equal(hard.indices, np.arange(100))


def test_threshold_keeps_the_confident_examples(capsys):
    x, y = toy_data(n=100)
    teacher = trained_teacher(x, y)
    confidence = softmax(teacher_logits(teacher, x)).max(-1)
    q = float(np.median(confidence))
    labels = keras_kd.recipes.pseudo_label(teacher, x, threshold=q, soft=False, batch_size=32)
    expected = np.flatnonzero(confidence >= q)
    np.testing.assert_array_equal(labels.indices, expected)
    np.testing.assert_allclose(labels.x, x[expected])
    assert labels.kept == len(expected) and 0 < labels.kept < 100
    out = capsys.readouterr().out
    assert f"kept {labels.kept} of 100 examples ({labels.kept:.1f} %) with the teacher's top probability >= " in out
    assert repr(labels).startswith(f"<PseudoLabels: kept {labels.kept} of 100 examples")


def test_datasets_of_inputs_give_the_same_labels():
    x, y = toy_data(n=70)
    teacher = trained_teacher(x, y)
    expected = keras_kd.recipes.pseudo_label(teacher, x, threshold=0.5, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(16)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return (x[index * 32 : (index + 1) * 32],)  # a 1-tuple is x alone

    for unlabeled in (dataset, Batches()):
        labels = keras_kd.recipes.pseudo_label(teacher, unlabeled, threshold=0.5, verbose=0)
        np.testing.assert_array_equal(labels.indices, expected.indices)
        np.testing.assert_allclose(labels.x, expected.x)
        np.testing.assert_allclose(labels.y, expected.y, atol=1e-6)


def test_dict_inputs_are_filtered_together():
    inputs = {"a": keras.Input((4,), name="a"), "b": keras.Input((4,), name="b")}
    teacher = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Concatenate()([inputs["a"], inputs["b"]])))
    x, _ = toy_data(n=50)
    labels = keras_kd.recipes.pseudo_label(teacher, {"a": x[:, :4], "b": x[:, 4:]}, threshold=0.4, verbose=0)
    np.testing.assert_allclose(labels.x["b"], x[labels.indices, 4:])


def test_pseudo_labels_train_a_student_and_feed_the_distiller():
    x, y = toy_data()
    teacher = trained_teacher(x, y)
    labels = keras_kd.recipes.pseudo_label(teacher, x, verbose=0)
    student = mlp(4, "student")
    student.compile("adam", keras.losses.CategoricalCrossentropy(from_logits=True))
    assert np.isfinite(student.fit(*labels, epochs=1, verbose=0).history["loss"][0])
    history = keras_kd.Distiller(teacher, mlp(4, "s2")).compile("adam").fit(labels.x, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "soft_loss"}


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5, float("nan")])
def test_threshold_must_lie_in_the_unit_interval(threshold):
    with pytest.raises(ValueError, match=rf"threshold must lie in \(0, 1\], got {threshold}.*threshold=None"):
        keras_kd.recipes.pseudo_label(mlp(8, "teacher"), toy_data()[0], threshold=threshold)


def test_other_bad_arguments():
    x = toy_data()[0]
    teacher = mlp(8, "teacher")
    with pytest.raises(TypeError, match="threshold must be None or a number in \\(0, 1\\], got True"):
        keras_kd.recipes.pseudo_label(teacher, x, threshold=True)
    with pytest.raises(ValueError, match="temperature=2.0 softens soft labels, but soft=False"):
        keras_kd.recipes.pseudo_label(teacher, x, soft=False, temperature=2.0)
    with pytest.raises(ValueError, match="batch_size=8 is for in-memory arrays"):
        keras_kd.recipes.pseudo_label(teacher, tf.data.Dataset.from_tensor_slices(x).batch(4), batch_size=8)
    with pytest.raises(ValueError, match="unlabeled is empty"):
        keras_kd.recipes.pseudo_label(teacher, x[:0], verbose=0)
    softmax_teacher = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match="applies softmax. Distillation needs logits"):
        keras_kd.recipes.pseudo_label(softmax_teacher, x)
    sequence_teacher = keras.Sequential([keras.Input((5, FEATURES)), keras.layers.Dense(3)], name="tagger")
    with pytest.raises(ValueError, match=r"logits of shape \(batch, classes\); 'tagger' returned \(2, 5, 3\)"):
        keras_kd.recipes.pseudo_label(sequence_teacher, np.zeros((2, 5, FEATURES), "float32"), verbose=0)
