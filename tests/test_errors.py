"""Bad input fails at construction or on the first batch, with a message naming it and the fix."""

import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data

import keras_kd


def models(teacher_classes=3, student_classes=3, student_activation=None):
    return (
        dense_model(8, teacher_classes, name="teacher"),
        dense_model(8, student_classes, name="student", activation=student_activation),
    )


@pytest.mark.parametrize("temperature", [0.0, -2.0, float("inf"), float("nan")])
def test_temperature_must_be_positive_and_finite(temperature):
    with pytest.raises(ValueError, match=f"temperature must be a finite number > 0, got {temperature}"):
        keras_kd.Distiller(*models(), temperature=temperature)


def test_temperature_must_be_a_number():
    with pytest.raises(TypeError, match="temperature must be a number, got '4'"):
        keras_kd.Distiller(*models(), temperature="4")


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_must_lie_in_unit_interval(alpha):
    with pytest.raises(ValueError, match=rf"alpha must lie in \[0, 1\], got {alpha}.*alpha=0 is pure"):
        keras_kd.Distiller(*models(), alpha=alpha)


def test_setting_temperature_later_is_checked_too():
    distiller = keras_kd.Distiller(*models())
    with pytest.raises(ValueError, match="got -1"):
        distiller.temperature = -1
    assert distiller.temperature == 4.0


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_teacher_and_student_must_be_keras_models(role):
    teacher, student = models()
    kwargs = {"teacher": teacher, "student": student, role: keras.layers.Dense(3)}
    with pytest.raises(TypeError, match=f"{role} must be a keras.Model, got Dense.*keras.Sequential"):
        keras_kd.Distiller(**kwargs)


def test_unbuilt_teacher_is_refused():
    teacher = keras.Sequential([keras.layers.Dense(3)], name="fresh")
    with pytest.raises(ValueError, match="teacher 'fresh' is not built.*Train it"):
        keras_kd.Distiller(teacher, dense_model(8, 3))


def test_output_shapes_must_match_and_both_are_named():
    with pytest.raises(ValueError, match=r"Teacher outputs shape \(None, 10\) but student outputs shape \(None, 3\)"):
        keras_kd.Distiller(*models(teacher_classes=10))


def test_output_shapes_are_checked_on_the_first_batch_for_subclassed_students():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.head = keras.layers.Dense(5)

        def call(self, x):
            return self.head(x)

    x, y = toy_data(n=16)
    distiller = keras_kd.Distiller(dense_model(8, 3, name="teacher"), Subclassed()).compile()
    with pytest.raises(ValueError, match=r"Teacher outputs shape \(.*3\) but student outputs shape \(.*5\)"):
        distiller.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_softmax_output_is_refused(role):
    teacher, student = models()
    if role == "teacher":
        teacher = dense_model(8, 3, name="teacher", activation="softmax")
    else:
        student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3), keras.layers.Softmax()], name="student")
    with pytest.raises(
        ValueError, match=f"The {role} '{role}' ends in layer .* which applies softmax.*activation=None"
    ):
        keras_kd.Distiller(teacher, student)


def test_labels_fitting_neither_sparse_nor_one_hot_are_refused():
    x, _ = toy_data(n=16)
    distiller = keras_kd.Distiller(*models()).compile()
    bad = np.zeros((16, 2), "float32")
    with pytest.raises(ValueError, match=r"Labels of shape \((None|16), 2\) fit neither sparse .* nor one-hot labels"):
        distiller.fit(x, bad, epochs=1, verbose=0)


def test_multi_output_models_are_refused():
    inputs = keras.Input((8,))
    teacher = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(3)(inputs)], name="two")
    with pytest.raises(ValueError, match="'two' has 2 outputs; a Distiller needs one output tensor"):
        keras_kd.Distiller(teacher, dense_model(8, 3))
