import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data
from test_losses_logits import log_softmax, reference

import keras_kd


def trained_teacher(x, y, classes=3):
    teacher = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(classes),
        ],
        name="teacher",
    )
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=2, verbose=0)
    return teacher


def numpy_terms(distiller, x, y, temperature, weight=None):
    t = keras.ops.convert_to_numpy(distiller.teacher(x, training=False)).astype(np.float64)
    s = keras.ops.convert_to_numpy(distiller.student(x, training=False)).astype(np.float64)
    hard = -np.take_along_axis(log_softmax(s), y[..., None], axis=-1)[..., 0]
    if weight is not None:
        hard = hard * weight.reshape(weight.shape + (1,) * (hard.ndim - weight.ndim))
    return hard.mean(), reference(t, s, temperature, weight)


def test_compile_returns_distiller_and_logs_all_terms():
    x, y = toy_data()
    distiller = keras_kd.Distiller(trained_teacher(x, y), dense_model(8, 3))
    assert distiller.compile(optimizer="adam", metrics=["accuracy"]) is distiller
    history = distiller.fit(x, y, validation_data=(x, y), epochs=1, batch_size=32, verbose=0)
    expected = {"loss", "hard_loss", "soft_loss", "accuracy"}
    assert set(history.history) == expected | {f"val_{name}" for name in expected}
    assert np.isfinite([v[0] for v in history.history.values()]).all()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_loss_is_alpha_mix_of_hard_and_soft_terms(alpha):
    x, y = toy_data()
    distiller = keras_kd.Distiller(trained_teacher(x, y), dense_model(8, 3), temperature=3.0, alpha=alpha)
    logs = distiller.compile(optimizer="adam").evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    hard, soft = numpy_terms(distiller, x, y, 3.0)
    assert logs["hard_loss"] == pytest.approx(hard, rel=1e-5)
    assert logs["soft_loss"] == pytest.approx(soft, rel=1e-5)
    assert logs["loss"] == pytest.approx(alpha * hard + (1 - alpha) * soft, rel=1e-5)


def test_one_hot_labels_use_categorical_cross_entropy():
    x, y = toy_data()
    distiller = keras_kd.Distiller(trained_teacher(x, y), dense_model(8, 3)).compile()
    sparse = distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    one_hot = distiller.evaluate(x, np.eye(3)[y], batch_size=len(x), verbose=0, return_dict=True)
    assert one_hot["hard_loss"] == pytest.approx(sparse["hard_loss"], rel=1e-6)


def test_compiled_loss_replaces_default_hard_loss():
    x, y = toy_data()
    distiller = keras_kd.Distiller(trained_teacher(x, y), dense_model(8, 3), alpha=1.0)
    focal = keras.losses.CategoricalFocalCrossentropy(from_logits=True)
    logs = distiller.compile(loss=focal).evaluate(x, np.eye(3)[y], batch_size=len(x), verbose=0, return_dict=True)
    expected = float(focal(np.eye(3)[y], distiller.student(x)))
    assert logs["hard_loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_sample_weight_weights_both_terms():
    x, y = toy_data()
    weight = np.random.default_rng(1).random(len(x)).astype("float32")
    weight[::3] = 0.0
    distiller = keras_kd.Distiller(trained_teacher(x, y), dense_model(8, 3), temperature=2.0).compile()
    logs = distiller.evaluate(x, y, sample_weight=weight, batch_size=len(x), verbose=0, return_dict=True)
    hard, soft = numpy_terms(distiller, x, y, 2.0, weight)
    assert logs["hard_loss"] == pytest.approx(hard, rel=1e-5)
    assert logs["soft_loss"] == pytest.approx(soft, rel=1e-5)


def test_sequences_are_distilled_position_wise_with_a_mask():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 5, 4)).astype("float32")
    y = rng.integers(0, 6, size=(16, 5))
    mask = (rng.random((16, 5)) > 0.4).astype("float32")

    def sequence_model(name):
        return keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(6)], name=name)

    distiller = keras_kd.Distiller(sequence_model("t"), sequence_model("s"), temperature=2.0).compile()
    logs = distiller.evaluate(x, y, sample_weight=mask, batch_size=16, verbose=0, return_dict=True)
    hard, soft = numpy_terms(distiller, x, y, 2.0, mask)
    assert logs["soft_loss"] == pytest.approx(soft, rel=1e-5)
    assert logs["hard_loss"] == pytest.approx(hard, rel=1e-5)
    history = distiller.fit(x, y, sample_weight=mask, epochs=2, verbose=0)
    assert history.history["soft_loss"][1] < history.history["soft_loss"][0]


def test_unlabeled_batches_train_on_soft_term_alone():
    x, y = toy_data()
    distiller = keras_kd.Distiller(trained_teacher(x, y), dense_model(8, 3), alpha=0.5).compile("adam")
    before = [w.copy() for w in distiller.student.get_weights()]
    history = distiller.fit(x, epochs=3, batch_size=32, verbose=0)
    assert set(history.history) == {"loss", "soft_loss"}
    assert history.history["loss"] == pytest.approx(history.history["soft_loss"])
    assert history.history["soft_loss"][-1] < history.history["soft_loss"][0]
    assert any((a != b).any() for a, b in zip(before, distiller.student.get_weights()))


def test_teacher_is_frozen_bit_identical_after_fit():
    x, y = toy_data()
    teacher = trained_teacher(x, y)
    before = [w.copy() for w in teacher.get_weights()]
    distiller = keras_kd.Distiller(teacher, dense_model(8, 3, hidden=8)).compile("adam")
    assert len(distiller.trainable_variables) == len(distiller.student.trainable_variables)
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    after = teacher.get_weights()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after))


def test_call_and_predict_use_the_student():
    x, y = toy_data()
    distiller = keras_kd.Distiller(trained_teacher(x, y), dense_model(8, 3))
    np.testing.assert_allclose(distiller.predict(x, verbose=0), distiller.student.predict(x, verbose=0))


def test_student_regularization_is_added():
    x, y = toy_data()
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(10.0))]
    )
    distiller = keras_kd.Distiller(trained_teacher(x, y), student, alpha=0.5).compile()
    logs = distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    penalty = 10.0 * float(np.sum(student.layers[0].kernel.numpy() ** 2))
    mix = 0.5 * logs["hard_loss"] + 0.5 * logs["soft_loss"]
    assert logs["loss"] == pytest.approx(mix + penalty, rel=1e-5)


def test_save_load_and_fit_again(tmp_path):
    x, y = toy_data()
    distiller = keras_kd.Distiller(trained_teacher(x, y), dense_model(8, 3), temperature=5.0, alpha=0.2)
    distiller.compile(optimizer="adam", metrics=["accuracy"]).fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_kd.Distiller)
    assert (loaded.temperature, loaded.alpha) == (5.0, pytest.approx(0.2))
    for a, b in zip(distiller.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    history = loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 8
    assert {"loss", "hard_loss", "soft_loss", "accuracy"} <= set(history.history)


def test_student_saves_alone(tmp_path):
    x, y = toy_data()
    distiller = keras_kd.Distiller(trained_teacher(x, y), dense_model(8, 3, name="small")).compile("adam")
    distiller.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "student.keras"
    distiller.student.save(path)
    student = keras.saving.load_model(path)
    assert student.name == "small" and len(student.weights) == len(distiller.student.weights)
    np.testing.assert_allclose(student.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_losses(policy):
    x, y = toy_data()
    keras.config.set_dtype_policy(policy)
    try:
        teacher, student = dense_model(8, 3, hidden=16, name="t"), dense_model(8, 3, hidden=4, name="s")
        distiller = keras_kd.Distiller(teacher, student).compile("adam")
        if policy == "mixed_float16":
            assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
        history = distiller.fit(x, y, epochs=2, batch_size=32, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["soft_loss"][1] < history.history["soft_loss"][0]


def test_student_learns_real_digits_from_the_teacher():
    from keras_kd.demo.datasets import load_mnist

    (x_train, y_train), (x_test, y_test) = load_mnist()
    x_train, y_train = x_train[:2000].reshape(-1, 784), y_train[:2000]
    x_test, y_test = x_test[:1000].reshape(-1, 784), y_test[:1000]
    teacher = dense_model(784, 10, hidden=128, name="teacher")
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    teacher.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0)
    student = dense_model(784, 10, hidden=16, name="student")
    distiller = keras_kd.Distiller(teacher, student, temperature=4.0, alpha=0.1)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    before = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    history = distiller.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
    after = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert history.history["soft_loss"][-1] < 0.5 * history.history["soft_loss"][0]
    assert before["accuracy"] < 0.3 and after["accuracy"] > 0.8
