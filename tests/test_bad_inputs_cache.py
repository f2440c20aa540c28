"""The bad-input catalogue, teacher caches: `TeacherCache.build`, `attach`, and `Distiller(cache, ...)`.

See `tests/test_bad_inputs.py` for the rules every test follows and `docs/bad_inputs.md` for the table.
"""

import json
import os
import re
import subprocess
import sys
import time

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
        ValueError,
        match=r"The teacher's logits for the batch from example 0 on reach 240000, beyond the largest "
        r"float16 \(65504\).*Build the cache with dtype='float32'",
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


# ----------------------------------------------------------------------------- the cache directory and its files


def test_a_distributed_build_into_the_directory_of_another_cache(tmp_path):
    x, y = toy_data(n=N)
    teacher = dense_model(8, 3, hidden=8, name="teacher")
    directory = str(tmp_path / "c")
    cache = TeacherCache.build(teacher, (x, y), directory, batch_size=16, verbose=0)
    manifest = (tmp_path / "c" / "manifest.json").read_bytes()
    other = dense_model(8, 3, hidden=8, name="other_teacher")
    theirs, ours = cache.teacher_fingerprint, keras_kd.cache.teacher_fingerprint(other)
    with pytest.raises(
        ValueError,
        match=rf"holds the complete teacher cache of another teacher \(fingerprint {theirs}; this build's teacher has "
        rf"{ours}\)\. A distributed build there would overwrite its manifest.*nothing was written\. Give a fresh",
    ):
        TeacherCache.build(other, (x, y), directory, part=(0, 1), verbose=0)
    with pytest.raises(
        ValueError, match=r"written by a single process.*part=\(index, 1\) would overwrite its manifest. Open it"
    ):
        TeacherCache.build(teacher, (x, y), directory, batch_size=16, part=(0, 1), verbose=0)
    assert (tmp_path / "c" / "manifest.json").read_bytes() == manifest
    assert sorted(os.listdir(directory)) == ["manifest.json", "shard-00000.npz"]  # no part folder either
    assert len(TeacherCache(directory)) == N


def test_building_again_with_other_labels_or_sample_weights(tmp_path):
    x, y = toy_data(n=N)
    teacher = dense_model(8, 3, hidden=8, name="teacher")
    directory = str(tmp_path / "c")
    TeacherCache.build(teacher, (x, y), directory, batch_size=16, verbose=0)
    y2 = y.copy()
    y2[20] = (y[20] + 1) % 3
    with pytest.raises(
        ValueError,
        match=rf"The labels y of example 20 differ from those the cache in .*c holds \({y2[20]} given, {y[20]} "
        r"stored\); its inputs are the same, so the build would return the stored ones\. Give a fresh directory for "
        "these labels y, or delete",
    ):
        TeacherCache.build(teacher, (x, y2), directory, batch_size=16, verbose=0)
    assert np.array_equal(TeacherCache(directory).batch(np.arange(N))[1], y)  # the cache is as it was

    weights = np.ones(N, "float32")
    weighted = str(tmp_path / "weighted")

    def interrupted(sample_weight):
        yield x[:16], y[:16], sample_weight[:16]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        TeacherCache.build(teacher, interrupted(weights), weighted, examples_per_shard=16, verbose=0)
    heavier = weights.copy()
    heavier[3] = 2.0
    with pytest.raises(
        ValueError,
        match=r"The sample weights of example 3 differ .*\(2\.0 given, 1\.0 stored\).*would mix stored and new ones",
    ):
        TeacherCache.build(teacher, (x, y, heavier), weighted, batch_size=16, examples_per_shard=16, verbose=0)


def test_building_over_a_complete_cache_with_more_or_fewer_examples(tmp_path):
    x, y = toy_data(n=N)
    teacher = dense_model(8, 3, hidden=8, name="teacher")
    directory = str(tmp_path / "c")
    TeacherCache.build(teacher, (x[:16], y[:16]), directory, batch_size=8, verbose=0)
    with pytest.raises(
        ValueError,
        match=r"c holds a complete teacher cache of 16 examples of this teacher, but the data goes on past them "
        r"\(example 16 and later\): it is other data\. Give a fresh directory for it, or delete .*c to rebuild",
    ) as info:
        TeacherCache.build(teacher, (x, y), directory, batch_size=8, verbose=0)
    assert "ShardStore" not in str(info.value)
    with pytest.raises(ValueError, match=r"complete teacher cache of 16 examples .* but the data has only 8: it is"):
        TeacherCache.build(teacher, (x[:8], y[:8]), directory, batch_size=8, verbose=0)
    assert len(TeacherCache.build(teacher, (x[:16], y[:16]), directory, batch_size=8, verbose=0)) == 16


def test_labels_that_are_text(tmp_path):
    x, _ = toy_data(n=N)
    labels = np.array(["cat", "dog"] * (N // 2))
    directory = tmp_path / "c"
    with pytest.raises(
        ValueError,
        match=r"The labels y have dtype <U3 \(text\), but a teacher cache stores them for the student's loss, which "
        r"needs numbers\. Map them to class ids first \(keras.layers.StringLookup",
    ):
        TeacherCache.build(dense_model(8, 3, name="teacher"), (x, labels), str(directory), verbose=0)
    assert not directory.exists()  # refused before anything is written


def _unwritable_directory(tmp_path):
    """A directory this process cannot create: under a read-only folder, or (for root) under /sys."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "read_only"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "cache"
    if os.path.isdir("/sys"):
        return "/sys/keras_kd_cache"  # sysfs refuses new folders, even to root
    pytest.skip("no folder this process cannot write to")


def test_building_into_a_directory_that_cannot_be_written(tmp_path):
    directory = _unwritable_directory(tmp_path)
    x, y = toy_data(n=16)
    with pytest.raises(
        PermissionError,
        match=rf"Cannot write the teacher cache to {re.escape(str(directory))}: .*Give a directory this process can "
        "create and write",
    ):
        TeacherCache.build(dense_model(8, 3, name="teacher"), (x, y), str(directory), verbose=0)


def test_a_tampered_manifest(tmp_path):
    built_cache(tmp_path / "c")
    path = tmp_path / "c" / "manifest.json"
    original = json.loads(path.read_text())

    def tampered(edit):
        manifest = json.loads(json.dumps(original))
        edit(manifest)
        return manifest

    cases = {
        "renamed shard field": (lambda m: m["shards"][0].update(size=m["shards"][0].pop("bytes")), "entry for shard 0"),
        "renamed metadata key": (lambda m: m["metadata"].update(y=m["metadata"].pop("has_labels")), "'has_labels'"),
        "a count as a string": (lambda m: m.update(examples=str(m["examples"])), "'examples'"),
        "a size of the wrong type": (lambda m: m["shards"][0].update(bytes=[1]), "entry for shard 0"),
        "inputs of the wrong type": (lambda m: m["metadata"].update(inputs=5), "'inputs'"),
        "a bad dtype": (lambda m: m["schema"]["y"].update(dtype="int42"), "schema entry 'y'"),
    }
    for name, (edit, field) in cases.items():
        path.write_text(json.dumps(tampered(edit)))
        message = rf"manifest.json has an invalid {field}.*rebuild the cache"
        with pytest.raises(CacheCorruptError, match=message) as info:
            TeacherCache(str(tmp_path / "c"))
        assert "KeyError" not in str(info.value), name
    path.write_text('{"format": "keras_kd.teacher_cache/1", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CacheCorruptError, match=r"manifest.json is not valid JSON \(it nests too deeply\)\. Rebuild"):
        TeacherCache(str(tmp_path / "c"))
    path.write_text(json.dumps(tampered(lambda m: m["metadata"].update(extra=json.loads("[" * 70 + "]" * 70)))))
    with pytest.raises(CacheCorruptError, match=r"manifest.json nests deeper than 64 levels.*Rebuild"):
        TeacherCache(str(tmp_path / "c"))


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and symbolic links")
def test_a_shard_that_is_a_link_a_fifo_or_a_device(tmp_path):
    x, y = toy_data(n=N)
    teacher = dense_model(8, 3, hidden=8, name="teacher")
    options = dict(batch_size=16, examples_per_shard=16, verbose=0)
    cache = TeacherCache.build(teacher, (x, y), str(tmp_path / "c"), **options)
    shard = tmp_path / "c" / "shard-00000.npz"
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 123_457)
    for target in ("/dev/zero", str(secret)):
        shard.unlink()
        shard.symlink_to(target)
        with pytest.raises(
            CacheCorruptError, match=r"shard-00000.npz is a symbolic link: a teacher cache reads only regular files"
        ) as info:
            TeacherCache(cache.directory).batch([0])
        assert "123457" not in str(info.value)  # nothing of the link's target is read or told
    shard.unlink()
    os.mkfifo(shard)  # opening it for reading would wait forever for a writer
    with pytest.raises(CacheCorruptError, match=r"shard-00000.npz is not a regular file \(a FIFO, a device"):
        TeacherCache(cache.directory).batch([0])
    with pytest.raises(CacheCorruptError, match=r"shard-00000.npz is not a regular file .*, not a shard file"):
        TeacherCache.build(teacher, (x, y), cache.directory, **options)  # resuming reads no FIFO either
    manifest = tmp_path / "c" / "manifest.json"
    manifest.rename(tmp_path / "manifest.json")
    manifest.symlink_to(tmp_path / "manifest.json")
    with pytest.raises(CacheCorruptError, match=r"manifest.json is a symbolic link: a teacher cache reads only"):
        TeacherCache(cache.directory)


@pytest.mark.timeout(300)
def test_a_second_build_while_another_process_writes_the_directory(tmp_path):
    teacher = dense_model(8, 3, hidden=8, name="teacher")
    teacher.save(tmp_path / "teacher.keras")
    x, y = toy_data(n=N)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    directory, pause, go = str(tmp_path / "c"), tmp_path / "paused", tmp_path / "go"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    script = os.path.join(root, "tests", "scripts", "paused_cache_build.py")
    args = [tmp_path / "teacher.keras", tmp_path / "data.npz", directory, pause, go]
    first = subprocess.Popen([sys.executable, script, *map(str, args)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not pause.exists():
            assert first.poll() is None, f"the first build ended (exit {first.returncode}) before its pause"
            assert time.monotonic() < deadline, "the first build did not reach its pause in 240 s"
            time.sleep(0.05)
        files = sorted(os.listdir(directory))  # shard 0, the manifest, and shard 1 in its temporary file
        assert [name for name in files if name.endswith(".tmp")], files
        other = dense_model(8, 3, hidden=8, name="other_teacher")
        for second, options in ((other, {}), (teacher, {}), (other, {"part": (0, 1)})):
            with pytest.raises(
                RuntimeError,
                match=rf"Another build is writing the teacher cache in {re.escape(directory)} .*so this one touched "
                "nothing. Wait until that build ends and build again",
            ):
                TeacherCache.build(second, (x, y), directory, batch_size=16, verbose=0, **options)
            assert sorted(os.listdir(directory)) == files  # the running build's temporary file is still there
        go.touch()
        output, _ = first.communicate(timeout=240)
        assert first.returncode == 0 and output.split()[-1] == str(N)
    finally:
        first.kill()
    cache = TeacherCache(directory)
    assert len(cache) == N and cache.teacher_fingerprint == keras_kd.cache.teacher_fingerprint(teacher)
    assert len(TeacherCache.build(teacher, (x, y), directory, batch_size=16, verbose=0)) == N  # done: it is free
