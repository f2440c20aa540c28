"""Distributed cache builds: each process writes its part, process 0 writes one manifest over all of them."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_kd.cache import CacheCorruptError, ShardStore, TeacherCache
from keras_kd.cache.shards import shard_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 37


def teacher_and_data():
    teacher = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)], name="teacher"
    )
    rng = np.random.default_rng(0)
    return teacher, rng.normal(size=(N, 5)).astype("float32"), rng.integers(0, 3, N).astype("int64")


@pytest.mark.timeout(240)
def test_two_processes_build_one_cache_equal_to_a_single_process_build(tmp_path):
    teacher, x, y = teacher_and_data()
    teacher.save(tmp_path / "teacher.keras")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    directory = tmp_path / "parts"
    script = os.path.join(ROOT, "tests", "scripts", "cache_part.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    args = [str(tmp_path / "teacher.keras"), str(tmp_path / "data.npz"), str(directory)]
    processes = [
        subprocess.Popen([sys.executable, script, *args, str(i), "2"], env=env, stdout=subprocess.PIPE, text=True)
        for i in (1, 0)  # the waiting process first: it must wait for process 0's manifest
    ]
    try:
        outputs = [json.loads(p.communicate(timeout=200)[0].strip().splitlines()[-1]) for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [o["examples"] for o in outputs] == [N, N]
    assert sorted(os.listdir(directory)) == ["manifest.json", "part-00000-of-00002", "part-00001-of-00002"]

    combined = TeacherCache(str(directory))
    single = TeacherCache.build(teacher, (x, y), str(tmp_path / "single"), batch_size=8, verbose=0)
    assert len(combined) == N and "part" not in combined._metadata
    got = combined.batch(np.arange(N))
    want = single.batch(np.arange(N))
    np.testing.assert_array_equal(got[0]["student_inputs"], x)
    np.testing.assert_array_equal(got[0]["teacher_logits"], want[0]["teacher_logits"])
    np.testing.assert_array_equal(got[1], y)
    np.testing.assert_array_equal(combined.fingerprints(), single.fingerprints())
    assert len(list(combined.attach((x, y), batch_size=16))) == 3  # the fingerprints follow the data's order


def test_a_missing_part_times_out_naming_it(tmp_path):
    teacher, x, y = teacher_and_data()
    with pytest.raises(TimeoutError, match=r"waited 0.3 s for the parts \['part-00001-of-00002'\]"):
        TeacherCache.build(teacher, (x, y), str(tmp_path / "c"), verbose=0, part=(0, 2), wait_timeout=0.3)
    assert not os.path.exists(tmp_path / "c" / "manifest.json")  # only the finished part 0 is there
    assert ShardStore.open(str(tmp_path / "c" / "part-00000-of-00002")).metadata["part"] == [0, 2]


@pytest.mark.parametrize("part", [(2, 2), (-1, 2), (0, 0), (0.5, 2), "01", (1,)])
def test_bad_part_is_refused(tmp_path, part):
    teacher, x, y = teacher_and_data()
    with pytest.raises(ValueError, match="part must be \\(index, count\\) with 0 <= index < count"):
        TeacherCache.build(teacher, (x, y), str(tmp_path / "c"), verbose=0, part=part)
    assert not os.path.exists(tmp_path / "c")


def test_manifest_entries_cannot_leave_the_cache_directory(tmp_path):
    assert shard_path(str(tmp_path), {"file": "part-00001-of-00002/shard-00000.npz"}).endswith(
        os.path.join("part-00001-of-00002", "shard-00000.npz")
    )
    for name in ("../shard-00000.npz", "other/shard-00000.npz", "part-00001-of-00002/../x.npz", "a/b/c.npz"):
        with pytest.raises(CacheCorruptError, match="invalid shard entry"):
            shard_path(str(tmp_path), {"file": name})
