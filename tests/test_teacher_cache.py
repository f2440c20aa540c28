"""Offline distillation: `TeacherCache` build/open/resume, its datasets, and `Distiller(cache, student)`."""

import json
import os

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.cache import ShardStore, TeacherCache
from keras_kd.cache import build as cache_build_module

N, FEATURES, CLASSES = 40, 6, 3


def mlp(hidden, name):
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(hidden, activation="relu", name="hidden"),
            keras.layers.Dense(CLASSES, name="logits"),
        ],
        name=name,
    )


def data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=n).astype("int64")
    return x, y


def count_calls(model):
    """Replaces `model.call` by a wrapper that counts its calls (eager or traced); returns the counter."""
    calls = {"n": 0, "examples": 0}
    original = model.call

    def counting(inputs, *args, **kwargs):
        calls["n"] += 1
        calls["examples"] += int(inputs.shape[0]) if inputs.shape[0] is not None else 0
        return original(inputs, *args, **kwargs)

    model.call = counting
    return calls


def count_cached_examples(monkeypatch):
    """Counts the examples `TeacherCache.build` runs the teacher on (dispatched to its compiled predict step)."""
    calls = {"examples": 0}
    original = cache_build_module._dispatch_batch

    def counting(predictor, forward, metadata, batch, first):
        calls["examples"] += int(np.shape(keras.tree.flatten(batch[0])[0])[0])
        return original(predictor, forward, metadata, batch, first)

    monkeypatch.setattr(cache_build_module, "_dispatch_batch", counting)
    return calls


def build(teacher, directory, x, y=None, **kwargs):
    kwargs.setdefault("batch_size", 16)
    kwargs.setdefault("verbose", 0)
    return TeacherCache.build(teacher, x if y is None else (x, y), str(directory), **kwargs)


def all_arrays(directory):
    store = ShardStore.open(str(directory))
    return store.get(np.arange(len(store)))


def concat_batches(dataset):
    return [dataset[i] for i in range(len(dataset))]


def twin_students(hidden=4):
    a, b = mlp(hidden, "student"), mlp(hidden, "student")
    b.set_weights(a.get_weights())
    return a, b


def test_build_and_open_round_trip(tmp_path):
    teacher = mlp(16, "teacher")
    x, y = data()
    cache = build(teacher, tmp_path / "c", x, y, examples_per_shard=12)
    reopened = TeacherCache(str(tmp_path / "c"))
    assert len(reopened) == N and reopened.logits_shape == (CLASSES,) and reopened.has_labels
    assert reopened.teacher_fingerprint == keras_kd.cache.teacher_fingerprint(teacher)
    assert reopened.pair_paths == [] and reopened.dtype == "float16"
    dataset = reopened.dataset(batch_size=16, shuffle=False)
    assert len(dataset) == 3
    batches = concat_batches(dataset)
    assert [len(b[1]) for b in batches] == [16, 16, 8]  # the last partial batch is kept
    inputs = np.concatenate([b[0]["student_inputs"] for b in batches])
    logits = np.concatenate([b[0]["teacher_logits"] for b in batches])
    np.testing.assert_array_equal(inputs, x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(teacher(x)), rtol=1e-2, atol=1e-2)
    assert len(cache) == N and sorted(batches[0][0]) == ["student_inputs", "teacher_logits"]

    exact = build(teacher, tmp_path / "f32", x, dtype="float32")
    assert not exact.has_labels
    batch = exact.dataset(batch_size=N, shuffle=False)[0]
    assert sorted(batch) == ["student_inputs", "teacher_logits"]  # no labels: x alone
    np.testing.assert_allclose(batch["teacher_logits"], keras.ops.convert_to_numpy(teacher(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="float16"):
        build(teacher, tmp_path / "bad", x, dtype="int8")


def test_build_from_tf_data_and_dict_inputs(tmp_path):
    tf = pytest.importorskip("tensorflow")
    inputs = {"a": keras.Input((FEATURES,), name="a"), "b": keras.Input((2,), name="b")}
    merged = keras.layers.Concatenate()([inputs["a"], inputs["b"]])
    teacher = keras.Model(inputs, keras.layers.Dense(CLASSES)(merged), name="teacher")
    x, y = data()
    xs = {"a": x, "b": x[:, :2] * 2}
    weights = np.linspace(0.5, 1.5, N).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((xs, y, weights)).batch(16)
    cache = TeacherCache.build(teacher, dataset, str(tmp_path / "c"), verbose=0)
    assert cache.has_labels and cache.has_sample_weight
    assert sorted(all_arrays(tmp_path / "c")) == [
        "fingerprint",
        "sample_weight",
        "teacher/logits",
        "x/a",
        "x/b",
        "y",
    ]
    batch_x, batch_y, batch_w = cache.dataset(batch_size=N, shuffle=False)[0]
    np.testing.assert_array_equal(batch_x["student_inputs"]["b"], xs["b"])
    np.testing.assert_array_equal(batch_w, weights)
    np.testing.assert_allclose(batch_x["teacher_logits"], keras.ops.convert_to_numpy(teacher(xs)), rtol=1e-2, atol=1e-2)
    student = keras.Model(inputs, keras.layers.Dense(CLASSES)(merged), name="student")
    distiller = keras_kd.Distiller(cache, student).compile(optimizer="sgd")
    history = distiller.fit(cache.dataset(batch_size=16), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_cached_fit_matches_online_without_calling_the_teacher(tmp_path):
    teacher = mlp(16, "teacher")
    x, y = data()
    cache = build(teacher, tmp_path / "c", x, y)
    calls = count_calls(teacher)
    online_student, cached_student = twin_students()

    online = keras_kd.Distiller(teacher, online_student, temperature=2.0, alpha=0.3)
    online.compile(optimizer=keras.optimizers.SGD(0.1))
    expected = online.fit(x, y, batch_size=16, shuffle=False, epochs=2, verbose=0).history
    assert calls["n"] > 0  # the counter sees the online teacher
    calls["n"] = 0

    cached = keras_kd.Distiller(cache, cached_student, temperature=2.0, alpha=0.3)
    cached.compile(optimizer=keras.optimizers.SGD(0.1))
    # Keras's fit shuffles a PyDataset's batch order unless told not to.
    got = cached.fit(cache.dataset(batch_size=16, shuffle=False), epochs=2, shuffle=False, verbose=0).history
    assert calls["n"] == 0
    for key in ("loss", "soft_loss", "hard_loss"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-2, err_msg=key)
    assert got["loss"][1] != got["loss"][0]
    np.testing.assert_allclose(cached.predict(x, verbose=0), cached_student.predict(x, verbose=0), rtol=1e-6)
    with pytest.raises(ValueError, match=r"cache\.dataset"):
        cached.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="built on a teacher model"):
        online.fit(cache.dataset(batch_size=16), epochs=1, verbose=0)


def test_hint_pair_reads_stored_teacher_features(tmp_path):
    teacher = mlp(16, "teacher")
    x, y = data()
    hint = keras_kd.Hint("hidden", "hidden")
    cache = build(teacher, tmp_path / "c", x, y, pairs=[hint])
    assert cache.pair_paths == [["hidden"]]
    assert all_arrays(tmp_path / "c")["teacher/feature/0/0"].shape == (N, 16)
    calls = count_calls(teacher)
    online_student, cached_student = twin_students(hidden=8)
    online = keras_kd.Distiller(teacher, online_student, pairs=[keras_kd.Hint("hidden", "hidden")])
    cached = keras_kd.Distiller(cache, cached_student, pairs=[keras_kd.Hint("hidden", "hidden")])
    assert cached.pairs[0].regressor.units == 16  # built from the stored feature shape
    cached.pairs[0].regressor.set_weights(online.pairs[0].regressor.get_weights())
    calls["n"] = 0
    expected = online.compile(optimizer="sgd").fit(x, y, batch_size=16, shuffle=False, epochs=2, verbose=0).history
    got = (
        cached.compile(optimizer="sgd")
        .fit(cache.dataset(16, shuffle=False), epochs=2, shuffle=False, verbose=0)
        .history
    )
    assert calls["n"] > 0  # only the online fit
    for key in ("loss", "hint_loss", "soft_loss"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-2, err_msg=key)
    assert got["hint_loss"][0] > 0
    plain = keras_kd.Distiller(cache, mlp(8, "student")).compile(optimizer="sgd")  # stored features unused
    assert np.isfinite(plain.train_on_batch(*cache.dataset(16)[0], return_dict=True)["loss"])


def batches(x, y, size=10, fail_after=None):
    for index, start in enumerate(range(0, len(x), size)):
        if index == fail_after:
            raise RuntimeError("interrupted")
        yield x[start : start + size], y[start : start + size]


def test_resume_after_interruption_equals_uninterrupted_build(tmp_path, monkeypatch):
    teacher = mlp(16, "teacher")
    x, y = data()
    directory = str(tmp_path / "resumed")
    pairs = [keras_kd.Hint("hidden", "hidden")]
    with pytest.raises(RuntimeError, match="interrupted"):
        TeacherCache.build(
            teacher, batches(x, y, fail_after=3), directory, pairs=pairs, examples_per_shard=8, verbose=0
        )
    with pytest.raises(ValueError, match="incomplete"):
        TeacherCache(directory)
    assert _manifest(directory)["examples"] == 24  # three whole shards of 8 were written
    calls = count_cached_examples(monkeypatch)
    resumed = TeacherCache.build(teacher, batches(x, y), directory, pairs=pairs, examples_per_shard=8, verbose=0)
    assert calls["examples"] == N - 24  # the stored examples are skipped, not recomputed
    reference = TeacherCache.build(
        teacher, batches(x, y), str(tmp_path / "whole"), pairs=pairs, examples_per_shard=8, verbose=0
    )
    assert len(resumed) == len(reference) == N
    got, expected = all_arrays(directory), all_arrays(tmp_path / "whole")
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    calls["examples"] = 0  # building into a complete cache of the same data verifies and returns it
    again = TeacherCache.build(teacher, batches(x, y), directory, pairs=pairs, examples_per_shard=8, verbose=0)
    assert len(again) == N and calls["examples"] == 0


def _manifest(directory):
    with open(os.path.join(directory, "manifest.json")) as file:
        return json.load(file)


def test_resume_with_other_data_raises(tmp_path):
    teacher = mlp(16, "teacher")
    x, y = data()
    directory = str(tmp_path / "c")
    with pytest.raises(RuntimeError):
        TeacherCache.build(teacher, batches(x, y, fail_after=3), directory, examples_per_shard=8, verbose=0)
    with pytest.raises(ValueError, match="data changed"):
        TeacherCache.build(teacher, batches(x + 1.0, y), directory, examples_per_shard=8, verbose=0)
    with pytest.raises(ValueError, match="data changed"):
        TeacherCache.build(teacher, batches(x[::-1].copy(), y), directory, examples_per_shard=8, verbose=0)
    other_teacher = mlp(16, "other_teacher")
    with pytest.raises(ValueError, match="different metadata"):
        TeacherCache.build(other_teacher, batches(x, y), directory, examples_per_shard=8, verbose=0)
    assert len(TeacherCache.build(teacher, batches(x, y), directory, examples_per_shard=8, verbose=0)) == N


def test_attach_verifies_the_inputs(tmp_path):
    teacher = mlp(16, "teacher")
    x, y = data()
    cache = build(teacher, tmp_path / "c", x, y)
    attached = cache.attach((x, y), batch_size=16)
    reference = cache.dataset(batch_size=16, shuffle=False)
    for i in range(len(reference)):
        (got_x, got_y), (want_x, want_y) = attached[i], reference[i]
        np.testing.assert_array_equal(got_x["teacher_logits"], want_x["teacher_logits"])
        np.testing.assert_array_equal(got_x["student_inputs"], want_x["student_inputs"])
        np.testing.assert_array_equal(got_y, want_y)
    shuffled = cache.attach(x, batch_size=16, shuffle=True)
    assert len(shuffled) == 3 and shuffled[0][1].shape == (16,)  # stored labels, shuffled with the inputs

    distiller = keras_kd.Distiller(cache, mlp(4, "student")).compile(optimizer="sgd")
    assert np.isfinite(distiller.fit(attached, epochs=1, verbose=0).history["loss"][0])

    message = r"differ from those the cache.*(?s:.*)online distillation"
    noise = np.random.default_rng(1).normal(scale=0.01, size=x.shape).astype("float32")
    for bad in (x[::-1].copy(), x + noise):
        with pytest.raises(ValueError, match=message):
            cache.attach((bad, y), batch_size=16)[0]
        with pytest.raises(ValueError, match=message):
            list(cache.attach(batches(bad, y)))
    with pytest.raises(ValueError, match=message):
        distiller.fit(cache.attach((x + noise, y), batch_size=16), epochs=1, verbose=0)
    assert len(list(cache.attach(batches(x, y)))) == 4


def test_shuffle_visits_every_example_once_per_epoch(tmp_path):
    teacher = mlp(16, "teacher")
    x, _ = data()
    cache = build(teacher, tmp_path / "c", x, np.arange(N), examples_per_shard=9)
    dataset = cache.dataset(batch_size=7, shuffle=True, seed=3)
    orders = []
    for _ in range(3):
        labels = [dataset[i][1] for i in range(len(dataset))]
        assert [len(b) for b in labels] == [7] * 5 + [5]
        order = np.concatenate(labels)
        np.testing.assert_array_equal(np.sort(order), np.arange(N))
        orders.append(order)
        dataset.on_epoch_end()
    assert not np.array_equal(orders[0], orders[1])
    again = cache.dataset(batch_size=7, shuffle=True, seed=3)
    np.testing.assert_array_equal(np.concatenate([again[i][1] for i in range(len(again))]), orders[0])

    # More shards than stay in memory: shuffled within windows of 2 shards (18 examples), still each once.
    windowed = TeacherCache(str(tmp_path / "c"), cache_shards=2).dataset(batch_size=9, shuffle=True, seed=0)
    order = np.concatenate([windowed[i][1] for i in range(len(windowed))])
    np.testing.assert_array_equal(np.sort(order), np.arange(N))
    shard_of, sizes = order // 9, np.bincount(np.arange(N) // 9)
    start = 0
    while start < N:  # each window: two whole shards (one at the end), interleaved
        window = set()
        stop = start
        while stop < N and len(window | {shard_of[stop]}) <= 2:
            window.add(shard_of[stop])
            stop += 1
        assert stop - start == sum(sizes[k] for k in window)
        start = stop


def test_saved_cache_distiller_fits_again(tmp_path):
    teacher = mlp(16, "teacher")
    x, y = data()
    cache = build(teacher, tmp_path / "c", x, y, pairs=[keras_kd.Hint("hidden", "hidden")])
    distiller = keras_kd.Distiller(cache, mlp(8, "student"), pairs=[keras_kd.Hint("hidden", "hidden")])
    distiller.compile(optimizer="adam").fit(cache.dataset(16), epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.teacher, TeacherCache)
    assert loaded.teacher.directory == os.path.abspath(str(tmp_path / "c"))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    history = loaded.fit(cache.dataset(16), epochs=1, verbose=0).history
    assert np.isfinite(history["hint_loss"][0])


def test_paired_inputs_store_the_student_side(tmp_path):
    teacher = mlp(16, "teacher")
    student = keras.Sequential([keras.Input((2,)), keras.layers.Dense(CLASSES)], name="student")
    x, y = data()
    paired = keras_kd.paired_inputs(x, x[:, :2].copy())
    cache = build(teacher, tmp_path / "c", paired, y)
    assert sorted(all_arrays(tmp_path / "c")) == ["fingerprint", "teacher/logits", "x", "y"]
    batch_x, _ = cache.dataset(batch_size=N, shuffle=False)[0]
    np.testing.assert_array_equal(batch_x["student_inputs"], paired["student_inputs"])
    np.testing.assert_allclose(batch_x["teacher_logits"], keras.ops.convert_to_numpy(teacher(x)), rtol=1e-2, atol=1e-2)
    distiller = keras_kd.Distiller(cache, student).compile(optimizer="sgd")
    assert np.isfinite(distiller.fit(cache.attach((paired, y)), epochs=1, verbose=0).history["loss"][0])


def test_tf_data_form_yields_the_same_batches(tmp_path):
    tf = pytest.importorskip("tensorflow")
    teacher = mlp(16, "teacher")
    x, y = data()
    cache = build(teacher, tmp_path / "c", x, y, examples_per_shard=12)
    in_order = cache.dataset(batch_size=16, shuffle=False)
    for (got_x, got_y), (want_x, want_y) in zip(in_order.as_tf_dataset(), concat_batches(in_order), strict=True):
        np.testing.assert_array_equal(got_x["student_inputs"].numpy(), want_x["student_inputs"])
        assert got_x["teacher_logits"].dtype == tf.float32
        np.testing.assert_array_equal(got_x["teacher_logits"].numpy(), want_x["teacher_logits"])
        np.testing.assert_array_equal(got_y.numpy(), want_y)
    shuffled = cache.dataset(batch_size=16, shuffle=True, seed=1).as_tf_dataset(shuffle_batches=True)
    epochs = [np.concatenate([b[1].numpy() for b in shuffled]) for _ in range(2)]
    inputs = np.concatenate([b[0]["student_inputs"].numpy() for b in shuffled])
    assert sorted(inputs[:, 0].tolist()) == sorted(x[:, 0].tolist())  # every example once per epoch
    assert all(sorted(e.tolist()) == sorted(y.tolist()) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    assert TeacherCache(str(tmp_path / "c"), cache_shards=1).dataset(16).as_tf_dataset() is None  # not in memory


def test_tf_data_form_reorders_each_epoch_and_repeats_with_a_seed(tmp_path):
    pytest.importorskip("tensorflow")
    x, y = data()
    cache = build(mlp(16, "teacher"), tmp_path / "c", x, np.arange(N))  # labels: the examples' positions

    def epochs(dataset, count=2):
        return [[b[1].numpy().tolist() for b in dataset] for _ in range(count)]

    # shuffle=False, but fit(shuffle=True): whole batches in a new order each epoch, each batch as stored
    batch_order = epochs(cache.dataset(batch_size=16, shuffle=False).as_tf_dataset(shuffle_batches=True), 4)
    stored = [list(range(start, min(start + 16, N))) for start in range(0, N, 16)]
    assert all(sorted(epoch) == stored for epoch in batch_order)
    assert len({str(epoch) for epoch in batch_order}) > 1
    # shuffle=True: a permutation of all examples per epoch, the same sequence of them for the same seed
    shuffled = [epochs(cache.dataset(batch_size=16, shuffle=True, seed=3).as_tf_dataset()) for _ in range(2)]
    assert shuffled[0] == shuffled[1] and shuffled[0][0] != shuffled[0][1]
    assert [len(b) for b in shuffled[0][0]] == [16, 16, 8]
    assert all(sorted(sum(epoch, [])) == list(range(N)) for epoch in shuffled[0])


def test_the_progress_bar_counts_towards_the_known_length(tmp_path, capsys):
    import tensorflow as tf

    teacher = mlp(16, "teacher")
    x, y = data()
    build(teacher, tmp_path / "arrays", x, y, verbose=1)  # in-memory arrays: examples
    arrays = capsys.readouterr().out
    assert f"{N}/{N}" in arrays and "Unknown" not in arrays, arrays
    TeacherCache.build(teacher, tf.data.Dataset.from_tensor_slices((x, y)).batch(16), str(tmp_path / "tf"))
    dataset = capsys.readouterr().out  # a dataset that knows its length: batches
    assert "3/3" in dataset and "Unknown" not in dataset, dataset
    TeacherCache.build(teacher, batches(x, y), str(tmp_path / "generator"))
    assert "Unknown" in capsys.readouterr().out  # a generator cannot tell
