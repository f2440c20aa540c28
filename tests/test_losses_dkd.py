"""Decoupled Knowledge Distillation: the loss against a float64 NumPy reference, and DKD in a Distiller."""

import keras
import numpy as np
import pytest
from backend_grad import gradient, numeric_gradient
from conftest import dense_model, toy_data
from keras import ops
from test_losses_logits import softmax

import keras_kd
from keras_kd.losses import DKD, dkd, dkd_loss, dkd_terms, soft_target_kl, soft_target_loss


def reference_terms(t, s, labels, temperature):
    """float64 `(TCKD, NCKD)` from the paper's definitions, in probability space (no log-sum-exp tricks)."""
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    labels = np.asarray(labels)
    if labels.shape == t.shape:
        labels = labels.argmax(-1)
    target = np.eye(t.shape[-1], dtype=bool)[labels]
    p_t, p_s = softmax(t / temperature), softmax(s / temperature)

    def split(p):
        p_target = np.where(target, p, 0.0).sum(-1)
        p_rest = np.where(target, 0.0, p).sum(-1)  # the sum, not 1 - p_target: exact in float64
        return np.stack([p_target, p_rest], -1), np.where(target, 0.0, p) / p_rest[..., None]

    b_t, hat_t = split(p_t)
    b_s, hat_s = split(p_s)
    tckd = (b_t * (np.log(b_t) - np.log(b_s))).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        nckd = np.where(target, 0.0, hat_t * (np.log(hat_t) - np.log(hat_s))).sum(-1)
    return temperature**2 * tckd, temperature**2 * nckd


def reference(t, s, labels, alpha, beta, temperature, weight=None, reduction="sum_over_batch_size"):
    tckd, nckd = reference_terms(t, s, labels, temperature)
    values = alpha * tckd + beta * nckd
    if weight is None:
        return values.mean()
    weight = np.asarray(weight, np.float64).reshape(np.shape(weight) + (1,) * (values.ndim - np.ndim(weight)))
    weight = np.broadcast_to(weight, values.shape)
    if reduction == "mean_with_sample_weight":
        return (values * weight).sum() / weight.sum()
    return (values * weight).mean()


def numpy_of(value):
    return np.asarray(ops.convert_to_numpy(value), np.float64)


def problem(shape=(16, 7), seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    t, s = (rng.normal(size=(2, *shape)) * scale).astype("float32")
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    return t, s, labels


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
@pytest.mark.parametrize("alpha, beta", [(1.0, 8.0), (1.0, 1.0), (0.5, 2.0)])
def test_matches_numpy_reference(temperature, alpha, beta):
    t, s, labels = problem()
    value = float(dkd_loss(t, s, labels, alpha=alpha, beta=beta, temperature=temperature))
    assert value == pytest.approx(reference(t, s, labels, alpha, beta, temperature), rel=1e-5, abs=1e-6)


def test_terms_match_reference_per_example():
    t, s, labels = problem(seed=1)
    tckd, nckd = dkd_terms(t, s, labels, temperature=4.0)
    ref_tckd, ref_nckd = reference_terms(t, s, labels, 4.0)
    # float32 rounding of terms of size T**2 = 16: absolute 1e-5.
    np.testing.assert_allclose(numpy_of(tckd), ref_tckd, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(numpy_of(nckd), ref_nckd, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(numpy_of(dkd(t, s, labels, 2.0, 3.0, 4.0)), 2 * ref_tckd + 3 * ref_nckd, rtol=1e-4)


def test_one_hot_and_column_labels_equal_class_ids():
    t, s, labels = problem(seed=2)
    expected = float(dkd_loss(t, s, labels))
    assert float(dkd_loss(t, s, np.eye(7)[labels])) == pytest.approx(expected, rel=1e-6)
    assert float(dkd_loss(t, s, labels[:, None])) == pytest.approx(expected, rel=1e-6)
    assert float(dkd_loss(t, s, labels.astype("float32"))) == pytest.approx(expected, rel=1e-6)


def test_sequences_with_masks_and_per_example_weights():
    t, s, labels = problem(shape=(4, 6, 5), seed=3)
    mask = (np.random.default_rng(3).random((4, 6)) > 0.3).astype("float32")
    value = float(dkd_loss(t, s, labels, temperature=2.0, sample_weight=mask))
    assert value == pytest.approx(reference(t, s, labels, 1.0, 8.0, 2.0, mask), rel=1e-5)
    per_example = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    value = float(dkd_loss(t, s, labels[..., None], temperature=2.0, sample_weight=per_example))
    assert value == pytest.approx(reference(t, s, labels, 1.0, 8.0, 2.0, per_example), rel=1e-5)
    value = float(dkd_loss(t, s, labels, 1.0, 8.0, 2.0, sample_weight=mask, reduction="mean_with_sample_weight"))
    assert value == pytest.approx(reference(t, s, labels, 1.0, 8.0, 2.0, mask, "mean_with_sample_weight"), rel=1e-5)


def test_classical_kd_is_tckd_plus_non_target_weighted_nckd():
    """KL(p_t || p_s) = TCKD + (1 - p_t[g]) * NCKD (Zhao et al., eq. 5): pins both definitions."""
    t, s, labels = problem(shape=(3, 5, 9), seed=4)
    for temperature in (1.0, 4.0):
        tckd, nckd = (numpy_of(v) for v in dkd_terms(t, s, labels, temperature))
        p_target = np.take_along_axis(softmax(t.astype(np.float64) / temperature), labels[..., None], -1)[..., 0]
        kd = numpy_of(soft_target_kl(t, s, temperature))
        np.testing.assert_allclose(tckd + (1.0 - p_target) * nckd, kd, rtol=1e-4, atol=1e-5)
        mean_kd = float(soft_target_loss(t, s, temperature))
        assert np.mean(tckd + (1.0 - p_target) * nckd) == pytest.approx(mean_kd, rel=1e-4)
        # alpha = beta = 1 drops the (1 - p_t[g]) factor, so it is never below classical KD.
        assert (numpy_of(dkd(t, s, labels, 1.0, 1.0, temperature)) >= kd - 1e-5).all()


def test_zero_for_equal_logits_and_each_term_reacts_to_its_own_part():
    t, _, labels = problem(seed=5)
    assert float(dkd_loss(t, t, labels)) == pytest.approx(0.0, abs=1e-6)
    # Moving only the non-target logits by a common shift changes p[g] (TCKD) but not p_hat (NCKD).
    target = np.eye(7, dtype=bool)[labels]
    shifted = np.where(target, t, t + 1.5).astype("float32")
    tckd, nckd = (numpy_of(v) for v in dkd_terms(t, shifted, labels, 1.0))
    assert (tckd > 1e-4).all() and np.abs(nckd).max() < 1e-5
    # Reshuffling the non-target classes of the student keeps p[g] (TCKD = 0) and changes NCKD.
    student = t.copy()
    for row, label in zip(student, labels):
        others = [c for c in range(7) if c != label]
        row[others] = row[others][::-1]
    tckd, nckd = (numpy_of(v) for v in dkd_terms(t, student, labels, 1.0))
    assert np.abs(tckd).max() < 1e-5 and nckd.max() > 1e-3


def test_confident_teachers_keep_their_non_target_knowledge():
    """Logits 30 apart at T = 1: 1 - p[g] is below float32's epsilon, but the log-space terms stay exact."""
    t, s, labels = problem(seed=6, scale=1.0)
    target = np.eye(7, dtype=bool)[labels]
    t = np.where(target, t + 30.0, t).astype("float32")
    value = float(dkd_loss(t, s, labels, temperature=1.0))
    assert value == pytest.approx(reference(t, s, labels, 1.0, 8.0, 1.0), rel=1e-4)


def test_finite_for_huge_logits():
    rng = np.random.default_rng(7)
    t, s = rng.choice([-1e4, 1e4], size=(2, 8, 6)).astype("float32")
    labels = rng.integers(0, 6, size=8)
    value = float(dkd_loss(t, s, labels, temperature=1.0))
    assert np.isfinite(value)
    grad = gradient(lambda v: dkd_loss(ops.convert_to_tensor(t), v, labels, temperature=1.0), s)
    assert np.isfinite(grad).all()


def test_float32_under_mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = keras.layers.Dense(10)
        x = np.random.default_rng(8).normal(size=(4, 3)).astype("float32") * 1e3
        t = layer(x)
        assert keras.backend.standardize_dtype(t.dtype) == "bfloat16"
        value = dkd_loss(t, ops.zeros_like(t), np.arange(4), temperature=4.0)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert np.isfinite(float(value))
    finally:
        keras.config.set_dtype_policy("float32")


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_gradient_wrt_student_logits_matches_numeric_reference(temperature):
    t, s, labels = problem(shape=(6, 5), seed=9, scale=2.0)
    grad = gradient(lambda v: dkd_loss(ops.convert_to_tensor(t), v, labels, 1.0, 8.0, temperature), s)
    expected = numeric_gradient(lambda v: reference(t, v, labels, 1.0, 8.0, temperature), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


def test_gradient_of_sequences_with_a_mask():
    t, s, labels = problem(shape=(2, 3, 4), seed=10)
    mask = np.array([[1, 1, 0], [1, 0, 0]], "float32")
    grad = gradient(lambda v: dkd_loss(ops.convert_to_tensor(t), v, labels, 0.5, 2.0, 2.0, sample_weight=mask), s)
    expected = numeric_gradient(lambda v: reference(t, v, labels, 0.5, 2.0, 2.0, mask), s)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)
    assert np.abs(grad[mask == 0]).max() == 0.0


def test_gradient_of_the_terms_sums_to_classical_kd_gradient_at_alpha_one():
    """With beta = 1 - p_t[g] per example the DKD gradient is classical KD's: T * (p_s - p_t) / n."""
    t, s, labels = problem(shape=(1, 6), seed=11)
    temperature = 3.0
    p_t = softmax(t.astype(np.float64) / temperature)
    beta = float(1.0 - p_t[0, labels[0]])
    grad = gradient(lambda v: dkd_loss(ops.convert_to_tensor(t), v, labels, 1.0, beta, temperature), s)
    expected = temperature * (softmax(s.astype(np.float64) / temperature) - p_t)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the Loss class and bad input


def test_loss_class_matches_function_and_serializes():
    t, s, labels = problem(shape=(5, 4), seed=12)
    loss = DKD(alpha=2.0, beta=4.0, temperature=3.0, warmup_epochs=5)
    expected = float(dkd_loss(t, s, labels, 2.0, 4.0, 3.0))
    assert float(loss((labels, t), s)) == pytest.approx(expected, rel=1e-6)
    weight = np.array([1.0, 0.0, 1.0, 2.0, 1.0], "float32")
    assert float(loss((labels, t), s, sample_weight=weight)) == pytest.approx(
        float(dkd_loss(t, s, labels, 2.0, 4.0, 3.0, sample_weight=weight)), rel=1e-6
    )
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, DKD)
    assert (clone.alpha, clone.beta, clone.temperature, clone.warmup_epochs) == (2.0, 4.0, 3.0, 5)
    assert [clone.warmup_weight(e) for e in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert DKD().warmup_weight(0) == 1.0
    with pytest.raises(ValueError, match=r"y_true = \(labels, teacher_logits\)"):
        loss(t, s)
    with pytest.raises(ValueError, match="DKD needs the ground-truth labels"):
        loss.per_position(t, s)


def test_bad_arguments_are_refused():
    t, s, labels = problem(shape=(2, 3))
    with pytest.raises(ValueError, match="DKD's alpha must be a finite number >= 0, got -1"):
        dkd_loss(t, s, labels, alpha=-1.0)
    with pytest.raises(TypeError, match="DKD's beta must be a number, got '8'"):
        DKD(beta="8")
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        DKD(temperature=0)
    with pytest.raises(ValueError, match="warmup_epochs must be an integer >= 0, got 2.5"):
        DKD(warmup_epochs=2.5)
    with pytest.raises(ValueError, match=r"Labels of shape \(2, 2\) fit neither"):
        dkd_loss(t, s, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="Unknown reduction"):
        dkd_loss(t, s, labels, reduction="sum")


# ----------------------------------------------------------------------------- in a Distiller


def logits(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def evaluate(distiller, x, y, **kwargs):
    return distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True, **kwargs)


def distiller_with_dkd(temperature=2.0, alpha=0.5, **dkd_kwargs):
    teacher, student = dense_model(8, 3, hidden=8, name="teacher"), dense_model(8, 3, name="student")
    soft_loss = DKD(temperature=temperature, **{"alpha": 1.0, "beta": 4.0, **dkd_kwargs})
    return keras_kd.Distiller(teacher, student, temperature=temperature, alpha=alpha, soft_loss=soft_loss)


def test_the_distiller_passes_labels_sparse_or_one_hot_and_sample_weights():
    x, y = toy_data(n=32)
    distiller = distiller_with_dkd().compile()
    t, s = logits(distiller.teacher, x), logits(distiller.student, x)
    expected = reference(t, s, y, 1.0, 4.0, 2.0)
    logs = evaluate(distiller, x, y)
    assert logs["soft_loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["loss"] == pytest.approx(0.5 * logs["hard_loss"] + 0.5 * expected, rel=1e-5)
    assert evaluate(distiller, x, np.eye(3)[y])["soft_loss"] == pytest.approx(expected, rel=1e-5)
    weight = np.linspace(0.0, 2.0, 32).astype("float32")
    weighted = evaluate(distiller, x, y, sample_weight=weight)["soft_loss"]
    assert weighted == pytest.approx(reference(t, s, y, 1.0, 4.0, 2.0, weight), rel=1e-5)


def test_the_distillers_temperature_variable_is_the_one_used():
    x, y = toy_data(n=32)
    distiller = distiller_with_dkd().compile()
    evaluate(distiller, x, y)  # traced at T = 2
    distiller.temperature = 5.0
    t, s = logits(distiller.teacher, x), logits(distiller.student, x)
    assert evaluate(distiller, x, y)["soft_loss"] == pytest.approx(reference(t, s, y, 1.0, 4.0, 5.0), rel=1e-5)
    with pytest.raises(ValueError, match=r"DKD\(temperature=4.0\) and Distiller\(temperature=2.0\)"):
        keras_kd.Distiller(dense_model(8, 3), dense_model(8, 3), temperature=2.0, soft_loss=DKD())


def test_warmup_ramps_the_soft_term_in_compiled_steps():
    """The paper's warm-up: epoch e (from 0) weighs DKD by min((e + 1) / N, 1), read from a variable."""
    x, y = toy_data(n=32)
    distiller = distiller_with_dkd(warmup_epochs=3)
    # Learning rate 0: the models stay put, so the soft term changes only through the warm-up weight.
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    assert not distiller.run_eagerly
    history = distiller.fit(x, y, epochs=5, batch_size=16, shuffle=False, verbose=0).history
    weights = [1 / 3, 2 / 3, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(history["soft_loss_warmup"], weights, rtol=1e-6)
    full = reference(logits(distiller.teacher, x), logits(distiller.student, x), y, 1.0, 4.0, 2.0)
    np.testing.assert_allclose(history["soft_loss"], np.array(weights) * full, rtol=1e-4)
    np.testing.assert_allclose(
        history["loss"], 0.5 * np.array(history["hard_loss"]) + 0.5 * np.array(weights) * full, rtol=1e-4
    )
    # Resuming with initial_epoch continues the ramp where it was.
    resumed = distiller.fit(x, y, initial_epoch=1, epochs=2, batch_size=16, verbose=0).history
    np.testing.assert_allclose(resumed["soft_loss_warmup"], [2 / 3], rtol=1e-6)
    assert distiller.soft_loss_warmup == pytest.approx(2 / 3)


def test_warmup_weight_can_be_set_for_loops_of_your_own():
    x, y = toy_data(n=32)
    distiller = distiller_with_dkd(warmup_epochs=4).compile(optimizer=keras.optimizers.SGD(0.0))
    assert distiller.soft_loss_warmup == pytest.approx(0.25)  # epoch 0's weight until fit sets it
    first = distiller.train_on_batch(x, y, return_dict=True)["soft_loss"]
    distiller.soft_loss_warmup = 1.0
    assert distiller.train_on_batch(x, y, return_dict=True)["soft_loss"] == pytest.approx(4 * first, rel=1e-5)
    with pytest.raises(ValueError, match=r"soft_loss_warmup must be a number in \[0, 1\], got 2"):
        distiller.soft_loss_warmup = 2
    plain = distiller_with_dkd()
    assert plain.soft_loss_warmup == 1.0
    with pytest.raises(ValueError, match=r"has no warm-up \(warmup_epochs=0\)"):
        plain.soft_loss_warmup = 0.5


def test_a_distiller_with_dkd_saves_loads_and_fits_again(tmp_path):
    x, y = toy_data(n=32)
    distiller = distiller_with_dkd(warmup_epochs=4, beta=6.0)
    distiller.compile("adam").fit(x, y, epochs=2, batch_size=16, verbose=0)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")
    assert isinstance(loaded.soft_loss, DKD)
    assert (loaded.soft_loss.beta, loaded.soft_loss.warmup_epochs) == (6.0, 4)
    assert loaded.soft_loss_warmup == pytest.approx(0.5)
    assert evaluate(loaded, x, y)["soft_loss"] == pytest.approx(evaluate(distiller, x, y)["soft_loss"], rel=1e-5)
    history = loaded.fit(x, y, initial_epoch=2, epochs=3, batch_size=16, verbose=0).history
    assert history["soft_loss_warmup"] == pytest.approx([0.75]) and np.isfinite(history["loss"]).all()
