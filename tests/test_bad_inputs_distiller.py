"""The bad-input catalogue, issue 17: the Distiller's models, labels, losses and data.

Same conventions as `tests/test_bad_inputs.py`: the exact error type, a message that names the
offending value (a model, a layer, a shape, a label) and says what to do instead; warnings are
checked with `pytest.warns`. Every test has a row in `docs/bad_inputs.md` (section "Issue 17").
"""

import re
import warnings

import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data

import keras_kd

BACKEND = keras.backend.backend()


def models(teacher_hidden=None, student_hidden=None):
    return (
        dense_model(8, 3, hidden=teacher_hidden, name="teacher"),
        dense_model(8, 3, hidden=student_hidden, name="student"),
    )


def matching(caught, pattern):
    return [w for w in caught if re.search(pattern, str(w.message))]


# ----------------------------------------------------------------------------- the teacher and the student


def test_the_same_model_as_teacher_and_student():
    model = dense_model(8, 3, name="both")
    with pytest.raises(
        ValueError, match=r"The teacher and the student are the same model, 'both'.*keras.models.clone_model\(both\)"
    ):
        keras_kd.Distiller(model, model)
    with pytest.raises(ValueError, match=r"The teacher\[1\] and the student are the same model, 'both'"):
        keras_kd.Distiller([dense_model(8, 3), model], model)


def test_a_student_that_shares_layers_with_the_teacher():
    teacher = dense_model(8, 3, hidden=16, name="teacher")
    inputs = keras.Input((8,))
    shared = keras.Model(inputs, keras.layers.Dense(3, name="head")(teacher.layers[0](inputs)), name="shared")
    with pytest.raises(
        ValueError,
        match=r"The student 'shared' shares 2 variables with the teacher 'teacher', in its layer '"
        + re.escape(teacher.layers[0].name)
        + r"'.*never trains the teacher, so these would stay frozen.*keras.models.clone_model",
    ):
        keras_kd.Distiller(teacher, shared)
    wrapper = keras.Sequential([teacher, keras.layers.Dense(3, name="after")], name="wrapper")
    with pytest.raises(ValueError, match=r"The student 'wrapper' shares 4 variables .*in its layer 'teacher' \("):
        keras_kd.Distiller(teacher, wrapper)


def test_the_teacher_is_left_as_given_and_never_trained():
    """Not an error: the distiller never touches the teacher's `trainable` flag, and never trains it."""
    x, y = toy_data(n=64)
    teacher, student = models(teacher_hidden=16)
    frozen_layer = dense_model(8, 3, name="partly_frozen")
    frozen_layer.layers[0].trainable = False  # a user's own setting, kept
    before = [np.copy(w) for w in teacher.get_weights()]
    distiller = keras_kd.Distiller(teacher, student).compile("adam")
    assert teacher.trainable and all(layer.trainable for layer in teacher.layers)
    distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert teacher.trainable and all(layer.trainable for layer in teacher.layers)
    for after, was in zip(teacher.get_weights(), before):
        np.testing.assert_array_equal(after, was)  # bit-identical
    teacher_ids = {id(v) for v in teacher.variables}
    assert not teacher_ids & {id(v) for v in distiller.trainable_variables}
    assert teacher_ids <= {id(v) for v in distiller.non_trainable_variables}
    slots = [v.path for v in distiller.optimizer.variables]
    assert not [path for path in slots if "teacher" in path], slots
    assert len(distiller.optimizer.variables) == 2 + 2 * len(student.trainable_variables)
    ensemble = keras_kd.Distiller([dense_model(8, 3), frozen_layer], dense_model(8, 3)).compile("adam")
    ensemble.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert frozen_layer.trainable and not frozen_layer.layers[0].trainable


def test_a_student_larger_than_the_teacher_warns():
    teacher, student = models(student_hidden=64)
    with pytest.warns(
        UserWarning,
        match=r"The student 'student' has more parameters \(771\) than the teacher 'teacher' \(27\): are teacher "
        r"and student swapped\?.*If a larger student is what you mean",
    ):
        keras_kd.Distiller(teacher, student)


def test_an_untrained_teacher_warns_on_the_first_labelled_batch():
    x, y = toy_data(n=64)
    distiller = keras_kd.Distiller(*models()).compile("adam")
    with pytest.warns(
        UserWarning,
        match=r"The teacher 'teacher' predicts \d+ of the first batch's 32 labels \(\d+%\), about chance for 3 "
        r"classes \(33%\): is it trained\?.*Train or load the teacher first",
    ):
        distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    teacher = dense_model(8, 3, name="teacher")  # a teacher that is right on every label: no warning
    right = np.argmax(teacher.predict(x, verbose=0), axis=-1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_kd.Distiller(teacher, dense_model(8, 3)).compile("adam").fit(x, right, batch_size=32, verbose=0)
    assert not matching(caught, "about chance"), [str(w.message) for w in caught]


# ----------------------------------------------------------------------------- labels and the hard loss


@pytest.mark.parametrize("bad", [7, -1])
def test_class_ids_outside_the_classes(bad):
    x, y = toy_data(n=32)
    y[3] = bad  # in the first batch (checked once per fit, as the teacher's outputs are)
    distiller = keras_kd.Distiller(*models()).compile("adam")
    with pytest.raises(
        ValueError,
        match=rf"The first batch's labels hold 1 class id outside \[0, 2\] \({bad}\), but the student outputs 3 "
        r"classes.*Map the labels to 0..2.*ignore_class=-100",
    ):
        distiller.fit(x, y, batch_size=16, shuffle=False, epochs=1, verbose=0)


def test_labels_the_compiled_loss_ignores_pass():
    """Not an error: class ids equal to the compiled loss's `ignore_class` mark positions to skip."""
    x, y = toy_data(n=32)
    y[3] = -100
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)
    distiller = keras_kd.Distiller(*models()).compile("adam", loss=loss)
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_a_string_cross_entropy_is_taken_from_logits():
    """Not an error: `compile(loss="sparse_categorical_crossentropy")` reads the student's logits as logits."""
    x, y = toy_data(n=32)
    teacher, student = models()
    distiller = keras_kd.Distiller(teacher, student, alpha=1.0).compile("sgd", loss="sparse_categorical_crossentropy")
    assert isinstance(distiller.loss, keras.losses.SparseCategoricalCrossentropy)
    assert distiller.loss.get_config()["from_logits"] is True
    logs = distiller.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    logits = student.predict(x, verbose=0)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    np.testing.assert_allclose(logs["hard_loss"], float(keras.ops.convert_to_numpy(expected)), rtol=1e-5)


@pytest.mark.parametrize(
    "loss, name",
    [
        (keras.losses.SparseCategoricalCrossentropy(), "SparseCategoricalCrossentropy"),
        (keras.losses.categorical_crossentropy, "categorical_crossentropy"),
    ],
)
def test_a_cross_entropy_that_reads_probabilities(loss, name):
    distiller = keras_kd.Distiller(*models())
    with pytest.raises(
        ValueError,
        match=rf"compile\(loss={name}(\(from_logits=False\))?\) reads the student's outputs as probabilities.*"
        r"Pass keras.losses.\w+\(from_logits=True\), or loss=None",
    ):
        distiller.compile("adam", loss=loss)


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize(
    "tail, applies",
    [
        ([keras.layers.Dense(3, activation="sigmoid", name="probabilities")], "sigmoid"),
        (
            [keras.layers.Dense(3, activation="softmax", name="probabilities"), keras.layers.Activation("linear")],
            "softmax",
        ),
        (
            [
                keras.layers.Dense(3, name="logits"),
                keras.layers.Softmax(name="probabilities"),
                keras.layers.Dropout(0.1),
            ],
            "softmax",
        ),
    ],
    ids=["sigmoid", "softmax_then_linear", "softmax_then_dropout"],
)
def test_an_output_of_probabilities_behind_the_last_layer(role, tail, applies):
    probabilities = keras.Sequential(
        [keras.Input((8,)), *[layer.__class__.from_config(layer.get_config()) for layer in tail]], name=role
    )
    kwargs = dict(zip(["teacher", "student"], models()))
    kwargs[role] = probabilities
    with pytest.raises(
        ValueError,
        match=rf"The {role} '{role}' ends in layer 'probabilities'.*which applies {applies}. Distillation needs "
        rf"logits: rebuild that layer with activation=None.*keras.ops.{applies}\(model\(x\)\)",
    ):
        keras_kd.Distiller(**kwargs)


# ----------------------------------------------------------------------------- values and batches


@pytest.mark.parametrize("temperature", [1e30, 1e-30, 1000.0, 0.001])
def test_a_temperature_float32_cannot_hold(temperature):
    with pytest.raises(
        ValueError,
        match=rf"temperature must lie in \[0.01, 100\], got {re.escape(f'{temperature:g}')}: that is where float32.*"
        r"Hinton et al. use 2 to 20",
    ):
        keras_kd.Distiller(*models(), temperature=temperature)
    distiller = keras_kd.Distiller(*models())
    with pytest.raises(ValueError, match=r"temperature must lie in \[0.01, 100\]"):
        distiller.temperature = temperature
    assert distiller.temperature == 4.0


def test_relational_kd_on_a_last_batch_of_one_example():
    def model(name):
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(4, name="hidden")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3)(hidden), name=name)

    distiller = keras_kd.Distiller(model("teacher"), model("student"), pairs=[keras_kd.Relational("hidden", "hidden")])
    distiller.compile("adam")
    x, y = toy_data(n=33)  # batches of 32 and 1
    if BACKEND == "tensorflow":  # the smaller last batch is traced with an unknown batch size: asserted in the graph
        import tensorflow as tf

        error = tf.errors.InvalidArgumentError
    else:
        error = ValueError
    with pytest.raises(error, match=r"batch size 1 has no pairs; use batch size >= 2 \(>= 3 for angles\)"):
        distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)


# ----------------------------------------------------------------------------- data


def test_a_dataset_of_dicts():
    import tensorflow as tf

    x, y = toy_data(n=32)
    dataset = tf.data.Dataset.from_tensor_slices({"features": x, "label": y}).batch(16)
    distiller = keras_kd.Distiller(*models()).compile("adam")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            ValueError,
            match=r"The first batch's x is a dict with keys \['features', 'label'\] and no labels, but the student "
            r"'student' takes the inputs \[.*\]. Keras's fit\(\) reads a batch as x, \(x, y\).*"
            r"dataset.map\(lambda d: \(d\['features'\], d\['label'\]\)\)",
        ):
            distiller.fit(dataset, epochs=1, verbose=0)
    assert not matching(caught, "has no labels"), "the label-free warning would mislead"


def test_teacher_and_student_inputs_of_different_shapes():
    x, y = toy_data(n=32)
    distiller = keras_kd.Distiller(dense_model(8, 3, name="teacher"), dense_model(6, 3, name="student")).compile()
    with pytest.raises(
        ValueError,
        match=r"The first batch's inputs of shape \((16|None), 8\) do not fit the student: the student 'student' "
        r"takes \(None, 6\); the teacher 'teacher' takes \(None, 8\).*keras_kd.paired_inputs\(teacher_x, student_x\)",
    ):
        distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    history = distiller.fit(keras_kd.paired_inputs(x, x[:, :6]), y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()  # each model gets its own input


# ----------------------------------------------------------------------------- saving


def plain_soft_loss(teacher_logits, student_logits, temperature, sample_weight=None):
    return keras_kd.losses.soft_target_loss(teacher_logits, student_logits, temperature, sample_weight)


@keras.saving.register_keras_serializable(package="test_bad_inputs_distiller")
def registered_soft_loss(teacher_logits, student_logits, temperature, sample_weight=None):
    return keras_kd.losses.soft_target_loss(teacher_logits, student_logits, temperature, sample_weight)


def test_saving_a_plain_function_soft_loss_says_how_to_load_it(tmp_path):
    x, y = toy_data(n=32)
    teacher, student = models()
    distiller = keras_kd.Distiller(teacher, student, soft_loss=plain_soft_loss).compile("adam")
    distiller.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "d.keras")
    with pytest.warns(UserWarning, match=r"soft_loss plain_soft_loss is a plain function.*custom_objects="):
        distiller.save(path)
    with pytest.raises(TypeError, match="plain_soft_loss"):  # what the warning prevents
        keras.saving.load_model(path)
    loaded = keras.saving.load_model(path, custom_objects={"plain_soft_loss": plain_soft_loss})
    assert loaded.soft_loss is plain_soft_loss
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6)
    # A registered function saves without the warning and loads as it is.
    registered = keras_kd.Distiller(*models(), soft_loss=registered_soft_loss).compile("adam")
    registered.fit(x, y, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        registered.save(str(tmp_path / "r.keras"))
    assert keras.saving.load_model(str(tmp_path / "r.keras")).soft_loss is registered_soft_loss
