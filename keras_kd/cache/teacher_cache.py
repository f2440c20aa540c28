"""`TeacherCache`: the teacher's outputs computed once, stored on disk, streamed back for training.

Offline distillation runs the teacher over the data once (`TeacherCache.build`) and trains the
student from the stored outputs (`keras_kd.Distiller(cache, student)` fitted on
`cache.dataset(...)`), so no training step runs the teacher.

What a cache stores (per example, in the shards of a `keras_kd.cache.ShardStore`)
-------------------------------------------------------------------------------

* `x` or `x/<path>`: every input array of the student; `<path>` is the position in a dict/list
  input (`x/image`, `x/token_ids`, `x/0`, `x/a/1`). The nesting is kept in the metadata's
  `inputs`. When the data's `x` is `keras_kd.paired_inputs(teacher_x, student_x)`, the teacher
  reads `teacher_x` and only `student_x` is stored. Inputs are arrays: tokenize raw strings first.
* `y`, `sample_weight`: when the data has them.
* `teacher/logits`: the teacher's output, in the cache's `dtype` (`"float16"` by default, or
  `"float32"`); read back as float32. A cache built from a list of `K` teachers stores every
  teacher's logits in one array with a teacher axis, `(K, *logits shape)` per example (in the
  list's order), so that `Distiller(cache, student, teacher_weights=...)` mixes them at the
  step's temperature with any weights, exactly as the online multi-teacher distiller does
  (storing the mixture instead would fix `T` and the weights at build time). Such a cache
  holds no top-k logits and no pair features.
* With `top_k=K`, instead of the logits: `teacher/top_k/values` (the K largest logits per
  position, in `dtype`), `teacher/top_k/indices` (int32) and `teacher/top_k/tail_logsumexp`
  (float32: the log of the other classes' summed `exp(logit)`), as
  `keras_kd.losses.top_k_logits` computes them on the teacher's device. The distiller then uses
  `keras_kd.losses.top_k_soft_target_loss`: the teacher's K classes and one tail bucket (see
  `keras_kd.losses.top_k` for the approximation). A causal LM with a 49,152-token vocabulary
  stores 98 KB per position as float16 logits, and 388 bytes with `top_k=64`.
* `teacher/feature/<pair index>/<layer index>`: for each `keras_kd.LayerPair` given to `build`,
  the output of each of its teacher layers, in the same dtype.
* `fingerprint`: `example_fingerprints` of the example's whole `x` (16 bytes).

The manifest's metadata holds `kind` (`"keras_kd.TeacherCache"`), `teacher` (the
`teacher_fingerprint`; for several teachers a list of them, and `num_teachers`), `dtype`,
`pair_paths` (the teacher layer paths of each pair), `inputs` (the nesting of `x`),
`has_labels`, `has_sample_weight`, and for a top-k cache `top_k` and `vocabulary_size`.

What a batch of `cache.dataset(...)` holds
------------------------------------------

`(x, y)`, `(x, y, sample_weight)`, or `x` alone when the cache has no labels, where `x` is
`{"student_inputs": <the stored inputs>, "teacher_logits": float32 array, "teacher_features":
((array per teacher layer) per pair)}` (the last key only when the cache holds pair features;
tuples because tf.data refuses lists). From a cache of `K` teachers, `teacher_logits` has the
shape `(batch, K, ...)`. A top-k cache has `"teacher_top_k": (values, indices,
tail_logsumexp)` (float32, int32, float32) in place of `"teacher_logits"`.
A `Distiller` built on the cache reads the teacher's side of its loss from these keys.

Example:

>>> import tempfile, numpy as np, keras, keras_kd
>>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
>>> x, y = np.random.rand(40, 4).astype("float32"), np.random.randint(0, 3, 40)
>>> cache = keras_kd.TeacherCache.build(teacher, (x, y), tempfile.mkdtemp(), batch_size=16, verbose=0)
>>> len(cache), cache.logits_shape, cache.has_labels
(40, (3,), True)
>>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
>>> distiller = keras_kd.Distiller(cache, student).compile(optimizer="adam")
>>> history = distiller.fit(cache.dataset(batch_size=16), epochs=1, verbose=0)
>>> sorted(history.history)
['hard_loss', 'loss', 'soft_loss']
"""

import os

import keras
import numpy as np

from keras_kd.cache.build import build_cache
from keras_kd.cache.datasets import CacheDataset, attached
from keras_kd.cache.fingerprints import example_fingerprints
from keras_kd.cache.schema import (
    DTYPES,
    FINGERPRINT,
    KIND,
    LOGITS,
    TOP_K_INDICES,
    TOP_K_TAIL,
    TOP_K_VALUES,
    feature_key,
    restore,
)
from keras_kd.cache.shards import MANIFEST, CacheCorruptError, read_manifest
from keras_kd.cache.store import ShardStore
from keras_kd.data.batch_keys import LOGITS_KEY, STUDENT_KEY, TEACHER_FEATURES_KEY, TOP_K_KEY, student_view


def _numpy_cast(array, dtype):
    return array.astype(dtype)


def _with_labels(x, arrays, has_labels, has_sample_weight):
    """A batch as Keras unpacks it: `x`, `(x, y)` or `(x, y, sample_weight)`, labels taken from `arrays`."""
    if not has_labels:
        return x
    if has_sample_weight:
        return x, arrays["y"], arrays["sample_weight"]
    return x, arrays["y"]


@keras.saving.register_keras_serializable(package="keras_kd")
class TeacherCache:
    """A complete teacher cache, opened for reading: `TeacherCache(directory)`.

    Make one with `TeacherCache.build(teacher, data, directory, ...)`. See the module docstring
    (`keras_kd.cache.teacher_cache`) for what is stored and what its batches hold.

    Args:
        directory: a directory written by `TeacherCache.build`.
        cache_shards: how many shards stay in memory once read (see `dataset` for how shuffling
            uses them). By default as many as fit in `memory_bytes`, and at least 4.
        memory_bytes: the memory the default `cache_shards` may use (`None`: 1 GiB). A cache that fits
            is read from disk once and then served from memory, shuffled as a whole. Only without
            `cache_shards`, which it would not change.

    Example:

    >>> import tempfile, numpy as np, keras, keras_kd
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.random.rand(10, 4).astype("float32")
    >>> directory = tempfile.mkdtemp()
    >>> built = keras_kd.TeacherCache.build(teacher, x, directory, dtype="float32", verbose=0)
    >>> cache = keras_kd.TeacherCache(directory)  # opened again, e.g. in another process or backend
    >>> len(cache), cache.logits_shape, cache.dtype, cache.has_labels
    (10, (3,), 'float32', False)
    >>> batch = cache.batch([0, 1])  # no labels stored: the batch is the input dict alone
    >>> sorted(batch), batch["teacher_logits"].shape
    (['student_inputs', 'teacher_logits'], (2, 3))
    >>> bool(np.allclose(batch["teacher_logits"], keras.ops.convert_to_numpy(teacher(x[:2])), atol=1e-6))
    True
    """

    def __init__(self, directory, cache_shards=None, memory_bytes=None):
        if cache_shards is not None and memory_bytes is not None:
            raise ValueError(
                f"TeacherCache(cache_shards={cache_shards!r}, memory_bytes={memory_bytes!r}): memory_bytes only "
                "chooses the default cache_shards, so with both it would be ignored. Give one of them."
            )
        if cache_shards is None:
            memory_bytes = 1 << 30 if memory_bytes is None else memory_bytes
            cache_shards = _shards_within(read_manifest(os.fspath(directory)), memory_bytes)
        self._store = ShardStore.open(directory, cache_shards=cache_shards)
        self._cache_shards = cache_shards
        metadata = self._store.metadata
        if metadata.get("kind") != KIND:
            raise ValueError(
                f"{directory} holds a ShardStore that is not a TeacherCache (its metadata kind is "
                f"{metadata.get('kind')!r}). Build it with keras_kd.TeacherCache.build."
            )
        self._schema = self._store.schema
        _check_metadata(self._store.directory, metadata, self._schema)
        self._metadata = metadata
        self._resident_arrays = None

    # ------------------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        teacher,
        data,
        directory,
        top_k=None,
        pairs=(),
        dtype="float16",
        batch_size=None,
        examples_per_shard=1024,
        verbose=1,
        part=None,
        wait_timeout=None,
        chunk_size="auto",
    ):
        """Runs `teacher` once over `data` and stores its outputs in `directory`; returns the opened cache.

        Args:
            teacher: a built `keras.Model` returning one tensor of logits, or a list of them
                (several teachers of one output shape, for a multi-teacher `Distiller`; no
                `top_k`, no `pairs`). Each runs with `training=False`, once per batch.
            data: a batched `tf.data.Dataset` (or another iterable of batches, or a
                `keras.utils.PyDataset`) yielding `x`, `(x, y)` or `(x, y, sample_weight)`; or
                in-memory NumPy data: `x` (an array or a dict/list of arrays) or a tuple
                `(x, y)` / `(x, y, sample_weight)` of them, batched by `batch_size`. `x` may be any
                nesting of dicts and lists of arrays with one leading batch axis. Every batch must
                have the same structure and per-example shapes (pad sequences to one length).
            directory: where to write the cache (a new or empty directory, or one holding an
                interrupted build of the same teacher, pairs and dtype, which is resumed).
            top_k: `None` stores the dense logits; an int `K` smaller than the number of classes
                stores, per position, the K largest logits, their indices and the log-mass of the
                rest (for language models' vocabularies; see the module docstring). The
                distiller then trains with the bucketed soft loss
                `keras_kd.losses.top_k_soft_target_loss`.
            pairs: `keras_kd.LayerPair` objects (`Hint`, `AttentionTransfer`, ...) whose teacher
                layers' outputs are stored too, so that a distiller with these pairs can train
                from the cache. Only the teacher side is used here.
            dtype: how outputs are stored: `"float16"` (default, half the disk) or `"float32"`.
            batch_size: the batch size for in-memory arrays (default 32); not for datasets.
            examples_per_shard: examples per shard file.
            verbose: 1 shows a progress bar, 0 is silent.
            part: `(index, count)` for a distributed build (below); `None` for one process.
            wait_timeout: how long a distributed build's processes wait for each other, in seconds
                (`None`: 3600); only with `part`.
            chunk_size: with `top_k`, how a language model's logits are reduced to their top k: `"auto"`
                (default) runs its output head on chunks of about 64 MiB of logits where its
                `(batch, positions, vocabulary)` logits are larger (see `Distiller`'s `chunk_size`),
                an int that many positions at a time, `None` on the whole batch at once. The stored
                values are the same.

        Distributed builds: each of `count` processes (JAX's `jax.process_index()` of
        `jax.process_count()`, a TensorFlow worker's task index, ...) calls `build` with
        `part=(index, count)`, its own slice of the data and the same `directory` on a filesystem
        they all see. Each writes its shards into `directory/part-<index>-of-<count>/` (resumable
        like a whole build); process 0 waits until every part is complete and then writes the
        one manifest of `directory`, listing the parts' shards in part order; the other processes
        wait for that manifest. Every call returns the whole cache. Give each process a
        contiguous slice, in order, so that the cache's example order is the data's (which
        `attach` needs).

        Resuming: when `directory` holds an interrupted build with the same metadata (teacher
        fingerprint, dtype, pair paths, input structure, labels), the examples already stored are
        skipped (the teacher does not run on them) after checking that their fingerprints, labels
        and sample weights equal the stored ones; a difference means that the data changed since,
        and is an error. A directory holding the complete cache of the same teacher and data is
        verified the same way and returned as it is (without writing to it).

        One build writes a directory at a time: while another (in any process) writes it, `build`
        raises `RuntimeError` and touches nothing there.
        """
        directory = build_cache(
            teacher,
            data,
            directory,
            top_k=top_k,
            pairs=pairs,
            dtype=dtype,
            batch_size=batch_size,
            examples_per_shard=examples_per_shard,
            verbose=verbose,
            part=part,
            wait_timeout=wait_timeout,
            chunk_size=chunk_size,
        )
        return cls(directory)

    # ------------------------------------------------------------------------- reading

    @property
    def directory(self):
        """The directory the cache was opened from."""
        return self._store.directory

    def __len__(self):
        return len(self._store)

    def __repr__(self):
        stored = "logits" if self.top_k is None else f"top-{self.top_k} logits of"
        if self.num_teachers > 1:
            stored = f"{self.num_teachers} teachers' logits"
        return f"<TeacherCache {self.directory!r}: {len(self)} examples, {stored} {self.logits_shape} {self.dtype}>"

    @property
    def teacher_fingerprint(self):
        """The `teacher_fingerprint` of the teacher that produced the outputs (a list, one per teacher, for several)."""
        return self._metadata["teacher"]

    @property
    def num_teachers(self):
        """How many teachers' logits the cache holds (1 unless it was built from a list of teachers)."""
        return int(self._metadata.get("num_teachers", 1))

    @property
    def dtype(self):
        """How outputs are stored on disk (`"float16"` or `"float32"`); they are read as float32."""
        return self._metadata["dtype"]

    @property
    def pair_paths(self):
        """Per pair given to `build`, the teacher layer paths whose outputs are stored."""
        return [list(paths) for paths in self._metadata["pair_paths"]]

    @property
    def logits_shape(self):
        """The shape of the teacher's logits for one example (no batch axis), also for a top-k cache."""
        if self.top_k is None:
            shape = tuple(self._schema[LOGITS][1])
            return shape[1:] if self.num_teachers > 1 else shape
        return (*self._schema[TOP_K_VALUES][1][:-1], self._metadata["vocabulary_size"])

    @property
    def top_k(self):
        """`K` when the cache holds the teacher's K largest logits per position; `None` for dense logits."""
        return self._metadata.get("top_k")

    @property
    def has_labels(self):
        """Whether the data given to `build` had labels `y` (stored, and yielded by `dataset`)."""
        return bool(self._metadata["has_labels"])

    @property
    def has_sample_weight(self):
        """Whether the data given to `build` had sample weights (stored, and yielded by `dataset`)."""
        return bool(self._metadata["has_sample_weight"])

    def feature_location(self, path):
        """`(pair index, layer index)` of the first stored output of the teacher layer `path`, or None."""
        for i, paths in enumerate(self._metadata["pair_paths"]):
            for j, stored in enumerate(paths):
                if stored == path:
                    return i, j
        return None

    def feature_shape(self, path):
        """The stored output shape of the teacher layer `path` for one example (no batch axis)."""
        i, j = self.feature_location(path)
        return self._schema[feature_key(i, j)][1]

    def fingerprints(self, indices=None):
        """The stored `example_fingerprints` (all examples, or those at `indices`)."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        return self._rows(indices)[FINGERPRINT]

    def shuffled_order(self, rng):
        """Every example's position once, in a random order drawn from `rng` (a NumPy `Generator`).

        A full permutation when the whole cache fits in `cache_shards`; otherwise the shards are
        taken in a random order, `cache_shards` at a time, and the examples of those shards are
        shuffled together, so that each shard is read from disk once per pass.
        """
        starts, ends = self._store.shard_starts, self._store.shard_ends
        window = max(int(self._cache_shards), 1)
        if len(starts) <= window:
            return rng.permutation(len(self))
        shards = rng.permutation(len(starts))
        groups = [shards[i : i + window] for i in range(0, len(shards), window)]
        return np.concatenate(
            [rng.permutation(np.concatenate([np.arange(starts[k], ends[k]) for k in group])) for group in groups]
        )

    def resident_arrays(self):
        """Every stored array, whole, as `{key: array}` when all shards fit in `cache_shards`; else None.

        The cache is read from disk on the first call and then kept in memory.
        """
        if self._resident_arrays is None and self._store.num_shards <= self._cache_shards:
            self._resident_arrays = self._store.read_all()
        return self._resident_arrays

    def pack_batch(self, arrays, cast=None):
        """The batch that `dataset` yields for stored rows `arrays` (`{key: array}`, as read from the store).

        `cast(array, dtype)` converts the teacher's outputs to float32 (and top-k indices to int32);
        by default NumPy's `astype`, `tf.cast` inside a `tf.data` pipeline.
        """
        cast = _numpy_cast if cast is None else cast
        x = {STUDENT_KEY: restore(self._metadata["inputs"], arrays), **self._teacher_side(arrays, cast)}
        return _with_labels(x, arrays, self.has_labels, self.has_sample_weight)

    def attached_batch(self, x, y, sample_weight, indices):
        """The batch of `dataset`'s structure for your inputs `x` of the examples at `indices`, checked first.

        `x`'s `example_fingerprints` must equal the stored ones of `indices`, else a ValueError
        (see `attach`). `y` and `sample_weight` (NumPy arrays, or None to use the stored ones)
        take the place of the stored labels and weights.
        """
        arrays = self._rows(indices)
        mismatch = np.flatnonzero(np.any(example_fingerprints(x) != arrays[FINGERPRINT], axis=1))
        if mismatch.size:
            raise ValueError(
                f"The inputs differ from those the cache in {self.directory} was built on: the example at "
                f"position {int(indices[mismatch[0]])} (and {mismatch.size - 1} more in this batch) does not match "
                "the stored fingerprint. The inputs were reordered, are other examples, or are augmented. Feed the "
                "inputs unchanged and in the order of the build, or use cache.dataset(...). Augmented inputs need "
                "online distillation: pass the teacher model to keras_kd.Distiller instead of a cache."
            )
        if y is not None:
            arrays["y"] = y
        if sample_weight is not None:
            arrays["sample_weight"] = sample_weight
        x = {STUDENT_KEY: student_view(x), **self._teacher_side(arrays, _numpy_cast)}
        return _with_labels(x, arrays, "y" in arrays, "sample_weight" in arrays)

    def _teacher_side(self, arrays, cast):
        if self.top_k is None:
            x = {LOGITS_KEY: cast(arrays[LOGITS], "float32")}
        else:
            x = {
                TOP_K_KEY: (
                    cast(arrays[TOP_K_VALUES], "float32"),
                    cast(arrays[TOP_K_INDICES], "int32"),
                    cast(arrays[TOP_K_TAIL], "float32"),
                )
            }
        if self._metadata["pair_paths"]:
            # Tuples, not lists: tf.data (Keras's PyDataset adapter on TensorFlow) refuses lists.
            x[TEACHER_FEATURES_KEY] = tuple(
                tuple(cast(arrays[feature_key(i, j)], "float32") for j in range(len(paths)))
                for i, paths in enumerate(self._metadata["pair_paths"])
            )
        return x

    def _rows(self, indices, skip=()):
        """`{key: rows at indices}` (but the keys in `skip`).

        When every shard fits in `cache_shards`, the whole cache is read once into one array per
        key, and a batch is one fancy index per key instead of a gather from each shard it touches.
        """
        resident = self.resident_arrays()
        if resident is None:
            return self._store.get(indices)
        return {key: array[indices] for key, array in resident.items() if key not in skip}

    def batch(self, indices):
        """The batch of the examples at `indices`, as `dataset` yields it."""
        return self.pack_batch(self._rows(np.asarray(indices), skip=(FINGERPRINT,)))

    def dataset(self, batch_size=32, shuffle=True, seed=None):
        """A `keras.utils.PyDataset` over the cache, for `Distiller(cache, student).fit(...)`.

        Each epoch visits every example once, reshuffled every epoch when `shuffle` (from a
        NumPy generator seeded with `seed`); the last batch may be smaller. When the whole cache
        fits in the `cache_shards` shards kept in memory, the shuffle is a full permutation;
        otherwise the shards are visited in a random order, `cache_shards` at a time, with the
        examples of those shards shuffled together (like a shuffle buffer of that many shards),
        so that each shard is read from disk once per epoch. Batches are
        `(x, y)`, `(x, y, sample_weight)` or `x` as stored, with `x` the dict described in
        `keras_kd.cache.teacher_cache`; logits and features come back as float32.

        Keras's `fit` also shuffles the order of a `PyDataset`'s batches unless given
        `shuffle=False`: for a fixed order pass `shuffle=False` to both.
        """
        return CacheDataset(self, batch_size, shuffle, seed)

    def attach(self, data, batch_size=None, shuffle=False):
        """Pairs your own inputs with the cached outputs, after checking that they are the same inputs.

        `data` holds the inputs the cache was built on, in the same order: in-memory arrays
        (`x`, or `(x, y[, sample_weight])`, batched by `batch_size`, default 32) give a
        `keras.utils.PyDataset` that can be shuffled (inputs and outputs together, every epoch);
        a batched dataset or another iterable gives a one-pass generator (`shuffle` must be
        False; call `attach` again for each epoch). Batches have the structure of `dataset`'s,
        with `student_inputs` (and `y`, `sample_weight` where `data` has them, else the stored
        ones) taken from `data`.

        Every batch's `example_fingerprints` are compared with the stored ones of those
        positions: reordered, different or augmented inputs raise a ValueError, since the cached
        outputs would not belong to them. Augmented inputs need online distillation: pass the
        teacher model to the Distiller instead of a cache.
        """
        return attached(self, data, batch_size, shuffle)

    # ------------------------------------------------------------------------- serialization

    def get_config(self):
        """`{"directory": absolute path}`: a `Distiller` built on the cache saves this, not the outputs."""
        return {"directory": os.path.abspath(self.directory)}

    @classmethod
    def from_config(cls, config):
        """Opens the cache at `config["directory"]` again."""
        return cls(config["directory"])


def _check_metadata(directory, metadata, schema):
    """Raises `CacheCorruptError`, naming the field, when a cache's metadata or stored keys were tampered with."""

    def refuse(field, expected):
        value = metadata.get(field, "(absent)")
        text = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        return CacheCorruptError(
            f"The metadata of the teacher cache in {os.path.join(directory, MANIFEST)} has an invalid {field!r}: "
            f"{text}, where TeacherCache.build writes {expected}. It was edited or damaged: rebuild the cache with "
            "TeacherCache.build into a fresh directory."
        )

    if "num_teachers" in metadata and not _is_int(metadata["num_teachers"], 2):
        raise refuse("num_teachers", "the number of teachers (an int >= 2), or nothing for one teacher")
    teachers, teacher = metadata.get("num_teachers", 1), metadata.get("teacher")
    if teachers == 1:
        valid = isinstance(teacher, str)
    else:
        valid = isinstance(teacher, list) and len(teacher) == teachers and all(isinstance(t, str) for t in teacher)
    if not valid:
        raise refuse("teacher", "the teacher's fingerprint (a string; a list of them for several teachers)")
    if metadata.get("dtype") not in DTYPES:
        raise refuse("dtype", f"one of {list(DTYPES)}")
    paths = metadata.get("pair_paths")
    if not isinstance(paths, list) or not all(
        isinstance(p, list) and all(isinstance(q, str) for q in p) for p in paths
    ):
        raise refuse("pair_paths", "a list of lists of teacher layer paths")
    if not _is_spec(metadata.get("inputs")):
        raise refuse("inputs", "the nesting of the inputs (a key, or {'dict'|'list'|'tuple': ...})")
    for field in ("has_labels", "has_sample_weight"):
        if not isinstance(metadata.get(field), bool):
            raise refuse(field, "true or false")
    top_k = metadata.get("top_k")
    if top_k is not None and not _is_int(top_k, 1):
        raise refuse("top_k", "the number of logits kept per position (an int >= 1), or nothing")
    if top_k is not None and not (_is_int(metadata.get("vocabulary_size"), 2) and metadata["vocabulary_size"] > top_k):
        raise refuse("vocabulary_size", "the number of classes, larger than top_k")
    if schema:  # else no examples stored (an empty part of a distributed build): nothing else to check
        _check_stored_keys(directory, metadata, schema)


def _is_int(value, minimum):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_spec(spec):
    """Whether `spec` is a nesting of the inputs as the metadata records it: a key, or {'dict'|'list'|'tuple': ...}."""
    if isinstance(spec, str):
        return True
    if not isinstance(spec, dict) or len(spec) != 1:
        return False
    ((kind, children),) = spec.items()
    if kind == "dict":
        return isinstance(children, dict) and all(_is_spec(child) for child in children.values())
    return kind in ("list", "tuple") and isinstance(children, list) and all(_is_spec(c) for c in children)


def _check_stored_keys(directory, metadata, schema):
    """Raises `CacheCorruptError` when the shards' arrays lack one that the (checked) metadata describes."""
    top_k, paths = metadata.get("top_k"), metadata["pair_paths"]
    expected = {FINGERPRINT, *(key for key in _input_keys(metadata["inputs"]))}
    expected |= {LOGITS} if top_k is None else {TOP_K_VALUES, TOP_K_INDICES, TOP_K_TAIL}
    expected |= {"y"} if metadata["has_labels"] else set()
    expected |= {"sample_weight"} if metadata["has_sample_weight"] else set()
    expected |= {feature_key(i, j) for i, p in enumerate(paths) for j in range(len(p))}
    missing = sorted(expected - set(schema))
    if missing:
        raise CacheCorruptError(
            f"The teacher cache in {directory} lacks the stored arrays {missing} that its metadata describes; its "
            f"manifest was edited or damaged. Rebuild the cache with TeacherCache.build into a fresh directory."
        )


def _input_keys(spec):
    if isinstance(spec, str):
        return [spec]
    ((kind, children),) = spec.items()
    children = children.values() if kind == "dict" else children
    return [key for child in children for key in _input_keys(child)]


def _shards_within(manifest, memory_bytes):
    """How many of the cache's shards fit in `memory_bytes` (its largest shards counted), at least 4."""
    sizes = sorted((entry["bytes"] for entry in manifest["shards"]), reverse=True)
    total, count = 0, 0
    for size in sizes:
        total += size
        if total > memory_bytes:
            break
        count += 1
    return max(count, 4)
