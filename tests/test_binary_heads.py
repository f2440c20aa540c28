"""Distilling binary classifiers (one logit per example): the Bernoulli soft loss, end to end."""

import keras
import numpy as np
import pytest
from conftest import dense_model

import keras_kd
from keras_kd.losses import DKD


def binary_task(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x @ rng.normal(size=(8,)) > 0).astype("int64")
    return x, y


def accuracy(model, x, y):
    return float(np.mean((model.predict(x, verbose=0)[:, 0] > 0) == y))


@pytest.fixture(scope="module")
def trained_teacher():
    keras.utils.set_random_seed(0)
    x, y = binary_task()
    teacher = dense_model(8, 1, hidden=32, name="teacher")
    teacher.compile(keras.optimizers.Adam(0.01), keras.losses.BinaryCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=15, batch_size=64, verbose=0)
    return teacher


def test_a_binary_student_learns_from_the_teacher_alone(trained_teacher):
    """alpha=0 and no labels: everything the student learns comes through the Bernoulli soft loss."""
    x, y = binary_task()
    assert accuracy(trained_teacher, x, y) > 0.95
    student = dense_model(8, 1, hidden=16, name="student")
    before = accuracy(student, x, y)
    distiller = keras_kd.Distiller(trained_teacher, student, temperature=4.0, alpha=0.0)
    distiller.compile(keras.optimizers.Adam(0.01)).fit(x, epochs=5, batch_size=64, verbose=0)
    assert accuracy(student, x, y) > max(before + 0.2, 0.85)


def test_several_teachers_a_cache_and_dkd_with_binary_heads(trained_teacher, tmp_path):
    """The mixture, a teacher cache and DKD see the two-class logits [0, z] too (DKD with 0/1 class ids)."""
    x, y = binary_task(n=128, seed=1)
    other = dense_model(8, 1, name="other")
    student = dense_model(8, 1, hidden=16, name="student")
    mixed = keras_kd.Distiller([trained_teacher, other], student, teacher_weights=[3, 1]).compile("sgd")
    assert mixed.evaluate(x, y, verbose=0, return_dict=True)["soft_loss"] > 1e-4
    cache = keras_kd.TeacherCache.build(trained_teacher, (x, y), str(tmp_path / "c"), dtype="float32", verbose=0)
    offline = keras_kd.Distiller(cache, student).compile("sgd")
    online = keras_kd.Distiller(trained_teacher, student).compile("sgd")
    cached_logs = offline.evaluate(cache.dataset(32, shuffle=False), verbose=0, return_dict=True)
    online_logs = online.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert cached_logs["soft_loss"] == pytest.approx(online_logs["soft_loss"], rel=1e-5)
    assert cached_logs["soft_loss"] > 1e-4
    dkd = keras_kd.Distiller(trained_teacher, student, alpha=0.5, soft_loss=DKD(temperature=4.0)).compile("adam")
    history = dkd.fit(x, y, epochs=2, batch_size=32, verbose=0).history
    assert np.isfinite(history["loss"]).all() and history["soft_loss"][0] > 1e-4
