"""`Distiller(..., augment=...)`: one augmented view per training step, seen by teacher and student alike."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_kd

SHAPE = (8, 8, 1)


class Recorder(keras.layers.Layer):
    """Passes its input on and keeps a NumPy copy of it (the steps run eagerly in these tests)."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.record = log.append  # a bound method: Keras would track (and copy) a list attribute

    def call(self, x):
        try:
            value = keras.ops.convert_to_numpy(x).copy()
        except Exception:  # a symbolic build (KerasTensor, JAX tracer): nothing to record
            return x
        self.record(value)
        return x


def recorded(name, width, log):
    return keras.Sequential(
        [keras.Input(SHAPE), Recorder(log), keras.layers.Flatten(), keras.layers.Dense(width), keras.layers.Dense(3)],
        name=name,
    )


def images(n=16, seed=0):
    return np.random.default_rng(seed).random((n, *SHAPE)).astype("float32")


def augmentations():
    return [keras.layers.RandomFlip("horizontal"), keras.layers.RandomTranslation(0.25, 0.25), keras.layers.MixUp(0.4)]


def run(seed, x, epochs=1, augment=augmentations, **fit_kwargs):
    keras.utils.set_random_seed(seed)
    teacher_log, student_log = [], []
    teacher, student = recorded("teacher", 16, teacher_log), recorded("student", 8, student_log)
    distiller = keras_kd.Distiller(teacher, student, alpha=0.0, augment=augment())
    distiller.compile(optimizer="sgd", run_eagerly=True)
    distiller.fit(x, batch_size=8, epochs=epochs, shuffle=False, verbose=0, **fit_kwargs)
    # Before the steps, fit's first-batch check (and, on some backends, Keras's build) runs models on the raw batch.
    steps = epochs * (len(x) // 8)
    del teacher_log[:-steps], student_log[:-steps]
    return distiller, teacher_log, student_log


def test_teacher_and_student_see_the_same_augmented_batch_and_each_step_a_new_one():
    x = images()
    _, teacher_log, student_log = run(0, x, epochs=2)
    assert len(teacher_log) == len(student_log) == 4
    for seen_by_teacher, seen_by_student in zip(teacher_log, student_log):
        np.testing.assert_array_equal(seen_by_teacher, seen_by_student)
    for step, seen in enumerate(student_log):
        assert not np.allclose(seen, x[(step % 2) * 8 : (step % 2) * 8 + 8]), "the batch was not augmented"
    assert not np.allclose(student_log[0], student_log[2]), "the same batch got the same view in two epochs"


def test_augmentation_is_reproducible_with_set_random_seed():
    x = images()
    first, second, other = run(3, x)[2], run(3, x)[2], run(4, x)[2]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0])


def test_evaluation_and_prediction_see_the_inputs_as_given():
    x = images(8)
    distiller, teacher_log, student_log = run(0, x)
    teacher_log.clear(), student_log.clear()
    distiller.evaluate(x, batch_size=8, verbose=0)
    np.testing.assert_array_equal(teacher_log[-1], x)
    np.testing.assert_array_equal(student_log[-1], x)
    distiller.predict(x, batch_size=8, verbose=0)
    np.testing.assert_array_equal(student_log[-1], x)


def test_a_function_draws_from_the_distillers_seed_generator():
    def jitter(x, seed):
        return x + keras.random.normal(keras.ops.shape(x), stddev=0.1, seed=seed)

    x = images(8)
    _, teacher_log, student_log = run(0, x, epochs=2, augment=lambda: jitter)
    np.testing.assert_array_equal(teacher_log[0], student_log[0])
    assert 0.05 < np.std(student_log[0] - x) < 0.2
    assert not np.allclose(student_log[0], student_log[1])


def test_compiled_steps_augment_on_every_backend():
    """Without run_eagerly: the layers run inside the jitted / traced step, and their seeds advance."""
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    distiller = keras_kd.Distiller(teacher, student, alpha=0.0, augment=augmentations())
    seeds = [v for v in distiller.non_trainable_variables if "seed_generator" in v.path]
    assert len(seeds) == 3
    before = [keras.ops.convert_to_numpy(v).copy() for v in seeds]
    history = distiller.compile(optimizer="adam").fit(images(32), batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(not np.array_equal(b, keras.ops.convert_to_numpy(v)) for b, v in zip(before, seeds))


def test_saved_augment_is_loaded_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    augment = [keras.layers.RandomTranslation(0.1, 0.1, seed=5), keras.layers.MixUp(alpha=0.3, seed=6)]
    distiller = keras_kd.Distiller(teacher, student, alpha=0.0, augment=augment).compile(optimizer="sgd")
    distiller.fit(images(16), batch_size=8, verbose=0)
    path = tmp_path / "augment.keras"
    distiller.save(path)
    code = (
        "import json, numpy as np, keras, keras_kd\n"
        f"d = keras.saving.load_model({str(path)!r})\n"
        "h = d.fit(np.random.rand(16, 8, 8, 1).astype('float32'), batch_size=8, verbose=0)\n"
        "print(json.dumps({'augment': [l.get_config() for l in d.augment], 'loss': h.history['loss']}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert [c["name"] for c in loaded["augment"]] == [layer.name for layer in augment]
    assert loaded["augment"][0]["height_factor"] == 0.1 and loaded["augment"][1]["alpha"] == 0.3
    assert np.isfinite(loaded["loss"][0])


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_mixing_layers_train_label_free_and_refuse_labels_for_a_hard_term(alpha):
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    distiller = keras_kd.Distiller(teacher, student, alpha=alpha, augment=keras.layers.MixUp()).compile("sgd")
    y = np.zeros(16, "int32")
    if alpha == 0.0:
        assert np.isfinite(distiller.fit(images(), y, batch_size=8, verbose=0).history["loss"][0])
        return
    with pytest.raises(ValueError, match=r"augment holds MixUp, .* but the hard-label term \(alpha=0.5\) reads"):
        distiller.fit(images(), y, batch_size=8, verbose=0)


@pytest.mark.parametrize(
    "make, side",
    [
        (lambda: keras.layers.MixUp(alpha=0.2), 8),
        (lambda: keras.layers.CutMix(factor=1.0), 8),
        (lambda: keras.layers.RandomCrop(6, 6), 6),
        (lambda: keras.layers.RandomFlip(), 8),
        (lambda: keras.layers.RandAugment(value_range=(0, 1), num_ops=2), 8),
    ],
    ids=["MixUp", "CutMix", "RandomCrop", "RandomFlip", "RandAugment"],
)
def test_keras_augmentation_layers_run_in_the_compiled_step(make, side):
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((side, side, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((side, side, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    x = np.random.default_rng(0).random((16, 8, 8, 3)).astype("float32")
    distiller = keras_kd.Distiller(teacher, student, alpha=0.0, augment=make()).compile(optimizer="adam")
    history = distiller.fit(x, batch_size=8, epochs=2, verbose=0, validation_data=(x,))
    assert np.all(np.isfinite(history.history["loss"])) and np.all(np.isfinite(history.history["val_loss"]))
    # Inference mode: the inputs as given, but a crop's center (Keras 3.15's RandomCrop leaves them uncropped).
    assert distiller.predict(x, batch_size=8, verbose=0).shape == (16, 3)
