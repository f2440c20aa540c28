"""The bad-input catalogue, teacher caches: `TeacherCache.build`, `attach`, and `Distiller(cache, ...)`.

See `tests/test_bad_inputs.py` for the rules every test follows and `docs/bad_inputs.md` for the table.
"""

import os

import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data

import keras_kd
from keras_kd.cache import CacheCorruptError, TeacherCache
from keras_kd.losses import DKD

N = 32


def token_lm(name, vocabulary=12, length=4):
    return keras.Sequential(
        [
            keras.Input((length,), dtype="int32"),
            keras.layers.Embedding(vocabulary, 8),
            keras.layers.Dense(vocabulary, name="logits"),
        ],
        name=name,
    )


def built_cache(directory, x=None, y=None, **kwargs):
    if x is None:
        x, y = toy_data(n=N)
    teacher = dense_model(8, 3, hidden=8, name="teacher")
    data = x if y is None else (x, y)
    return TeacherCache.build(teacher, data, str(directory), batch_size=16, verbose=0, **kwargs), x, y


def test_attach_with_other_inputs_than_the_build(tmp_path):
    cache, x, y = built_cache(tmp_path / "c")
    noisy = x + np.random.default_rng(1).normal(scale=0.01, size=x.shape).astype("float32")
    with pytest.raises(
        ValueError,
        match=r"The inputs differ from those the cache in .*c was built on: the example at position 0 .*does not "
        r"match the stored fingerprint.*Feed the inputs unchanged and in the order of the build",
    ):
        cache.attach((noisy, y), batch_size=16)[0]
    with pytest.raises(ValueError, match=r"they hold 16 examples, the cache 32. Feed the inputs of the build"):
        cache.attach((x[:16], y[:16]), batch_size=16)


def test_attach_with_the_inputs_reordered(tmp_path):
    cache, x, y = built_cache(tmp_path / "c")
    with pytest.raises(
        ValueError, match=r"the example at position 0 \(and 15 more in this batch\).*inputs were reordered.*online"
    ):
        cache.attach((x[::-1].copy(), y[::-1].copy()), batch_size=16)[0]


def test_a_corrupted_shard(tmp_path):
    cache, _, _ = built_cache(tmp_path / "c", examples_per_shard=16)
    shard = os.path.join(cache.directory, "shard-00001.npz")
    with open(shard, "r+b") as file:
        file.seek(os.path.getsize(shard) // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CacheCorruptError, match=r"Cache shard .*shard-00001.npz .*Rebuild the cache with TeacherCache"):
        TeacherCache(cache.directory).batch(np.arange(N))


def test_a_missing_shard(tmp_path):
    cache, _, _ = built_cache(tmp_path / "c", examples_per_shard=16)
    os.remove(os.path.join(cache.directory, "shard-00000.npz"))
    with pytest.raises(CacheCorruptError, match=r"shard-00000.npz is missing.*run TeacherCache.build again"):
        TeacherCache(cache.directory).batch([0])


def test_top_k_not_smaller_than_the_vocabulary(tmp_path):
    x = np.random.default_rng(0).integers(0, 12, size=(8, 4)).astype("int32")
    directory = tmp_path / "too_big"
    with pytest.raises(
        ValueError, match=r"top_k=12 is not smaller than the vocabulary of 12 classes.*Use top_k < 12, or top_k"
    ):
        TeacherCache.build(token_lm("lm"), x, str(directory), top_k=12, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=r"top_k must be an int >= 1 \(the number of logits kept per .*\), got 0"):
        TeacherCache.build(token_lm("lm"), x, str(tmp_path / "zero"), top_k=0, batch_size=8, verbose=0)
    assert not os.path.exists(directory) and not os.path.exists(tmp_path / "zero")  # nothing written


def test_a_top_k_cache_with_a_soft_loss_that_needs_dense_logits(tmp_path):
    x = np.random.default_rng(0).integers(0, 12, size=(8, 4)).astype("int32")
    cache = TeacherCache.build(token_lm("lm"), x, str(tmp_path / "c"), top_k=3, batch_size=8, verbose=0)
    with pytest.raises(
        ValueError,
        match=r"holds the teacher's top 3 logits per position.*soft_loss='reverse_kl' needs the dense logits. Use "
        "soft_loss='kl', or build the cache with top_k=None",
    ):
        keras_kd.Distiller(cache, token_lm("student"), soft_loss="reverse_kl")


def test_pairs_whose_teacher_layer_the_cache_did_not_store(tmp_path):
    cache, _, _ = built_cache(tmp_path / "c")
    student = dense_model(8, 3, hidden=4, name="student")
    hidden = student.layers[0].name
    with pytest.raises(
        ValueError,
        match=rf"holds no output of the teacher layer '{hidden}'; it holds the outputs of no teacher layers. Rebuild "
        r"the cache with this pair: keras_kd.TeacherCache.build\(teacher, data, directory, pairs=",
    ):
        keras_kd.Distiller(cache, student, pairs=[keras_kd.Hint(hidden, hidden)])


def test_a_student_of_another_shape_than_the_cached_logits(tmp_path):
    cache, _, _ = built_cache(tmp_path / "c")
    with pytest.raises(
        ValueError,
        match=r"holds logits of shape \(None, 3\) per batch, but the student outputs shape \(None, 4\). Give the "
        "student the teacher's number of classes",
    ):
        keras_kd.Distiller(cache, dense_model(8, 4, name="wide"))


def test_resuming_a_build_with_other_data(tmp_path):
    x, y = toy_data(n=N)
    teacher = dense_model(8, 3, name="teacher")
    directory = str(tmp_path / "c")

    def interrupted():
        yield x[:16], y[:16]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        TeacherCache.build(teacher, interrupted(), directory, examples_per_shard=16, verbose=0)
    reordered = ((x[i : i + 16][::-1].copy(), y[i : i + 16]) for i in (0, 16))  # a generator of batches
    with pytest.raises(
        ValueError,
        match=r"The data changed since the interrupted build in .*: example 0 does not match the one stored there.*"
        "Resume with the same data in the same order",
    ):
        TeacherCache.build(teacher, reordered, directory, examples_per_shard=16, verbose=0)


def test_a_cache_without_labels_for_dkd(tmp_path):
    cache, _, _ = built_cache(tmp_path / "c", y=None, x=toy_data(n=N)[0])
    with pytest.raises(
        ValueError,
        match=r"soft_loss DKD\(alpha=1.0, beta=8.0\) needs the labels of every batch, but the teacher cache .* holds "
        r"none. Build the cache from \(x, y\) data",
    ):
        keras_kd.Distiller(cache, dense_model(8, 3), soft_loss=DKD())


def test_plain_inputs_for_a_cache_distiller_and_cached_batches_for_a_model_distiller(tmp_path):
    cache, x, y = built_cache(tmp_path / "c")
    offline = keras_kd.Distiller(cache, dense_model(8, 3)).compile("sgd")
    with pytest.raises(ValueError, match=r"reads the teacher's outputs from the cache in .*holds plain inputs. Fit on"):
        offline.fit(x, y, epochs=1, verbose=0)
    online = keras_kd.Distiller(dense_model(8, 3, name="teacher"), dense_model(8, 3)).compile("sgd")
    with pytest.raises(ValueError, match=r"built on a teacher model. Build it on the cache, keras_kd.Distiller\(cache"):
        online.fit(cache.dataset(16), epochs=1, verbose=0)


def test_teacher_logits_beyond_the_float16_range(tmp_path):
    teacher = dense_model(8, 3, name="loud")
    kernel = teacher.layers[-1].kernel
    kernel.assign(np.full(tuple(kernel.shape), 3e4, "float32"))
    x = np.ones((16, 8), "float32")
    directory = tmp_path / "c"
    with pytest.raises(
        ValueError, match=r"The teacher's logits for the batch from example 0 on reach 240000, beyond the largest "
        r"float16 \(65504\).*Build the cache with dtype='float32'"
    ):
        TeacherCache.build(teacher, x, str(directory), batch_size=16, verbose=0)
    assert len(TeacherCache.build(teacher, x, str(tmp_path / "f32"), dtype="float32", verbose=0)) == 16


def test_a_teacher_with_nan_outputs_while_building(tmp_path):
    teacher = dense_model(8, 3, name="broken")
    kernel = teacher.layers[-1].kernel
    kernel.assign(np.full(tuple(kernel.shape), np.nan, "float32"))
    with pytest.raises(
        ValueError,
        match=r"The teacher's logits for the batch from example 0 on hold 48 non-finite values.*Check the teacher's "
        "weights and these examples' inputs",
    ):
        TeacherCache.build(teacher, toy_data(n=16)[0], str(tmp_path / "c"), batch_size=16, verbose=0)


def test_bad_build_arguments(tmp_path):
    import tensorflow as tf

    x, y = toy_data(n=16)
    teacher = dense_model(8, 3, name="teacher")
    with pytest.raises(ValueError, match=r"dtype must be 'float16' or 'float32' \(how the teacher's outputs are"):
        TeacherCache.build(teacher, x, str(tmp_path / "a"), dtype="bfloat16", verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(ValueError, match=r"batch_size is for in-memory arrays; .*batch it with .batch\(n\) instead"):
        TeacherCache.build(teacher, dataset, str(tmp_path / "b"), batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=r"part must be \(index, count\) with 0 <= index < count"):
        TeacherCache.build(teacher, x, str(tmp_path / "c"), part=(2, 2), verbose=0)


def test_several_teachers_with_top_k_pairs_other_shapes_or_weights_for_one(tmp_path):
    x, y = toy_data(n=16)
    two = [dense_model(8, 3, hidden=4, name=f"teacher_{i}") for i in range(2)]
    with pytest.raises(ValueError, match=r"top_k=2 keeps one teacher's largest logits, but 2 teachers.*top_k=None"):
        TeacherCache.build(two, (x, y), str(tmp_path / "a"), top_k=2, verbose=0)
    hidden = two[0].layers[0].name
    with pytest.raises(ValueError, match=r"pairs store one teacher's layer outputs, but 2 teachers.*without pairs"):
        TeacherCache.build(two, (x, y), str(tmp_path / "b"), pairs=[keras_kd.Hint(hidden, hidden)], verbose=0)
    mismatched = [dense_model(8, 3, name="three"), dense_model(8, 5, name="five")]
    with pytest.raises(
        ValueError, match=r"teacher\[0\] 'three' outputs \(None, 3\) but teacher\[1\] 'five'.*must output the student"
    ):
        TeacherCache.build(mismatched, (x, y), str(tmp_path / "c"), verbose=0)
    with pytest.raises(ValueError, match="teacher is an empty list. Give one teacher model"):
        TeacherCache.build([], (x, y), str(tmp_path / "d"), verbose=0)
    single = TeacherCache.build(two[:1], (x, y), str(tmp_path / "e"), verbose=0)
    assert single.num_teachers == 1 and isinstance(single.teacher_fingerprint, str)
    with pytest.raises(
        ValueError, match=r"teacher_weights=\[1.0\] weighs several teachers, but a single teacher was given.*Pass"
    ):
        keras_kd.Distiller(single, dense_model(8, 3), teacher_weights=[1.0])
