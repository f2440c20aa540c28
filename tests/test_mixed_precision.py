"""Mixed precision: a bfloat16 teacher with a float32 student, Keras's mixed policies, float32 loss math."""

import keras
import numpy as np
import pytest
from conftest import toy_data
from test_losses_logits import reference

import keras_kd


def mlp(hidden, name, dtype=None, seed=0):
    init = keras.initializers.GlorotUniform(seed)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(hidden, activation="relu", kernel_initializer=init, dtype=dtype),
            keras.layers.Dense(3, kernel_initializer=init, dtype=dtype, name="logits"),
        ],
        name=name,
    )


@pytest.fixture
def policy():
    """Sets a global dtype policy for one test and restores float32 afterwards."""
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy("float32")


def test_bfloat16_teacher_with_float32_student_keeps_float32_loss_math():
    x, y = toy_data()
    teacher = mlp(32, "teacher", dtype="bfloat16", seed=1)
    student = mlp(4, "student", seed=2)
    dtypes = [keras.backend.standardize_dtype(m(x[:2]).dtype) for m in (teacher, student)]
    assert dtypes == ["bfloat16", "float32"]
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5).compile(
        optimizer=keras.optimizers.Adam(0.01)
    )
    logs = distiller.evaluate(x, y, batch_size=128, verbose=0, return_dict=True)
    t = keras.ops.convert_to_numpy(keras.ops.cast(teacher(x), "float32")).astype(np.float64)
    s = keras.ops.convert_to_numpy(student(x)).astype(np.float64)
    # The bfloat16 logits are cast up once; the divergence is float32, not bfloat16 (~3 significant digits).
    assert logs["soft_loss"] == pytest.approx(reference(t, s, 2.0), rel=1e-5)
    history = distiller.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert history.history["soft_loss"][-1] < history.history["soft_loss"][0]
    assert all(w.dtype == "bfloat16" for w in teacher.weights)
    assert all(w.dtype == "float32" for w in student.weights)


def one_sgd_update(dtype_policy, set_policy):
    set_policy(dtype_policy)
    x, y = toy_data(n=64)
    teacher, student = mlp(16, "teacher", seed=1), mlp(4, "student", seed=2)
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [np.array(w) for w in student.get_weights()]
    distiller.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    set_policy("float32")
    return distiller, [np.array(w, np.float32) - b for w, b in zip(student.get_weights(), before)]


@pytest.mark.parametrize("mixed", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_policies_update_like_float32(policy, mixed):
    _, exact = one_sgd_update("float32", policy)
    distiller, update = one_sgd_update(mixed, policy)
    if mixed == "mixed_float16":
        # Loss scaling: the step scales the loss up and the optimizer divides the gradients back down.
        assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
        assert float(keras.ops.convert_to_numpy(distiller.optimizer.dynamic_scale)) > 1.0
    assert distiller.student.layers[0].compute_dtype == mixed.split("_")[1]
    for got, want in zip(update, exact):
        # Half-precision forward passes change the update by a few percent, never by the loss scale's 2**15.
        np.testing.assert_allclose(got, want, rtol=0.1, atol=0.02 * np.abs(want).max())
