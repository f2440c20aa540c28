"""The distiller's `soft_loss` choice: forward KL, reverse KL, generalized JSD, or a callable."""

import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data

import keras_kd
from keras_kd.losses import GeneralizedJSD, generalized_jsd_loss, reverse_kl_loss, soft_target_loss


def logits(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def evaluate(distiller, x, y, **kwargs):
    return distiller.compile().evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True, **kwargs)


@pytest.mark.parametrize(
    "soft_loss, reference",
    [
        ("kl", lambda t, s: soft_target_loss(t, s, 2.0)),
        ("reverse_kl", lambda t, s: reverse_kl_loss(t, s, 2.0)),
        (GeneralizedJSD(beta=0.3, temperature=2.0), lambda t, s: generalized_jsd_loss(t, s, 0.3, 2.0)),
    ],
)
def test_the_logged_soft_loss_is_the_chosen_divergence(soft_loss, reference):
    x, y = toy_data(n=32)
    teacher, student = dense_model(8, 3, hidden=8), dense_model(8, 3)
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5, soft_loss=soft_loss)
    logs = evaluate(distiller, x, y)
    expected = float(reference(logits(teacher, x), logits(student, x)))
    assert logs["soft_loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["loss"] == pytest.approx(0.5 * logs["hard_loss"] + 0.5 * expected, rel=1e-5)


def test_a_callable_gets_the_current_temperature_and_the_sample_weight():
    x, y = toy_data(n=32)
    seen = []

    def squared_distance(teacher_logits, student_logits, temperature, sample_weight):
        seen.append(sample_weight is not None)
        values = keras.ops.mean((teacher_logits - student_logits) ** 2, axis=-1) * temperature
        return keras.ops.mean(values * keras.ops.cast(sample_weight, "float32"))

    teacher, student = dense_model(8, 3, hidden=8), dense_model(8, 3)
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, soft_loss=squared_distance)
    weight = np.linspace(0.0, 1.0, 32).astype("float32")
    first = evaluate(distiller, x, y, sample_weight=weight)["soft_loss"]
    distiller.temperature = 4.0
    second = evaluate(distiller, x, y, sample_weight=weight)["soft_loss"]
    assert second == pytest.approx(2.0 * first, rel=1e-5)
    assert all(seen)


def test_the_soft_loss_choice_survives_save_and_load(tmp_path):
    x, y = toy_data(n=32)
    distiller = keras_kd.Distiller(
        dense_model(8, 3, hidden=8), dense_model(8, 3), temperature=2.0, soft_loss=GeneralizedJSD(0.7, 2.0)
    )
    distiller.compile("adam").fit(x, y, epochs=1, verbose=0)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")
    assert isinstance(loaded.soft_loss, GeneralizedJSD) and loaded.soft_loss.beta == 0.7
    assert evaluate(loaded, x, y)["soft_loss"] == pytest.approx(evaluate(distiller, x, y)["soft_loss"], rel=1e-5)


def test_a_callable_that_needs_labels_gets_them_and_refuses_unlabelled_batches():
    x, y = toy_data(n=32)
    seen = []

    def true_class_gap(teacher_logits, student_logits, temperature, sample_weight, labels):
        seen.append(tuple(labels.shape))
        target = keras.ops.one_hot(keras.ops.cast(labels, "int32"), 3)
        return keras.ops.mean(keras.ops.sum((teacher_logits - student_logits) * target, axis=-1) ** 2)

    true_class_gap.needs_labels = True
    teacher, student = dense_model(8, 3, hidden=8), dense_model(8, 3)
    distiller = keras_kd.Distiller(teacher, student, soft_loss=true_class_gap)
    gap = (logits(teacher, x) - logits(student, x))[np.arange(32), y]
    assert evaluate(distiller, x, y)["soft_loss"] == pytest.approx(float(np.mean(gap**2)), rel=1e-5)
    assert seen and all(shape[-1:] in ((32,), (None,)) for shape in seen)
    with pytest.raises(ValueError, match="soft_loss true_class_gap needs the labels of every batch"):
        distiller.fit(x, epochs=1, verbose=0)
