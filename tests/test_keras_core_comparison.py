"""What the README's comparison with `keras.distillation` (Keras 3.15) rests on, checked side by side."""

import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data
from keras.distillation import Distiller as CoreDistiller
from keras.distillation import LogitsDistillation
from test_losses_logits import reference

import keras_kd


def pair():
    return dense_model(8, 3, hidden=8, name="teacher"), dense_model(8, 3, name="student")


def test_core_default_soft_loss_is_not_hintons_and_ours_is():
    x, _ = toy_data()
    teacher, student = pair()
    t, s = teacher(x), student(x)
    hinton = reference(keras.ops.convert_to_numpy(t), keras.ops.convert_to_numpy(s), 4.0)
    assert float(keras_kd.losses.soft_target_loss(t, s, 4.0)) == pytest.approx(hinton, rel=1e-5)
    core_default = float(LogitsDistillation(temperature=4.0).compute_loss(t, s))
    assert core_default != pytest.approx(hinton, rel=0.05)
    core_configured = LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence())
    assert float(core_configured.compute_loss(t, s)) == pytest.approx(hinton, rel=1e-5)


def test_core_ignores_sample_weight_and_ours_applies_it():
    x, y = toy_data()
    weight = np.zeros(len(x), "float32")
    weight[: len(x) // 2] = 1.0
    teacher, student = pair()
    core = CoreDistiller(teacher, student, distillation_losses=LogitsDistillation(4.0), student_loss_weight=0.0)
    core.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    plain = core.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)["loss"]
    weighted = core.evaluate(x, y, sample_weight=weight, batch_size=len(x), verbose=0, return_dict=True)["loss"]
    assert weighted == pytest.approx(plain)

    ours = keras_kd.Distiller(teacher, student, alpha=0.0).compile()
    plain = ours.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)["loss"]
    weighted = ours.evaluate(x, y, sample_weight=weight, batch_size=len(x), verbose=0, return_dict=True)["loss"]
    assert weighted != pytest.approx(plain, rel=1e-3)


def test_core_cannot_fit_after_reload_and_ours_can(tmp_path):
    x, y = toy_data()
    teacher, student = pair()
    core = CoreDistiller(teacher, student, distillation_losses=LogitsDistillation(4.0))
    core.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    core.fit(x, y, epochs=1, verbose=0)
    core.save(tmp_path / "core.keras")
    with pytest.raises(AttributeError):
        keras.saving.load_model(tmp_path / "core.keras").fit(x, y, epochs=1, verbose=0)

    ours = keras_kd.Distiller(teacher, dense_model(8, 3, name="student2")).compile("adam")
    ours.fit(x, y, epochs=1, verbose=0)
    ours.save(tmp_path / "ours.keras")
    history = keras.saving.load_model(tmp_path / "ours.keras").fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
