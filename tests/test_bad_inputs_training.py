"""The bad-input catalogue, training-time checks (issue 17): what `fit` and `TeacherCache.build` catch.

Non-finite inputs (refused by the cache build; during online training the logged loss turns NaN
once the student's weights do), single-logit (binary) heads, exceptions inside `fit` and
`evaluate` on JAX, and validation data for a cache-trained distiller. See `tests/test_bad_inputs.py`
for the rules every test follows and `docs/bad_inputs.md` for the table. Every test runs on every
backend.
"""

import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data

import keras_kd
from keras_kd.cache import TeacherCache


def weights_of(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


class Batches(keras.callbacks.Callback):
    """Counts the training batches that ran."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


# ----------------------------------------------------------------------------- non-finite inputs (item 5)


def test_nan_inputs_are_refused_by_the_cache_build(tmp_path):
    # A ReLU teacher: compiled TensorFlow maps NaN to 0, so the teacher's outputs alone would look finite.
    x, y = toy_data(n=128)
    x[40, 3] = np.nan
    x[45] = np.inf
    teacher = dense_model(8, 3, hidden=16, name="teacher")
    directory = str(tmp_path / "c")
    with pytest.raises(
        ValueError,
        match=r"TeacherCache.build's data holds 9 non-finite input values \(NaN or Inf\) at example 40 \(and 1 more "
        r"in this batch\).*look finite: TensorFlow's compiled ReLU maps NaN to 0.*drop those examples, or impute them "
        r"\(e.g. np.nan_to_num\(x\)\); a build then resumes",
    ):
        TeacherCache.build(teacher, (x, y), directory, batch_size=32, examples_per_shard=32, verbose=0)
    # The teacher's variables hold their values after the failed build (on JAX the build carries them through
    # the compiled predict step, which donates their buffers).
    clean = np.where(np.isfinite(x), x, 0.0)
    expected = keras.ops.convert_to_numpy(teacher(clean))
    np.testing.assert_allclose(teacher.predict(clean, verbose=0), expected, rtol=1e-5, atol=1e-6)
    # The batches before the bad one are kept; the build resumes from them once the data is clean.
    cache = TeacherCache.build(teacher, (clean, y), directory, batch_size=32, verbose=0)
    assert len(cache) == 128


def test_a_nan_row_mid_epoch_turns_the_logged_loss_nan():
    """Online training: the NaN row is in the second batch, past the first-batch check.

    On TensorFlow the loss of that batch stays finite (compiled ReLU maps NaN to 0) while the
    gradient turns the first kernel NaN; the logged `loss` turns NaN with the weights, so
    `TerminateOnNaN` stops the run at that batch.
    """
    x, y = toy_data(n=128)
    x[40] = np.nan
    teacher = dense_model(8, 3, hidden=16, name="teacher")
    distiller = keras_kd.Distiller(teacher, dense_model(8, 3, hidden=16, name="student")).compile("adam")
    batches = Batches()
    history = distiller.fit(
        x, y, batch_size=32, epochs=3, shuffle=False, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN(), batches]
    )
    assert batches.count == 2, "TerminateOnNaN stops at the batch with the NaN row"
    assert np.isnan(history.history["loss"][-1])
    assert not all(np.isfinite(w).all() for w in weights_of(distiller.student))
    # Without TerminateOnNaN, every later epoch's loss stays NaN: the bad weights do not pass silently.
    distiller = keras_kd.Distiller(teacher, dense_model(8, 3, hidden=16, name="student")).compile("adam")
    losses = distiller.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0).history["loss"]
    assert np.isnan(losses).all()
    # Clean data trains with finite losses, as before.
    distiller = keras_kd.Distiller(teacher, dense_model(8, 3, hidden=16, name="student")).compile("adam")
    assert np.isfinite(distiller.fit(np.nan_to_num(x), y, batch_size=32, verbose=0).history["loss"]).all()


# ----------------------------------------------------------------------------- binary heads (item 9)


def bernoulli_kl(t, s, temperature):
    """float64 `T**2 * KL(Bernoulli(sigmoid(t/T)) || Bernoulli(sigmoid(s/T)))` per example."""
    t, s = np.asarray(t, np.float64)[:, 0] / temperature, np.asarray(s, np.float64)[:, 0] / temperature
    log_p1, log_p0, log_q1, log_q0 = (
        -np.logaddexp(0, -t),
        -np.logaddexp(0, t),
        -np.logaddexp(0, -s),
        -np.logaddexp(0, s),
    )
    return temperature**2 * (np.exp(log_p1) * (log_p1 - log_q1) + np.exp(log_p0) * (log_p0 - log_q0))


def test_a_single_logit_head_distils_with_the_bernoulli_kl():
    """Not an error: `Dense(1)` outputs get the Bernoulli soft loss and binary cross-entropy, not 0."""
    x, _ = toy_data(n=64)
    y = (x[:, 0] > 0).astype("int64")
    teacher = dense_model(8, 1, hidden=16, name="teacher")
    student = dense_model(8, 1, hidden=16, name="student")
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.3).compile("sgd")
    logs = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    soft = bernoulli_kl(t, s, 2.0).mean()
    hard = np.mean(np.logaddexp(0, s[:, 0]) - y * s[:, 0])  # binary cross-entropy from logits
    assert logs["soft_loss"] == pytest.approx(soft, rel=1e-5) and soft > 1e-4
    assert logs["hard_loss"] == pytest.approx(hard, rel=1e-5)
    assert logs["loss"] == pytest.approx(0.3 * hard + 0.7 * soft, rel=1e-5)
    # With alpha=0 the soft term alone trains the student (it did nothing before: a softmax of one logit is 1).
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.0).compile(keras.optimizers.Adam(0.01))
    before = weights_of(student)
    soft_losses = distiller.fit(x, y, batch_size=16, epochs=3, verbose=0).history["soft_loss"]
    assert soft_losses[-1] < soft_losses[0]
    assert not all(np.allclose(a, b) for a, b in zip(before, weights_of(student)))
    # Every built-in soft loss has its Bernoulli form (the softmax of the two-class logits [0, z]).
    for soft_loss in ("reverse_kl", keras_kd.losses.GeneralizedJSD(beta=0.5, temperature=2.0)):
        other = keras_kd.Distiller(teacher, student, temperature=2.0, soft_loss=soft_loss).compile("sgd")
        assert other.evaluate(x, y, verbose=0, return_dict=True)["soft_loss"] > 1e-4


# ----------------------------------------------------------------------------- exceptions inside fit (item 20)


class Fragile(keras.layers.Layer):
    """The identity, or an error in training steps while `failing` is set."""

    failing = False

    def call(self, inputs, training=None):
        if training and Fragile.failing:
            raise RuntimeError("Fragile fails in this training step")
        return inputs


def fragile_student():
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16), Fragile(), keras.layers.Dense(3)], name="fragile"
    )


def test_an_exception_inside_fit_or_evaluate_leaves_the_models_usable():
    """JAX's trainer moves the variables' values into its state; an exception in a step used to leave them empty."""
    x, y = toy_data(n=64)
    teacher = dense_model(8, 3, hidden=16, name="teacher")
    distiller = keras_kd.Distiller(teacher, fragile_student()).compile("adam")
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    before = weights_of(distiller.student)
    Fragile.failing = True
    distiller.make_train_function(force=True)  # traced again, so that the training step runs Fragile's check
    try:
        with pytest.raises(RuntimeError, match="Fragile fails in this training step"):
            distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
        with pytest.raises(RuntimeError, match="Fragile fails in this training step"):
            distiller.train_on_batch(x[:16], y[:16])
    finally:
        Fragile.failing = False
    for after_failure, expected in zip(weights_of(distiller.student), before):
        np.testing.assert_array_equal(after_failure, expected)  # the last values, before the failed step
    assert distiller.predict(x, verbose=0).shape == (64, 3)
    assert teacher.predict(x, verbose=0).shape == (64, 3)
    # An error inside evaluate (labels that fit no class layout, found in the first step).
    with pytest.raises(ValueError, match=r"Labels of shape \(\d+, 5\) fit neither"):
        distiller.evaluate(x, np.zeros((64, 5)), batch_size=16, verbose=0)
    assert distiller.predict(x, verbose=0).shape == (64, 3)
    # Once the input is fixed, fit trains again.
    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert not all(np.allclose(a, b) for a, b in zip(before, weights_of(distiller.student)))


# ----------------------------------------------------------------------------- validating a cache distiller (item 24)


def caches(tmp_path):
    x, y = toy_data(n=64)
    x_val, y_val = toy_data(n=32, seed=1)
    teacher = dense_model(8, 3, hidden=16, name="teacher")
    cache = TeacherCache.build(teacher, (x, y), str(tmp_path / "train"), verbose=0)
    val_cache = TeacherCache.build(teacher, (x_val, y_val), str(tmp_path / "val"), verbose=0)
    return teacher, cache, val_cache, (x_val, y_val)


def test_plain_validation_data_for_a_cache_distiller(tmp_path):
    teacher, cache, val_cache, (x_val, y_val) = caches(tmp_path)
    distiller = keras_kd.Distiller(cache, dense_model(8, 3, name="student")).compile("adam")
    before = weights_of(distiller.student)
    with pytest.raises(
        ValueError,
        match=r"fit\(validation_data=...\) holds plain inputs, but this Distiller reads the teacher's outputs from "
        r"the cache in .*train and has no teacher model to run on them. Build a cache of the validation data.*"
        r"TeacherCache.build\(teacher, \(x_val, y_val\), directory\).*val_cache.dataset\(batch_size, shuffle=False\)",
    ):
        distiller.fit(cache.dataset(16), validation_data=(x_val, y_val), epochs=1, verbose=0)
    for after, expected in zip(weights_of(distiller.student), before):
        np.testing.assert_array_equal(after, expected)  # refused before the first epoch
    with pytest.raises(ValueError, match=r"evaluate\(\)'s data holds plain inputs.*Build a cache"):
        distiller.evaluate(x_val, y_val, verbose=0)
    # A model distiller given a validation cache.
    online = keras_kd.Distiller(teacher, dense_model(8, 3, name="student")).compile("adam")
    x, y = toy_data(n=32)
    with pytest.raises(
        ValueError,
        match=r"fit\(validation_data=...\) holds cached teacher outputs \(from a TeacherCache\), but this Distiller "
        r"runs a teacher model. Pass plain inputs, \(x_val, y_val\), or build the Distiller on the cache",
    ):
        online.fit(x, y, validation_data=val_cache.dataset(16, shuffle=False), epochs=1, verbose=0)


def test_a_validation_cache_validates_a_cache_distiller(tmp_path):
    """Not an error: `validation_data=val_cache.dataset(...)`, a cache of the validation data from the same teacher."""
    _, cache, val_cache, _ = caches(tmp_path)
    distiller = keras_kd.Distiller(cache, dense_model(8, 3, name="student")).compile("adam", metrics=["accuracy"])
    history = distiller.fit(
        cache.dataset(16), validation_data=val_cache.dataset(16, shuffle=False), epochs=2, verbose=0
    ).history
    assert {"val_loss", "val_soft_loss", "val_hard_loss", "val_accuracy"} <= set(history)
    logs = distiller.evaluate(val_cache.dataset(16, shuffle=False), verbose=0, return_dict=True)
    assert logs["soft_loss"] == pytest.approx(history["val_soft_loss"][-1], rel=1e-5)
