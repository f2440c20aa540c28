"""The teacher cache's storage layer: shards, manifest, resume, corruption checks and fingerprints."""

import errno
import os

import keras
import numpy as np
import pytest

from keras_kd.cache import CacheCorruptError, ShardStore, example_fingerprints, teacher_fingerprint
from keras_kd.cache import shards as shards_module
from keras_kd.cache import store as store_module
from keras_kd.cache.shards import load_shard, read_manifest, read_shard_bytes, write_manifest, write_shard

METADATA = {"teacher": "abc123", "data": {"name": "toy", "examples": 45}}


def batch(start, stop):
    """Examples `start` to `stop` of a toy data set: every value is a function of the example index."""
    i = np.arange(start, stop)
    image = (i[:, None, None, None] + np.arange(48).reshape(1, 4, 4, 3)).astype("float32")
    return {
        "x/image": image,
        "y": i.astype("int64"),
        "sample_weight": (i / 10).astype("float32"),
        "teacher/logits": (i[:, None] * 0.25 + np.arange(5)).astype("float16"),
        "fingerprint": example_fingerprints({"image": image}),
    }


def assert_same(got, expected):
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def files(directory):
    return sorted(os.listdir(directory))


def build(directory, stop=45, examples_per_shard=8, sizes=(7, 13, 5, 20)):
    store = ShardStore.create(directory, METADATA, examples_per_shard=examples_per_shard)
    start = 0
    for size in sizes:
        store.append(batch(start, min(start + size, stop)))
        start += size
    store.finish()
    return ShardStore.open(directory)


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def full_disk_after_some_bytes(monkeypatch):
    """Makes the next .npy write put a few bytes in the file, then fail like a full disk."""

    def write_npy(file, array):
        file.write(b"\x93NUMPY partial")
        enospc()

    monkeypatch.setattr(shards_module, "write_npy", write_npy)


# ------------------------------------------------------------------------------------ round trip


def test_round_trip_across_shards_with_shuffled_random_access(tmp_path):
    store = build(tmp_path)
    everything = batch(0, 45)
    assert len(store) == 45
    assert store.metadata == METADATA
    assert [entry["examples"] for entry in read_manifest(tmp_path)["shards"]] == [8, 8, 8, 8, 8, 5]
    assert files(tmp_path) == ["manifest.json"] + [f"shard-{i:05d}.npz" for i in range(6)]

    order = np.random.default_rng(0).permutation(45)
    for chunk in np.array_split(order, 4):
        assert_same(store.get(chunk), {key: value[chunk] for key, value in everything.items()})
    repeats = np.array([44, 0, 44, 9, 9, 0])
    assert_same(store.get(repeats), {key: value[repeats] for key, value in everything.items()})

    empty = store.get(np.array([], dtype=np.int64))
    assert empty["teacher/logits"].shape == (0, 5) and empty["teacher/logits"].dtype == np.float16
    assert empty["x/image"].shape == (0, 4, 4, 3)


def test_read_all_concatenates_every_shard_and_releases_them(tmp_path):
    store = build(tmp_path)
    store.get(np.array([0, 44]))
    assert_same(store.read_all(), batch(0, 45))
    assert len(store._cache) == 0  # the rows now live in the returned arrays only
    empty_dir = tmp_path / "empty"
    empty = ShardStore.create(empty_dir, METADATA)
    empty.finish()
    assert ShardStore.open(empty_dir).read_all() == {}


def test_float16_and_argument_like_keys_survive_a_shard(tmp_path):
    arrays = {"file": np.arange(6, dtype="float16").reshape(3, 2) / 3, "allow_pickle": np.array([b"a", b"bc", b""])}
    entry = write_shard(tmp_path, 0, arrays)
    assert entry["file"] == "shard-00000.npz" and entry["examples"] == 3
    assert entry["bytes"] == os.path.getsize(tmp_path / "shard-00000.npz")
    got = load_shard(*read_shard_bytes(tmp_path, entry))  # size and SHA-256 checked against the entry
    assert got["file"].dtype == np.float16
    assert_same(got, arrays)
    with np.load(tmp_path / "shard-00000.npz") as plain:  # an ordinary npz
        np.testing.assert_array_equal(plain["file"], arrays["file"])


def test_each_shard_is_read_once_per_call_and_verified_once_per_store(tmp_path, monkeypatch):
    build(tmp_path)
    reads = []
    original = store_module.read_shard_bytes

    def counting(directory, entry, verify=True):
        reads.append((entry["file"], verify))
        return original(directory, entry, verify=verify)

    monkeypatch.setattr(store_module, "read_shard_bytes", counting)
    store = ShardStore.open(tmp_path, cache_shards=2)
    store.get(np.random.default_rng(1).permutation(45))
    assert sorted(reads) == [(f"shard-{i:05d}.npz", True) for i in range(6)]

    reads.clear()
    store.get(np.array([40, 33]))  # shards 5 and 4: the two most recent, still in memory
    assert reads == []
    store.get(np.array([0, 1, 2]))  # shard 0 was evicted: read again, but not hashed again
    assert reads == [("shard-00000.npz", False)]


def test_out_of_range_index_and_bad_shard_contents_are_refused(tmp_path):
    store = build(tmp_path)
    with pytest.raises(IndexError, match="Index 45 .* 45 examples"):
        store.get(np.array([3, 45]))
    with pytest.raises(IndexError, match="Index -1"):
        store.get(np.array([-1]))
    with pytest.raises(ValueError, match="same first dimension.*'a': 2.*'b': 3"):
        write_shard(tmp_path / "other", 0, {"a": np.zeros(2), "b": np.zeros(3)})
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with pytest.raises(ValueError, match="'z' has dtype bfloat16.*Cast"):
        write_shard(tmp_path, 9, {"z": np.zeros(2, dtype=ml_dtypes.bfloat16)})
    writer = ShardStore.create(tmp_path / "schema", METADATA)
    writer.append(batch(0, 2))
    with pytest.raises(ValueError, match="'teacher/logits' has dtype float32.*stores it as float16"):
        writer.append({**batch(2, 4), "teacher/logits": batch(2, 4)["teacher/logits"].astype("float32")})


# ---------------------------------------------------------------------------------------- resume


def test_resume_after_an_interrupted_build(tmp_path):
    store = ShardStore.create(tmp_path, METADATA, examples_per_shard=8)
    store.append(batch(0, 12))
    store.append(batch(12, 21))  # 21 examples: shards of 8 and 8 written, 5 only buffered
    del store  # the process dies: finish() never runs

    with pytest.raises(
        ValueError, match=r"incomplete: its build was interrupted after 16 examples.*TeacherCache\.build"
    ):
        ShardStore.open(tmp_path)
    assert read_manifest(tmp_path)["complete"] is False

    store = ShardStore.create(tmp_path, METADATA, examples_per_shard=8)
    assert store.stored_examples == 16 and not store.complete
    store.append(batch(16, 30))
    store.append(batch(30, 45))
    store.finish()

    store = ShardStore.open(tmp_path)
    assert len(store) == 45
    assert_same(store.get(np.arange(45)), batch(0, 45))
    assert ShardStore.create(tmp_path, METADATA).complete  # reopening a finished build: nothing to do


def test_a_deleted_shard_is_rebuilt_from_there_on_resume(tmp_path):
    build(tmp_path)
    os.remove(tmp_path / "shard-00002.npz")
    store = ShardStore.create(tmp_path, METADATA, examples_per_shard=8)
    assert store.stored_examples == 16 and not store.complete
    assert files(tmp_path) == ["manifest.json", "shard-00000.npz", "shard-00001.npz"]
    store.append(batch(16, 45))
    store.finish()
    assert_same(ShardStore.open(tmp_path).get(np.arange(45)), batch(0, 45))


def test_different_metadata_is_refused_naming_the_keys(tmp_path):
    build(tmp_path)
    other = {"teacher": "def456", "data": METADATA["data"], "extra": 1}
    with pytest.raises(ValueError, match="different metadata") as info:
        ShardStore.create(tmp_path, other)
    message = str(info.value)
    assert "'teacher'" in message and "'extra'" in message and "'data'" not in message
    assert "abc123" in message and "def456" in message and str(tmp_path) in message

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not empty and has no manifest\.json.*notes\.txt"):
        ShardStore.create(tmp_path / "elsewhere", METADATA)


# ------------------------------------------------------------------------------------ corruption


def test_a_corrupted_byte_is_caught_on_get(tmp_path):
    build(tmp_path)
    path = tmp_path / "shard-00003.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    expected = read_manifest(tmp_path)["shards"][3]["sha256"]

    store = ShardStore.open(tmp_path)
    store.get(np.arange(0, 24))  # the other shards are fine
    with pytest.raises(CacheCorruptError) as info:
        store.get(np.array([25]))
    message = str(info.value)
    assert str(path) in message and expected in message and "wrong checksum" in message
    assert "TeacherCache.build" in message and "delete" in message
    assert isinstance(info.value, ValueError)


def test_a_truncated_or_missing_shard_is_caught(tmp_path):
    build(tmp_path)
    path = tmp_path / "shard-00001.npz"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    with pytest.raises(CacheCorruptError, match=rf"shard-00001\.npz has the wrong size: expected {size} bytes, found"):
        ShardStore.open(tmp_path).get(np.array([8]))

    os.remove(tmp_path / "shard-00004.npz")
    with pytest.raises(CacheCorruptError, match=r"shard-00004\.npz is missing.*TeacherCache\.build"):
        ShardStore.open(tmp_path).get(np.array([32]))


def test_a_broken_manifest_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheCorruptError, match="manifest.json is not valid JSON"):
        ShardStore.open(tmp_path)
    write_manifest(tmp_path, {"format": "keras_kd.teacher_cache/0", "complete": True, "metadata": {}, "shards": []})
    with pytest.raises(ValueError, match="format 'keras_kd.teacher_cache/0'.*reads 'keras_kd.teacher_cache/1'"):
        ShardStore.open(tmp_path)


# ------------------------------------------------------------------------------------- full disk


def test_full_disk_during_write_shard_leaves_nothing_behind(tmp_path, monkeypatch):
    full_disk_after_some_bytes(monkeypatch)
    with pytest.raises(OSError) as info:
        write_shard(tmp_path, 0, batch(0, 4))
    assert info.value.errno == errno.ENOSPC
    assert files(tmp_path) == []

    monkeypatch.undo()
    monkeypatch.setattr(shards_module.os, "fsync", enospc)  # the data fits, the flush to disk does not
    with pytest.raises(OSError, match="No space left"):
        write_shard(tmp_path, 0, batch(0, 4))
    assert files(tmp_path) == []


def test_full_disk_during_a_build_keeps_the_manifest_and_can_resume(tmp_path, monkeypatch):
    store = ShardStore.create(tmp_path, METADATA, examples_per_shard=8)
    store.append(batch(0, 10))
    manifest = (tmp_path / "manifest.json").read_bytes()
    before = files(tmp_path)
    assert before == ["manifest.json", "shard-00000.npz"]

    full_disk_after_some_bytes(monkeypatch)
    with pytest.raises(OSError) as info:
        store.append(batch(10, 20))
    assert info.value.errno == errno.ENOSPC
    assert files(tmp_path) == before
    assert (tmp_path / "manifest.json").read_bytes() == manifest
    with pytest.raises(RuntimeError, match="earlier write .* failed.*8 examples .* resume"):
        store.append(batch(20, 21))

    monkeypatch.undo()
    monkeypatch.setattr(shards_module.os, "fsync", enospc)
    with pytest.raises(OSError):
        write_manifest(tmp_path, {"format": "anything"})
    assert (tmp_path / "manifest.json").read_bytes() == manifest and files(tmp_path) == before

    monkeypatch.undo()
    store = ShardStore.create(tmp_path, METADATA, examples_per_shard=8)
    assert store.stored_examples == 8
    store.append(batch(8, 45))
    store.finish()
    assert_same(ShardStore.open(tmp_path).get(np.arange(45)), batch(0, 45))


# ---------------------------------------------------------------------------------- fingerprints


def test_example_fingerprints_follow_each_example():
    x = {"tokens": np.arange(40, dtype="int32").reshape(8, 5), "mask": np.ones((8, 5), dtype="bool")}
    digests = example_fingerprints(x)
    assert digests.shape == (8, 16) and digests.dtype == np.uint8
    assert len({row.tobytes() for row in digests}) == 8
    np.testing.assert_array_equal(example_fingerprints({key: value.copy() for key, value in x.items()}), digests)
    np.testing.assert_array_equal(example_fingerprints({"mask": x["mask"], "tokens": x["tokens"]}), digests)
    np.testing.assert_array_equal(
        example_fingerprints({key: keras.ops.convert_to_tensor(v) for key, v in x.items()}), digests
    )

    changed = {"tokens": x["tokens"].copy(), "mask": x["mask"]}
    changed["tokens"][3, 2] += 1
    differs = (example_fingerprints(changed) != digests).any(axis=1)
    assert differs.tolist() == [i == 3 for i in range(8)]

    order = np.array([7, 2, 5, 0, 1, 6, 3, 4])
    np.testing.assert_array_equal(example_fingerprints({key: value[order] for key, value in x.items()}), digests[order])

    as_int64 = example_fingerprints({"tokens": x["tokens"].astype("int64"), "mask": x["mask"]})
    assert (as_int64 != digests).any(axis=1).all()
    assert (example_fingerprints(x["tokens"]) != digests).any(axis=1).all()  # another structure
    with pytest.raises(ValueError, match=r"batch size \(\['mask'\]: 8, \['tokens'\]: 7\)"):
        example_fingerprints({"tokens": x["tokens"][:7], "mask": x["mask"]})


def test_teacher_fingerprint_tracks_weights_and_config():
    def teacher(activation=None):
        model = keras.Sequential(
            [keras.Input((4,), name="features"), keras.layers.Dense(3, activation=activation, name="dense")],
            name="teacher",
        )
        model.set_weights([np.arange(12, dtype="float32").reshape(4, 3), np.zeros(3, dtype="float32")])
        return model

    model = teacher()
    fingerprint = teacher_fingerprint(model)
    assert len(fingerprint) == 32 and fingerprint == teacher_fingerprint(teacher())

    weights = model.get_weights()
    weights[0][1, 2] += 1e-3
    model.set_weights(weights)
    assert teacher_fingerprint(model) != fingerprint
    assert teacher_fingerprint(teacher(activation="relu")) != fingerprint
