"""PyTorch: one device per process. The distiller trains on the device Keras picks; keras.distribution is absent.

Keras 3.15's torch backend has no `keras.distribution` support (its `distribution_lib` is None) and
its trainer does not wrap models in torch's DistributedDataParallel, so multi-device distillation
means the JAX or TensorFlow backend (docs/distribution.md).
"""

import keras
import pytest
from conftest import toy_data

import keras_kd

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch backend's device placement")


@keras.saving.register_keras_serializable(package="keras_kd_tests")
class DeviceProbe(keras.layers.Layer):
    """Identity that records the device of every tensor it sees (torch runs the steps eagerly)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, inputs):
        self.seen.append(inputs.device)
        return inputs


def mlp(width, name):
    probe = DeviceProbe(name="probe")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            probe,
            keras.layers.Dense(width, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ],
        name=name,
    )
    return model, probe


def keras_device():
    """The device Keras's torch backend places tensors on (KERAS_TORCH_DEVICE, else cuda/mps/xpu/cpu)."""
    import torch
    from keras.src.backend.torch.core import get_device

    return torch.device(get_device())


def all_variables(distiller):
    return distiller.variables + distiller.optimizer.variables + distiller.metrics_variables


@pytest.mark.timeout(60)
def test_teacher_student_regressor_and_inputs_share_keras_device():
    x, y = toy_data(n=64)
    teacher, teacher_probe = mlp(16, "teacher")
    student, student_probe = mlp(4, "student")
    distiller = keras_kd.Distiller(teacher, student, pairs=[keras_kd.Hint("hidden", "hidden")])
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    teacher_probe.seen.clear()
    student_probe.seen.clear()
    history = distiller.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    assert history.history["loss"][-1] < history.history["loss"][0]
    assert len(teacher_probe.seen) >= 8 and len(student_probe.seen) >= 8  # 2 epochs x 4 batches, both models
    regressor = distiller.pairs[0].regressor
    parts = {
        "teacher": teacher.weights,
        "student": student.weights,
        "regressor": regressor.weights,
        "distiller and optimizer": all_variables(distiller),
    }
    assert regressor.weights and distiller.optimizer.variables
    devices = {name: {v.value.device for v in variables} for name, variables in parts.items()}
    devices["teacher inputs"] = set(teacher_probe.seen)
    devices["student inputs"] = set(student_probe.seen)
    every_device = set().union(*devices.values())
    assert len(every_device) == 1, devices
    (device,) = every_device
    assert device.type == keras_device().type, devices


@pytest.mark.timeout(60)
def test_keras_distribution_is_not_available_on_torch():
    # The public entry points that look for devices fail: the torch backend has no distribution_lib.
    with pytest.raises(AttributeError, match="list_devices"):
        keras.distribution.list_devices()
    with pytest.raises(AttributeError, match="list_devices"):
        keras.distribution.DataParallel()
    with pytest.raises(AttributeError, match="initialize"):
        keras.distribution.initialize()


@pytest.mark.timeout(60)
def test_a_data_parallel_given_devices_is_refused_on_torch():
    """`DataParallel(devices=[...])` constructs (it never asks the backend), and Keras's own fit would ignore it:
    the distiller refuses to run under it instead; outside it, the same distiller trains."""
    x, y = toy_data(n=64)
    distribution = keras.distribution.DataParallel(devices=["cpu:0", "cpu:1"])
    assert distribution.device_mesh.shape == (2,)
    with distribution.scope():
        teacher, _ = mlp(16, "teacher")
        student, _ = mlp(4, "student")
        distiller = keras_kd.Distiller(teacher, student, pairs=[keras_kd.Hint("hidden", "hidden")])
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        with pytest.raises(ValueError, match="fit\\(\\) was called under keras.distribution.DataParallel"):
            distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
        with pytest.raises(ValueError, match="predict_on_batch\\(\\) was called under"):
            distiller.predict_on_batch(x)
        # Keras's own fit, on a plain model, runs and ignores the distribution: what the error prevents.
        plain, _ = mlp(4, "plain")
        plain.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        plain.fit(x, y, batch_size=16, epochs=1, verbose=0)
    history = distiller.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
