"""`TeacherCache.build(..., top_k=K)`: the teacher's K largest logits per position, and training from them."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.cache import TeacherCache
from keras_kd.losses import soft_target_loss, top_k_logits, top_k_soft_target_loss

N, LENGTH, VOCABULARY, K = 24, 5, 40, 6


def token_lm(width, name, seed):
    """A tiny language model: token ids (batch, length) -> logits (batch, length, vocabulary)."""
    init = keras.initializers.GlorotUniform(seed)
    embedding_init = keras.initializers.RandomNormal(seed=seed)
    return keras.Sequential(
        [
            keras.Input((LENGTH,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, width, embeddings_initializer=embedding_init),
            keras.layers.Dense(width, activation="tanh", kernel_initializer=init),
            keras.layers.Dense(VOCABULARY, kernel_initializer=init, name="logits"),
        ],
        name=name,
    )


def tokens(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCABULARY, size=(N, LENGTH)).astype("int32")
    return x, np.roll(x, -1, axis=1)


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def test_stores_top_k_values_indices_and_tail(tmp_path):
    teacher = token_lm(16, "teacher", 1)
    x, y = tokens()
    cache = TeacherCache.build(teacher, (x, y), str(tmp_path / "c"), top_k=K, batch_size=8, verbose=0)
    assert cache.top_k == K and cache.logits_shape == (LENGTH, VOCABULARY)
    assert f"top-{K} logits" in repr(cache)
    batch, labels = cache.dataset(batch_size=N, shuffle=False)[0]
    assert sorted(batch) == ["student_inputs", "teacher_top_k"]
    values, indices, tail = batch["teacher_top_k"]
    assert values.shape == indices.shape == (N, LENGTH, K) and tail.shape == (N, LENGTH)
    assert values.dtype == np.float32 and indices.dtype == np.int32 and tail.dtype == np.float32
    ref_values, ref_indices, ref_tail = (numpy(v) for v in top_k_logits(teacher(x), K))
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_allclose(values, ref_values, rtol=2e-3, atol=2e-3)  # float16 on disk
    np.testing.assert_allclose(tail, ref_tail, rtol=1e-6, atol=1e-6)  # float32 on disk
    np.testing.assert_array_equal(labels, y)


def test_distiller_trains_on_the_bucketed_soft_loss(tmp_path):
    teacher, student = token_lm(16, "teacher", 1), token_lm(8, "student", 2)
    x, y = tokens()
    directory = str(tmp_path / "c")
    cache = TeacherCache.build(teacher, (x, y), directory, top_k=K, dtype="float32", batch_size=8, verbose=0)
    distiller = keras_kd.Distiller(cache, student, temperature=2.0, alpha=0.0).compile(
        optimizer=keras.optimizers.Adam(0.01)
    )
    dataset = cache.dataset(batch_size=8, shuffle=False)
    before = distiller.evaluate(dataset, verbose=0, return_dict=True)["soft_loss"]
    expected = float(top_k_soft_target_loss(top_k_logits(teacher(x), K), student(x), temperature=2.0))
    assert before == pytest.approx(expected, rel=1e-4)
    history = distiller.fit(cache.dataset(batch_size=8, seed=0), epochs=8, verbose=0)
    assert history.history["soft_loss"][-1] < 0.7 * history.history["soft_loss"][0]
    # At T = 1 the bucketed loss is a lower bound of the dense one, and close to it for a peaked teacher.
    distiller.temperature = 1.0
    sparse = distiller.evaluate(dataset, verbose=0, return_dict=True)["soft_loss"]
    dense = float(soft_target_loss(teacher(x), student(x), temperature=1.0))
    assert sparse <= dense * (1 + 1e-4)
    reopened = keras_kd.Distiller(TeacherCache(directory), student, temperature=1.0, alpha=0.0).compile("sgd")
    assert reopened.evaluate(dataset, verbose=0, return_dict=True)["soft_loss"] == pytest.approx(sparse, rel=1e-5)
