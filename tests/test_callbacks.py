import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data
from test_losses_logits import reference

import keras_kd
from keras_kd.callbacks import AlphaScheduler, TemperatureScheduler

JIT = keras.backend.backend() in ("jax", "tensorflow")


def frozen_student_distiller(**kwargs):
    """A distiller whose student cannot move (learning rate 0), so each epoch's loss is exact."""
    x, y = toy_data(n=64)
    teacher = dense_model(8, 3, hidden=16, name="teacher")
    distiller = keras_kd.Distiller(teacher, dense_model(8, 3, name="student"), **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), jit_compile=JIT)
    return distiller, x, y


def logits(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_temperature_change_reaches_the_compiled_step():
    distiller, x, y = frozen_student_distiller(temperature=1.0)
    schedule = [1.0, 4.0, 10.0]
    history = distiller.fit(
        x, y, epochs=3, batch_size=64, verbose=0, callbacks=[TemperatureScheduler(lambda e: schedule[e])]
    )
    if JIT:
        assert distiller.jit_compile is True
    t, s = logits(distiller.teacher, x), logits(distiller.student, x)
    expected = [reference(t, s, value) for value in schedule]
    np.testing.assert_allclose(history.history["soft_loss"], expected, rtol=1e-5)
    assert history.history["temperature"] == schedule
    assert distiller.temperature == 10.0


def test_alpha_change_reaches_the_compiled_step():
    distiller, x, y = frozen_student_distiller(alpha=0.0)
    history = distiller.fit(
        x, y, epochs=3, batch_size=64, verbose=0, callbacks=[AlphaScheduler(lambda epoch, alpha: min(1.0, alpha + 0.5))]
    )
    hard, soft = history.history["hard_loss"][0], history.history["soft_loss"][0]
    expected = [a * hard + (1 - a) * soft for a in (0.5, 1.0)]
    np.testing.assert_allclose(history.history["loss"][:2], expected, rtol=1e-5)
    assert history.history["alpha"] == [0.5, 1.0, 1.0]


def test_teacher_comparison_logs_student_and_teacher_accuracy_and_their_agreement():
    import tensorflow as tf

    from keras_kd.callbacks import TeacherComparison

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    y = np.argmax(keras.ops.convert_to_numpy(teacher(x)), axis=-1)
    y[:16] = (y[:16] + 1) % 3  # the teacher is wrong on a quarter of them
    for data in ((x, y), tf.data.Dataset.from_tensor_slices((x, y)).batch(16)):
        distiller = keras_kd.Distiller(teacher, student, alpha=0.0).compile(optimizer=keras.optimizers.Adam(0.05))
        history = distiller.fit(x, epochs=3, verbose=0, callbacks=[TeacherComparison(data)]).history
        assert history["val_teacher_accuracy"] == [0.75, 0.75, 0.75]
        student_top = np.argmax(keras.ops.convert_to_numpy(student(x)), axis=-1)
        teacher_top = np.argmax(keras.ops.convert_to_numpy(teacher(x)), axis=-1)
        assert history["val_student_accuracy"][-1] == pytest.approx(np.mean(student_top == y))
        assert history["val_agreement"][-1] == pytest.approx(np.mean(student_top == teacher_top))


def test_teacher_comparison_needs_labelled_data_and_a_distiller():
    from keras_kd.callbacks import TeacherComparison

    with pytest.raises(ValueError, match=r"TeacherComparison needs labelled data: validation_data=\(x, y\)"):
        TeacherComparison(np.zeros((4, 2)))
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    plain.compile("sgd", "mse")
    with pytest.raises(TypeError, match=r"compares a keras_kd.Distiller's student with its teacher model"):
        plain.fit(
            np.zeros((4, 2)),
            np.zeros((4, 2)),
            verbose=0,
            callbacks=[TeacherComparison((np.zeros((4, 2)), np.zeros(4)))],
        )
