"""The bad-input catalogue, `Distiller(chunk_size=...)` and `TeacherCache.build(chunk_size=...)`: token-level
terms a chunk of positions at a time (issue 18), on tiny KerasHub Llama 3 models and Sequential language models.

See `tests/test_bad_inputs.py` for the rules every test follows and `docs/bad_inputs.md` for the table.
"""

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

from test_chunked_distiller import POSITIONS, VOCABULARY, X, Y, llama, student  # noqa: E402

import keras_kd  # noqa: E402


@pytest.fixture(scope="module")
def teacher():
    return llama(2, seed=1)


def sequential_lm(name):
    return keras.Sequential(
        [
            keras.Input((POSITIONS,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 8, name=f"{name}_embedding"),
            keras.layers.Dense(16, activation="tanh", name=f"{name}_hidden"),
            keras.layers.Dense(VOCABULARY, name=f"{name}_logits"),
        ],
        name=name,
    )


@pytest.mark.parametrize("bad", [0, -3])
def test_chunk_size_below_one_is_refused(teacher, bad):
    with pytest.raises(ValueError, match=r"chunk_size must be >= 1"):
        keras_kd.Distiller(teacher, student(), chunk_size=bad)


@pytest.mark.parametrize("bad", [2.5, True, "big", [4]])
def test_chunk_size_of_the_wrong_kind_is_refused(teacher, bad):
    with pytest.raises((TypeError, ValueError), match=r"chunk_size"):
        keras_kd.Distiller(teacher, student(), chunk_size=bad)


def test_a_model_without_a_separable_head_is_refused():
    classifier_t = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="clf_t")
    classifier_s = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="clf_s")
    with pytest.raises(ValueError, match=r"'clf_s' outputs shape \(None, 3\).*chunk_size=None"):
        keras_kd.Distiller(classifier_t, classifier_s, chunk_size=8)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.embedding = keras.layers.Embedding(VOCABULARY, 8)
            self.dense = keras.layers.Dense(VOCABULARY)

        def call(self, x):
            return self.dense(self.embedding(x))

    model = Subclassed()
    model(np.zeros((1, POSITIONS), "int32"))
    teacher = keras.Sequential(
        [
            keras.Input((POSITIONS,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 8),
            keras.layers.Dense(VOCABULARY),
        ]
    )
    with pytest.raises(ValueError, match=r"'subclassed' \(Subclassed\) is not a functional model.*chunk_size=None"):
        keras_kd.Distiller(teacher, model, chunk_size=8)


def test_chunk_size_of_a_dense_cache_is_refused(teacher, tmp_path):
    with pytest.raises(ValueError, match=r"chunk_size=4 .* top_k=None"):
        keras_kd.TeacherCache.build(teacher, (X, Y), tmp_path / "c", chunk_size=4, verbose=0)


def test_a_compiled_loss_that_is_not_a_mean_is_refused(teacher):
    distiller = keras_kd.Distiller(teacher, student(), chunk_size=4)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    with pytest.raises(ValueError, match=r"reduction='sum'.*sum_over_batch_size.*chunk_size=None"):
        distiller.compile(optimizer="sgd", loss=loss)


def test_a_pair_on_a_layer_of_the_students_output_head_with_an_int_chunk_size():
    pair = keras_kd.LayerPair("big_logits", "small_logits", loss="mse")
    with pytest.raises(
        ValueError,
        match=r"the student layer 'small_logits' is part of 'small''s output head, which chunk_size=4 runs a chunk "
        r"of positions at a time.*Pair a layer before the head.*or pass chunk_size=None",
    ):
        keras_kd.Distiller(sequential_lm("big"), sequential_lm("small"), chunk_size=4, pairs=[pair])


def test_a_pair_on_a_layer_of_the_teachers_output_head_with_an_int_chunk_size():
    pair = keras_kd.Hint("big_logits", "small_hidden")
    with pytest.raises(ValueError, match=r"the teacher layer 'big_logits' is part of 'big''s output head"):
        keras_kd.Distiller(sequential_lm("big"), sequential_lm("small"), chunk_size=4, pairs=[pair])
