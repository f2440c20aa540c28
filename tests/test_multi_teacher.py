"""Several teachers: the mixture of tempered probabilities, online and from a cache, and bad input."""

import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data
from keras import ops
from test_losses_dkd import reference as dkd_reference
from test_losses_logits import log_softmax, softmax

import keras_kd
from keras_kd.cache import TeacherCache
from keras_kd.losses import DKD, GeneralizedJSD, mixture_logits


def logits(model, x):
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float64)


def evaluate(distiller, x, y, **kwargs):
    return distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True, **kwargs)


def teachers(count=3, classes=3):
    return [dense_model(8, classes, hidden=4 + 4 * i, name=f"teacher_{i}") for i in range(count)]


def mixture(teacher_logits, weights, temperature):
    """float64 `sum_i w_i softmax(z_i / T)`."""
    weights = np.asarray(weights, np.float64) / np.sum(weights)
    return sum(w * softmax(z / temperature) for w, z in zip(weights, teacher_logits))


def kl(p, log_q):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - log_q), 0.0).sum(-1)


REFERENCES = {
    "kl": lambda p, s, y, temp: (temp**2 * kl(p, log_softmax(s / temp))).mean(),
    "reverse_kl": lambda p, s, y, temp: (temp**2 * kl(softmax(s / temp), np.log(p))).mean(),
    "jsd": lambda p, s, y, temp: (
        temp**2
        * (
            0.5 * kl(p, np.log(0.5 * p + 0.5 * softmax(s / temp)))
            + 0.5 * kl(softmax(s / temp), np.log(0.5 * p + 0.5 * softmax(s / temp)))
        )
    ).mean(),
    # DKD of the mixture: logits with softmax(z / T) = p, i.e. z = T * log p.
    "dkd": lambda p, s, y, temp: dkd_reference(temp * np.log(p), s, y, 1.0, 4.0, temp),
}


def soft_loss_object(name, temperature):
    return {
        "kl": "kl",
        "reverse_kl": "reverse_kl",
        "jsd": GeneralizedJSD(beta=0.5, temperature=temperature),
        "dkd": DKD(alpha=1.0, beta=4.0, temperature=temperature),
    }[name]


# ----------------------------------------------------------------------------- the mixture


def test_mixture_logits_give_the_weighted_mixture_of_tempered_probabilities():
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(4, 3, 5, 6)) * 4).astype("float32")  # (batch, teachers, positions, classes)
    weights = [0.5, 0.2, 0.3]
    for temperature in (1.0, 3.0):
        mixed = mixture_logits(z, temperature, weights, axis=1)
        assert tuple(mixed.shape) == (4, 5, 6)
        p = ops.convert_to_numpy(ops.softmax(mixed / temperature, axis=-1))
        expected = mixture(np.moveaxis(z.astype(np.float64), 1, 0), weights, temperature)
        np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-7)
    # A teacher of weight 0 is left out entirely, even with extreme logits.
    z[:, 2] = 1e9
    p = ops.convert_to_numpy(ops.softmax(mixture_logits(z, 2.0, [0.5, 0.5, 0.0]) / 2.0, axis=-1))
    np.testing.assert_allclose(p, mixture(np.moveaxis(z[:, :2].astype(np.float64), 1, 0), [1, 1], 2.0), rtol=1e-5)


def test_mixture_is_not_the_average_of_logits():
    """Averaging logits is the (normalized) geometric mean: sharper, and dominated by the larger-scale teacher."""
    z = np.array([[[8.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], "float32")
    arithmetic = ops.convert_to_numpy(ops.softmax(mixture_logits(z, 1.0)))
    geometric = softmax(z.mean(axis=1).astype(np.float64))
    np.testing.assert_allclose(arithmetic, mixture(np.moveaxis(z, 1, 0).astype(np.float64), [1, 1], 1.0), rtol=1e-5)
    assert geometric[0, 0] > arithmetic[0, 0] + 0.2


# ----------------------------------------------------------------------------- online multi-teacher distillation


@pytest.mark.parametrize("soft_loss", ["kl", "reverse_kl", "jsd", "dkd"])
def test_the_soft_term_compares_the_student_with_the_weighted_mixture(soft_loss):
    x, y = toy_data(n=32)
    models, student = teachers(3), dense_model(8, 3, name="student")
    weights = [2.0, 1.0, 1.0]
    distiller = keras_kd.Distiller(
        models, student, temperature=2.0, alpha=0.3, soft_loss=soft_loss_object(soft_loss, 2.0), teacher_weights=weights
    ).compile()
    assert distiller.num_teachers == 3 and distiller.teacher_weights == pytest.approx([0.5, 0.25, 0.25])
    logs = evaluate(distiller, x, y)
    p = mixture([logits(t, x) for t in models], weights, 2.0)
    expected = REFERENCES[soft_loss](p, logits(student, x), y, 2.0)
    assert logs["soft_loss"] == pytest.approx(expected, rel=1e-4)
    hard = -np.take_along_axis(log_softmax(logits(student, x)), y[:, None], -1).mean()
    assert logs["hard_loss"] == pytest.approx(hard, rel=1e-5)  # the labels' term ignores the teachers
    assert logs["loss"] == pytest.approx(0.3 * hard + 0.7 * expected, rel=1e-4)


def test_the_mixture_follows_the_temperature_variable_and_uniform_weights_by_default():
    x, y = toy_data(n=32)
    models, student = teachers(2), dense_model(8, 3)
    distiller = keras_kd.Distiller(models, student, temperature=2.0).compile()
    assert distiller.teacher_weights == [0.5, 0.5]
    evaluate(distiller, x, y)  # traced at T = 2
    distiller.temperature = 6.0
    p = mixture([logits(t, x) for t in models], [1, 1], 6.0)
    assert evaluate(distiller, x, y)["soft_loss"] == pytest.approx(
        REFERENCES["kl"](p, logits(student, x), y, 6.0), 1e-4
    )


def test_a_weight_of_zero_is_the_other_teacher_alone_and_a_one_element_list_is_a_single_teacher():
    x, y = toy_data(n=32)
    models, student = teachers(2), dense_model(8, 3)
    single = evaluate(keras_kd.Distiller(models[0], student, temperature=3.0).compile(), x, y)
    mixed = evaluate(keras_kd.Distiller(models, student, temperature=3.0, teacher_weights=[1, 0]).compile(), x, y)
    listed = keras_kd.Distiller([models[0]], student, temperature=3.0, teacher_weights=[5.0]).compile()
    assert listed.num_teachers == 1 and listed.teacher_weights == [1.0]
    assert mixed["soft_loss"] == pytest.approx(single["soft_loss"], rel=1e-5)
    assert evaluate(listed, x, y)["soft_loss"] == pytest.approx(single["soft_loss"], rel=1e-6)


def count_calls(model):
    calls = {"n": 0}
    original = model.call

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    model.call = counting
    return calls


def test_each_teacher_runs_once_per_step_and_stays_frozen():
    x, y = toy_data(n=64)
    models, student = teachers(3), dense_model(8, 3)
    before = [[np.copy(w) for w in t.get_weights()] for t in models]
    distiller = keras_kd.Distiller(models, student).compile("adam", run_eagerly=True)
    calls = [count_calls(t) for t in models]
    student_before = [np.copy(w) for w in student.get_weights()]
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    # 4 steps, plus one eager call on the first batch, which checks that each teacher's outputs are finite.
    assert [c["n"] for c in calls] == [4 + 1] * 3
    assert all(t.trainable for t in models)  # left as given; kept out of the gradient instead
    for t, weights in zip(models, before):
        for a, b in zip(t.get_weights(), weights):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(student.get_weights(), student_before))
    assert len(distiller.trainable_variables) == len(student.trainable_variables)


def test_compiled_fit_trains_the_student_on_every_backend():
    x, y = toy_data(n=64)
    distiller = keras_kd.Distiller(teachers(2), dense_model(8, 3), soft_loss=DKD(warmup_epochs=2)).compile("adam")
    history = distiller.fit(x, y, epochs=3, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert history["soft_loss_warmup"] == pytest.approx([0.5, 1.0, 1.0])


def test_config_round_trip_and_keras_file(tmp_path):
    x, y = toy_data(n=32)
    distiller = keras_kd.Distiller(teachers(2), dense_model(8, 3), temperature=3.0, teacher_weights=[3, 1])
    distiller.compile("adam").fit(x, y, epochs=1, batch_size=16, verbose=0)
    clone = keras_kd.Distiller.from_config(distiller.get_config())
    assert clone.num_teachers == 2 and clone.teacher_weights == pytest.approx([0.75, 0.25])
    assert [t.name for t in clone.teachers] == ["teacher_0", "teacher_1"]
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")
    assert loaded.teacher_weights == pytest.approx([0.75, 0.25]) and loaded.temperature == 3.0
    for a, b in zip(distiller.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert evaluate(loaded, x, y)["soft_loss"] == pytest.approx(evaluate(distiller, x, y)["soft_loss"], rel=1e-6)
    history = loaded.fit(x, y, epochs=1, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"]).all() and int(loaded.optimizer.iterations.numpy()) == 4


# ----------------------------------------------------------------------------- from a cache


def test_a_cache_of_several_teachers_reproduces_the_online_trajectory(tmp_path):
    x, y = toy_data(n=48)
    models = teachers(3)
    cache = TeacherCache.build(models, (x, y), str(tmp_path / "c"), batch_size=16, verbose=0)
    assert cache.num_teachers == 3 and cache.logits_shape == (3,)
    assert len(cache.teacher_fingerprint) == 3
    batch = cache.dataset(batch_size=48, shuffle=False)[0][0]["teacher_logits"]
    assert batch.shape == (48, 3, 3)  # (batch, teachers, classes)
    for i, t in enumerate(models):
        np.testing.assert_allclose(batch[:, i], logits(t, x), rtol=1e-2, atol=1e-2)

    online_student = dense_model(8, 3, hidden=4, name="student")
    cached_student = dense_model(8, 3, hidden=4, name="student")
    cached_student.set_weights(online_student.get_weights())
    weights = [1.0, 2.0, 1.0]
    online = keras_kd.Distiller(models, online_student, temperature=2.0, alpha=0.3, teacher_weights=weights)
    online.compile(optimizer=keras.optimizers.SGD(0.1))
    expected = online.fit(x, y, batch_size=16, shuffle=False, epochs=2, verbose=0).history
    calls = [count_calls(t) for t in models]
    cached = keras_kd.Distiller(cache, cached_student, temperature=2.0, alpha=0.3, teacher_weights=weights)
    assert cached.num_teachers == 3
    cached.compile(optimizer=keras.optimizers.SGD(0.1))
    got = cached.fit(cache.dataset(16, shuffle=False), epochs=2, shuffle=False, verbose=0).history
    assert [c["n"] for c in calls] == [0, 0, 0]
    for key in ("loss", "soft_loss", "hard_loss"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-2, err_msg=key)
    assert got["loss"][1] != got["loss"][0]
    with pytest.raises(ValueError, match="teacher_weights has 2 values"):
        keras_kd.Distiller(cache, dense_model(8, 3), teacher_weights=[1, 1])


class Unshaped(keras.Model):
    """A subclassed teacher: its output shape is only known once it runs."""

    def __init__(self, classes, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(classes)

    def call(self, x, training=False):
        return self.dense(x)


def test_output_shapes_of_subclassed_teachers_are_checked_on_the_first_batch():
    x, y = toy_data(n=16)
    wide = Unshaped(5, name="unshaped")
    wide(x[:1])
    distiller = keras_kd.Distiller([dense_model(8, 3, name="plain"), wide], dense_model(8, 3)).compile("sgd")
    with pytest.raises(ValueError, match=r"teacher\[0\] 'plain' outputs \((None|16), 3\) but teacher\[1\] 'unshaped'"):
        distiller.fit(x, y, epochs=1, verbose=0)
