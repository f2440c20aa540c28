"""The offline teacher cache: the teacher's outputs, computed once, stored on disk.

The storage layer is NumPy and the standard library only (it imports neither Keras nor a backend),
so a cache written under one backend reads under any other:

* `shards.py`: shard files and the manifest, written atomically and read back verified;
* `store.py`: `ShardStore`, a directory of shards written in order and read at random;
* `fingerprints.py`: the digests that tie stored outputs to their inputs and their teacher.

The teacher cache on top of it imports Keras, and is loaded on first use of `TeacherCache`:

* `schema.py`: the keys a cached example is stored under, and the nesting of the inputs;
* `build.py`: `TeacherCache.build`'s work: run the teacher over the data, write the shards,
  resume an interrupted build, gather a distributed build's parts;
* `teacher_cache.py`: `TeacherCache`, a complete cache opened for reading (and what it stores);
* `datasets.py`: its batches for `fit`: `dataset`'s `PyDataset` (and `tf.data` form), `attach`'s.

On-disk format (`"format": "keras_kd.teacher_cache/1"`)
-------------------------------------------------------

A cache is a directory holding::

    manifest.json
    shard-00000.npz
    shard-00001.npz
    ...

`manifest.json` is a JSON object with the fields:

* `format`: `"keras_kd.teacher_cache/1"`; a reader refuses any other value.
* `complete`: `false` while the build runs or after it was interrupted, `true` once `finish` ran.
  `ShardStore.open` refuses an incomplete cache; `ShardStore.create` resumes it.
* `metadata`: the JSON object the builder passed to `ShardStore.create` (for example the teacher
  fingerprint and a description of the data). Resuming requires exactly the same metadata.
* `examples`: the total number of examples in the listed shards.
* `examples_per_shard`: the shard size of the (last) build; the last shard may be smaller.
* `schema`: `{key: {"dtype": "<f2", "shape": [per-example shape]}}`, the same for every shard.
* `shards`: one entry per shard, in example order: `{"file": "shard-00000.npz", "examples": n,
  "sha256": hex digest of the whole file, "bytes": file size}`.

Each shard is an uncompressed `.npz` (the layout `np.savez` writes; `np.load` reads it) with one
array per key, each with one row per example: example `i` of the cache is row `i - start` of the
shard whose examples span `[start, start + n)`, in manifest order. Keys are free-form
("x/image", "y", "sample_weight", "teacher/logits", "fingerprint") and not interpreted here.

What is hashed, and where it is checked
---------------------------------------

* Each shard file's SHA-256 and size are recorded in the manifest when it is written, and checked
  when a `ShardStore` reads the shard for the first time (`CacheCorruptError` on a mismatch or a
  missing file). A resumed build checks the sizes of the shards it keeps.
* `example_fingerprints` gives a BLAKE2b-128 digest per example of the inputs; a builder stores it
  under a key of its choice so that readers can check their data still matches the cache. (A
  teacher cache build over stored examples compares their labels and sample weights directly.)
* `read_manifest` checks the type of every field; only regular files inside the directory are read
  (no symbolic link, FIFO or device), and a shard no further than its entry's `bytes`.
* `teacher_fingerprint` gives a BLAKE2b-128 hex digest of the teacher's class, config and weights;
  a builder puts it in the metadata, so a cache is never resumed or reused with another teacher.

Every file is written atomically (temporary file in the same directory, flush, fsync,
`os.replace`), and the manifest is rewritten after every shard, so an interrupted build (a crash,
a full disk) leaves a valid, resumable cache and no half-written file. A writing store locks its
directory (`flock` on the directory itself), so a second writer is refused before it touches
anything.
"""

from keras_kd.cache.fingerprints import example_fingerprints, teacher_fingerprint
from keras_kd.cache.shards import CacheCorruptError
from keras_kd.cache.store import ShardStore

__all__ = ["ShardStore", "CacheCorruptError", "TeacherCache", "example_fingerprints", "teacher_fingerprint"]


def __getattr__(name):
    if name == "TeacherCache":
        from keras_kd.cache.teacher_cache import TeacherCache

        return TeacherCache
    raise AttributeError(f"module 'keras_kd.cache' has no attribute {name!r}")
