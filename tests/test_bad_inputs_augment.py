"""The bad-input catalogue, `Distiller(..., augment=...)`.

See `tests/test_bad_inputs.py` for the rules every test follows and `docs/bad_inputs.md` for the table.
"""

import keras
import numpy as np
import pytest

import keras_kd


def models():
    keras.utils.set_random_seed(0)
    make = lambda: keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])  # noqa: E731
    return make(), make()


def images(n=16):
    return np.random.default_rng(0).random((n, 8, 8, 1)).astype("float32")


@pytest.mark.parametrize(
    "augment, error, message",
    [
        ("flip", TypeError, r"augment must be a Keras preprocessing layer, a list of them, or a callable .*got 'flip'"),
        ([], ValueError, r"augment=\[\] holds no layer: pass None"),
        ([keras.layers.RandomFlip(), "crop"], TypeError, r"augment\[1\] is 'crop': a list given as augment must hold"),
        (lambda x: x, TypeError, r"takes 1 positional argument\(s\); an augment function is called as fn\(x, seed\)"),
    ],
    ids=["a string", "an empty list", "a list with a non-layer", "a function without seed"],
)
def test_an_augment_that_is_not_layers_or_a_function_of_x_and_seed(augment, error, message):
    with pytest.raises(error, match=message):
        keras_kd.Distiller(*models(), augment=augment)


def test_augment_with_a_teacher_cache(tmp_path):
    teacher, student = models()
    cache = keras_kd.TeacherCache.build(teacher, images(), str(tmp_path / "cache"), verbose=0)
    with pytest.raises(ValueError, match=r"augment with a TeacherCache: the cache holds the teacher's outputs on the "):
        keras_kd.Distiller(cache, student, augment=keras.layers.RandomFlip())


def test_a_mixing_augment_with_labels_for_the_hard_term():
    distiller = keras_kd.Distiller(*models(), alpha=0.5, augment=[keras.layers.CutMix()]).compile("sgd")
    with pytest.raises(ValueError, match=r"augment holds CutMix, .*the hard-label term \(alpha=0.5\) reads the labels"):
        distiller.fit(images(), np.zeros(16, "int32"), batch_size=8, verbose=0)


def test_augment_with_paired_inputs():
    distiller = keras_kd.Distiller(*models(), augment=keras.layers.RandomFlip()).compile("sgd")
    x = keras_kd.paired_inputs(images(), images())
    with pytest.raises(ValueError, match=r"augment with keras_kd.paired_inputs: the teacher and the student read"):
        distiller.fit(x, batch_size=8, verbose=0)
