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

import itertools
import os
import time

import keras
import numpy as np

from keras_kd import validation as checks
from keras_kd.cache.fingerprints import _to_numpy, example_fingerprints, teacher_fingerprint
from keras_kd.cache.shards import part_name, read_manifest
from keras_kd.cache.store import ShardStore
from keras_kd.data.arrays import batch_size_of, dataset_batches, is_in_memory
from keras_kd.data.batch_keys import (
    LOGITS_KEY,
    STUDENT_KEY,
    TEACHER_FEATURES_KEY,
    TOP_K_KEY,
    student_view,
    teacher_view,
)
from keras_kd.features import layer_paths
from keras_kd.features.capture import capture, captured_output, install_tap
from keras_kd.features.pairs import LayerPair
from keras_kd.losses.top_k import check_top_k, top_k_logits

KIND = "keras_kd.TeacherCache"
DTYPES = ("float16", "float32")
LOGITS = "teacher/logits"
TOP_K_VALUES = "teacher/top_k/values"
TOP_K_INDICES = "teacher/top_k/indices"
TOP_K_TAIL = "teacher/top_k/tail_logsumexp"
FINGERPRINT = "fingerprint"


def feature_key(pair_index, layer_index):
    return f"teacher/feature/{pair_index}/{layer_index}"


# ----------------------------------------------------------------------------- input structure


def _input_spec(x, key="x"):
    """The nesting of `x` as JSON, with each leaf replaced by the key it is stored under."""
    if isinstance(x, dict):
        for name in x:
            if not isinstance(name, str):
                raise TypeError(f"Input dicts need str keys to be cached; got the key {name!r}.")
        return {"dict": {name: _input_spec(value, f"{key}/{name}") for name, value in x.items()}}
    if isinstance(x, (list, tuple)):
        kind = "list" if isinstance(x, list) else "tuple"
        return {kind: [_input_spec(value, f"{key}/{i}") for i, value in enumerate(x)]}
    return key


def _leaves(spec, x):
    """`[(key, leaf)]` of `x` following `spec`."""
    if isinstance(spec, str):
        return [(spec, x)]
    if "dict" in spec:
        return [item for name, sub in spec["dict"].items() for item in _leaves(sub, x[name])]
    kind = "list" if "list" in spec else "tuple"
    return [item for i, sub in enumerate(spec[kind]) for item in _leaves(sub, x[i])]


def _restore(spec, arrays):
    if isinstance(spec, str):
        return arrays[spec]
    if "dict" in spec:
        return {name: _restore(sub, arrays) for name, sub in spec["dict"].items()}
    if "list" in spec:
        return [_restore(sub, arrays) for sub in spec["list"]]
    return tuple(_restore(sub, arrays) for sub in spec["tuple"])


def _numpy_tree(structure):
    return keras.tree.map_structure(_to_numpy, structure)


def _slice(structure, start, stop=None):
    return keras.tree.map_structure(lambda a: a[start:stop], structure)


def _numpy_cast(array, dtype):
    return array.astype(dtype)


def _take(structure, indices):
    return keras.tree.map_structure(lambda a: np.asarray(a)[indices], structure)


# ----------------------------------------------------------------------------- data


def _is_array_like(value):
    return isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype"))


def _unpack(batch):
    if isinstance(batch, tuple):
        if not 1 <= len(batch) <= 3:
            raise ValueError(
                f"A batch must be x, (x, y) or (x, y, sample_weight); got a tuple of {len(batch)} elements."
            )
        return tuple(batch) + (None,) * (3 - len(batch))
    return batch, None, None


def _array_batches(data, batch_size):
    """Batches `(x, y, sample_weight)` of in-memory data, in order."""
    x, y, sample_weight = _unpack(data)
    total = batch_size_of(x)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        yield tuple(None if part is None else _slice(part, start, stop) for part in (x, y, sample_weight))


def _batches(data, batch_size):
    """Yields `(x, y, sample_weight)` of NumPy arrays, in the data's order."""
    if is_in_memory(data):
        if batch_size is None:
            batch_size = 32
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        yield from (_numpy_tree_parts(b) for b in _array_batches(data, batch_size))
        return
    if batch_size is not None:
        raise ValueError(
            "batch_size is for in-memory arrays; a dataset is already batched (batch it with .batch(n) instead)."
        )
    accepted = "NumPy arrays (x, a dict of arrays, or a tuple (x, y[, sample_weight]))"
    for batch in dataset_batches(data, "data", accepted):
        yield _numpy_tree_parts(_unpack(batch))


def _numpy_tree_parts(parts):
    return tuple(None if part is None else _numpy_tree(part) for part in parts)


# ----------------------------------------------------------------------------- the cache


def _finite(value, dtype, what, first):
    """`value` as stored (`dtype`), or a ValueError when it holds NaN/Inf or overflows float16."""
    source = np.asarray(value)
    stored = source.astype(dtype)
    finite = np.isfinite(stored)
    if finite.all():
        return stored
    bad = int(finite.size - np.count_nonzero(finite))
    if np.isfinite(source).all():
        raise ValueError(
            f"{what} for the batch from example {first} on reach {float(np.abs(source).max()):.6g}, beyond the "
            f"largest float16 (65504): {bad} values would be stored as Inf. Build the cache with dtype='float32'."
        )
    raise ValueError(
        f"{what} for the batch from example {first} on hold {bad} non-finite values (NaN or Inf); stored, they "
        "would make every soft target NaN. Check the teacher's weights and these examples' inputs (NaN in the "
        "data?), then build again: the examples already stored are kept and the build resumes."
    )


def _check_dtype(dtype):
    name = getattr(dtype, "name", dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'float16' or 'float32' (how the teacher's outputs are stored), got {dtype!r}.")
    return name


def _check_pairs(pairs):
    if not isinstance(pairs, (list, tuple)):
        raise TypeError(f"pairs must be a list of keras_kd.LayerPair objects, got {type(pairs).__name__}.")
    for pair in pairs:
        if not isinstance(pair, LayerPair):
            raise TypeError(f"pairs must hold keras_kd.LayerPair objects (Hint, AttentionTransfer, ...); got {pair!r}.")
    return [[teacher_path for teacher_path, _ in pair.layer_pairs] for pair in pairs]


def _single_output(value, what):
    if not _is_array_like(value) or isinstance(value, (dict, list, tuple)):
        raise ValueError(f"{what} must be one tensor to be cached; got {type(value).__name__}.")
    return value


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
        self._metadata = metadata
        self._schema = self._store.schema
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
        skipped (the teacher does not run on them) after checking that their fingerprints equal
        the stored ones; a difference means that the data changed since, and is an error. A
        directory holding the complete cache of the same teacher and data is verified the same
        way and returned as it is.
        """
        teachers = _check_teachers(teacher)
        dtype = _check_dtype(dtype)
        if wait_timeout is not None and part is None:
            raise ValueError(
                f"wait_timeout={wait_timeout!r} is how long the processes of a distributed build wait for each "
                "other, but part=None builds in one process, which waits for nothing. Pass part=(index, count) "
                "for a distributed build, or drop wait_timeout."
            )
        if top_k is not None:
            check_top_k(top_k, None)
        pair_paths = _check_pairs(pairs)
        if len(teachers) > 1:
            _check_multi_teacher_options(len(teachers), top_k, pair_paths)
        teacher = teachers[0]
        layers = [[layer_paths.resolve(teacher, path, "teacher") for path in paths] for paths in pair_paths]
        for layer in itertools.chain.from_iterable(layers):
            install_tap(layer)

        batches = _batches(data, batch_size)
        first = next(batches, None)
        if first is None:
            raise ValueError("data is empty: there is nothing to run the teacher on.")
        x0, y0, sw0 = first
        metadata = {
            "kind": KIND,
            "teacher": _fingerprints(teachers),
            "dtype": dtype,
            "pair_paths": pair_paths,
            "inputs": _input_spec(student_view(x0)),
            "has_labels": y0 is not None,
            "has_sample_weight": sw0 is not None,
        }
        if len(teachers) > 1:
            metadata["num_teachers"] = len(teachers)
        if top_k is not None:
            # Checked before anything is written: a bad top_k leaves no directory behind.
            vocabulary_size = _vocabulary_size(teacher, teacher_view(x0))
            check_top_k(top_k, vocabulary_size)
            metadata.update(top_k=top_k, vocabulary_size=vocabulary_size)
        whole_directory = directory
        if part is not None:
            index, count = _check_part(part)
            directory = os.path.join(whole_directory, part_name(index, count))
        store_metadata = metadata if part is None else {**metadata, "part": [index, count]}
        store = ShardStore.create(directory, store_metadata, examples_per_shard=examples_per_shard)
        forward = _TeacherForward(teachers, pair_paths, layers, top_k)
        skip = store.stored_examples
        progbar = keras.utils.Progbar(None, unit_name="example") if verbose else None
        position = 0
        for x, y, sample_weight in itertools.chain([first], batches):
            n = batch_size_of(x)
            if (y is not None, sample_weight is not None) != (metadata["has_labels"], metadata["has_sample_weight"]):
                raise ValueError(
                    f"The batch at example {position} has {'labels' if y is not None else 'no labels'} and "
                    f"{'sample weights' if sample_weight is not None else 'no sample weights'}, unlike the first "
                    "batch. Every batch must have the same structure."
                )
            fingerprints = example_fingerprints(x)
            done = min(max(skip - position, 0), n)
            if done:
                _check_resumed(store, position, fingerprints[:done], directory)
            if done < n:
                if done:  # the first `done` examples of this batch were stored before the interruption
                    x, y, sample_weight = (
                        None if part is None else _slice(part, done) for part in (x, y, sample_weight)
                    )
                logits, features = forward.predict_on_batch(teacher_view(x))
                arrays = {key: np.asarray(leaf) for key, leaf in _leaves(metadata["inputs"], student_view(x))}
                if y is not None:
                    arrays["y"] = np.asarray(y)
                if sample_weight is not None:
                    arrays["sample_weight"] = np.asarray(sample_weight)
                first = position + done
                if top_k is None:
                    arrays[LOGITS] = _finite(logits, dtype, "The teacher's logits", first)
                else:
                    values, indices, tail = logits
                    arrays[TOP_K_VALUES] = _finite(values, dtype, "The teacher's top-k logits", first)
                    arrays[TOP_K_INDICES] = np.asarray(indices).astype("int32")
                    arrays[TOP_K_TAIL] = _finite(tail, "float32", "The teacher's tail log-mass", first)
                for i, pair_features in enumerate(features):
                    for j, value in enumerate(pair_features):
                        what = f"The outputs of the teacher layer {pair_paths[i][j]!r}"
                        arrays[feature_key(i, j)] = _finite(value, dtype, what, first)
                arrays[FINGERPRINT] = fingerprints[done:]
                store.append(arrays)
            position += n
            if progbar is not None:
                progbar.update(position)
        if position < skip:
            raise ValueError(
                f"The interrupted build in {directory} stored {skip} examples, but the data has only {position}: "
                "the data changed since. Use a fresh directory, or delete this one to rebuild."
            )
        store.finish()
        if part is None:
            return cls(directory)
        _gather_parts(whole_directory, metadata, index, count, 3600.0 if wait_timeout is None else wait_timeout)
        return cls(whole_directory)

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

    def _shuffled_order(self, rng):
        """Every example once: fully shuffled, or shuffled within random windows of `cache_shards` shards."""
        # The shard spans of the store (same package): example `i` of shard `k` is `starts[k] + i`.
        starts, ends = self._store._starts, self._store._ends
        window = max(int(self._cache_shards), 1)
        if len(starts) <= window:
            return rng.permutation(len(self))
        shards = rng.permutation(len(starts))
        groups = [shards[i : i + window] for i in range(0, len(shards), window)]
        return np.concatenate(
            [rng.permutation(np.concatenate([np.arange(starts[k], ends[k]) for k in group])) for group in groups]
        )

    def _teacher_side(self, arrays, cast=_numpy_cast):
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

    def _pack(self, student_inputs, arrays, cast=_numpy_cast):
        x = {STUDENT_KEY: student_inputs, **self._teacher_side(arrays, cast)}
        if not self.has_labels:
            return x
        if self.has_sample_weight:
            return x, arrays["y"], arrays["sample_weight"]
        return x, arrays["y"]

    def _rows(self, indices, skip=()):
        """`{key: rows at indices}` (but the keys in `skip`).

        When every shard fits in `cache_shards`, the whole cache is read once into one array per
        key, and a batch is one fancy index per key instead of a gather from each shard it touches.
        """
        resident = self._resident()
        if resident is None:
            return self._store.get(indices)
        return {key: array[indices] for key, array in resident.items() if key not in skip}

    def _resident(self):
        """Every stored array, whole, when all shards fit in `cache_shards` (read on first use); else None."""
        if self._resident_arrays is None and self._store.num_shards <= self._cache_shards:
            self._resident_arrays = self._store.read_all()
        return self._resident_arrays

    def batch(self, indices):
        """The batch of the examples at `indices`, as `dataset` yields it."""
        arrays = self._rows(np.asarray(indices), skip=(FINGERPRINT,))
        return self._pack(_restore(self._metadata["inputs"], arrays), arrays)

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
        if is_in_memory(data):
            if batch_size is None:
                batch_size = 32
            return _AttachedArrays(self, data, batch_size, shuffle)
        if shuffle:
            raise ValueError(
                "attach can only shuffle in-memory arrays; shuffling a dataset would reorder its inputs away from "
                "the cached outputs. Pass arrays, or shuffle=False."
            )
        return self._attach_batches(data, batch_size)

    def _attach_batches(self, data, batch_size):
        position = 0
        for x, y, sample_weight in _batches(data, batch_size):
            n = batch_size_of(x)
            indices = np.arange(position, position + n)
            if position + n > len(self):
                raise ValueError(
                    f"The inputs differ from those the cache in {self.directory} was built on: they hold more than "
                    f"its {len(self)} examples. Feed the inputs of the build, unchanged and in order, or use "
                    "cache.dataset(...)."
                )
            yield self._attached_batch(x, y, sample_weight, indices)
            position += n

    def _attached_batch(self, x, y, sample_weight, indices):
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
        has_labels = "y" in arrays
        x = {STUDENT_KEY: student_view(x), **self._teacher_side(arrays)}
        if not has_labels:
            return x
        if "sample_weight" in arrays:
            return x, arrays["y"], arrays["sample_weight"]
        return x, arrays["y"]

    # ------------------------------------------------------------------------- serialization

    def get_config(self):
        """`{"directory": absolute path}`: a `Distiller` built on the cache saves this, not the outputs."""
        return {"directory": os.path.abspath(self.directory)}

    @classmethod
    def from_config(cls, config):
        """Opens the cache at `config["directory"]` again."""
        return cls(config["directory"])


class _TeacherForward(keras.Model):
    """The teacher's logits and its paired layers' outputs, run through Keras's compiled predict step.

    `predict_on_batch` jit-compiles it on JAX, traces it with `tf.function` on TensorFlow and runs it
    without autograd on PyTorch, as `teacher.predict` would. Several teachers (no pairs, no top-k)
    each run once and their logits are stacked on axis 1: `(batch, teachers, ..., classes)`.
    """

    def __init__(self, teachers, pair_paths, layers, top_k=None):
        super().__init__(name=f"{teachers[0].name}_cache_forward")
        self.teachers = list(teachers)
        self.top_k = top_k
        # A plain function, so that Keras does not track the teacher's inner layers a second time.
        self._read_features = lambda captured: [
            [captured_output(captured, layer, path, "teacher") for path, layer in zip(paths, pair_layers)]
            for paths, pair_layers in zip(pair_paths, layers)
        ]
        self.built = True

    def call(self, x, training=False):
        teachers = self.teachers
        if len(teachers) > 1:
            outputs = [
                _single_output(t(x, training=False), f"The teacher {t.name!r}'s output") for t in teachers
            ]
            checks.check_teacher_output_shapes(teachers, [tuple(value.shape) for value in outputs])
            return keras.ops.stack([keras.ops.cast(value, "float32") for value in outputs], axis=1), []
        with capture() as captured:
            logits = teachers[0](x, training=False)
        logits = _single_output(logits, f"The teacher {teachers[0].name!r}'s output")
        if self.top_k is not None:
            # On the teacher's device: only K values per position leave it.
            logits = top_k_logits(logits, self.top_k)
        return logits, self._read_features(captured)


def _fingerprints(teachers):
    """The metadata's `teacher`: one fingerprint, or a list of them for several teachers."""
    if len(teachers) == 1:
        return teacher_fingerprint(teachers[0])
    return [teacher_fingerprint(t) for t in teachers]


def _check_teachers(teacher):
    """The teacher models to cache: one model, or a non-empty list of built models of one output shape."""
    if isinstance(teacher, (list, tuple)):
        teachers = checks.check_teacher_list(teacher)
        checks.check_teacher_output_shapes(teachers, [checks._known_shape(t) for t in teachers])
        return teachers
    checks.check_model("teacher", teacher)
    checks.check_teacher_built(teacher)
    return [teacher]


def _check_multi_teacher_options(count, top_k, pair_paths):
    if top_k is not None:
        raise ValueError(
            f"top_k={top_k} keeps one teacher's largest logits, but {count} teachers were given: their mixture "
            "needs every class of every teacher. Cache several teachers with top_k=None."
        )
    if pair_paths:
        raise ValueError(
            f"pairs store one teacher's layer outputs, but {count} teachers were given, and a multi-teacher "
            "Distiller takes no layer pairs. Cache several teachers without pairs (and the teacher whose features "
            "you distil in a cache of its own)."
        )


def _vocabulary_size(teacher, x):
    """The size of the last axis of the teacher's output, from one example."""
    logits = _single_output(teacher(_slice(x, 0, 1), training=False), f"The teacher {teacher.name!r}'s output")
    return int(logits.shape[-1])


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


def _check_part(part):
    try:
        index, count = (int(v) if not isinstance(v, bool) and int(v) == v else None for v in part)
    except (TypeError, ValueError):
        index = count = None
    if index is None or count is None or not 0 <= index < count:
        raise ValueError(
            f"part must be (index, count) with 0 <= index < count, e.g. (jax.process_index(), jax.process_count()); "
            f"got {part!r}."
        )
    return index, count


def _manifest_or_none(directory):
    try:
        return read_manifest(directory)
    except FileNotFoundError:
        return None


def _gather_parts(directory, metadata, index, count, wait_timeout):
    """Process 0 writes the whole cache's manifest once every part is complete; the others wait for it."""
    names = [part_name(i, count) for i in range(count)]
    deadline = time.monotonic() + float(wait_timeout)

    def complete_parts():
        manifests = {name: _manifest_or_none(os.path.join(directory, name)) for name in names}
        return {name: m for name, m in manifests.items() if m is not None and m["complete"]}

    def combined_is_current():
        parts, combined = complete_parts(), _manifest_or_none(directory)
        if len(parts) < count or combined is None:
            return False
        expected = [f"{name}/{entry['file']}:{entry['sha256']}" for name in names for entry in parts[name]["shards"]]
        return [f"{entry['file']}:{entry['sha256']}" for entry in combined["shards"]] == expected

    ready = (lambda: len(complete_parts()) == count) if index == 0 else combined_is_current
    while not ready():
        if time.monotonic() > deadline:
            missing = sorted(set(names) - set(complete_parts()))
            waiting_for = f"the parts {missing}" if missing else "process 0 to write the manifest"
            raise TimeoutError(
                f"Part {index} of the cache in {directory} waited {wait_timeout} s for {waiting_for}. Every process "
                f"must call TeacherCache.build(..., part=(i, {count})) for its i, with the same directory on a "
                "filesystem all of them share."
            )
        time.sleep(0.2)
    if index == 0:
        ShardStore.combine(directory, names, metadata)


def _check_resumed(store, position, fingerprints, directory):
    stored = store.get(np.arange(position, position + len(fingerprints)))[FINGERPRINT]
    mismatch = np.flatnonzero(np.any(stored != fingerprints, axis=1))
    if mismatch.size:
        raise ValueError(
            f"The data changed since the interrupted build in {directory}: example {position + int(mismatch[0])} "
            "does not match the one stored there (different, reordered or augmented inputs). Resume with the same "
            "data in the same order (no shuffling, no augmentation), or use a fresh directory."
        )


class CacheDataset(keras.utils.PyDataset):
    """What `TeacherCache.dataset` returns: batches of the cache, with random access."""

    def __init__(self, cache, batch_size, shuffle, seed):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        self.cache = cache
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(cache))
        self.on_epoch_end()

    def _indices(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} is out of range: this dataset has {len(self)} batches.")
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]

    def __len__(self):
        return -(-len(self.cache) // self.batch_size)

    def __getitem__(self, index):
        return self.cache.batch(self._indices(index))

    def on_epoch_end(self):
        if self.shuffle:
            self._order = self.cache._shuffled_order(self._rng)

    def as_tf_dataset(self, shuffle_batches=False):
        """The same batches as a `tf.data.Dataset` over the cache held in memory; None when it is not.

        Every epoch visits every example once, in a new order when `shuffle` (a permutation of
        the whole cache, as `dataset` shuffles a cache that fits in memory), and
        `shuffle_batches` also reorders the batches each epoch (what `fit(shuffle=True)` does
        to a `PyDataset`). TensorFlow's `fit` reads it without a Python call per batch.
        """
        resident = self.cache._resident()
        if resident is None:
            return None
        import tensorflow as tf

        cache = self.cache
        arrays = {key: array for key, array in resident.items() if key != FINGERPRINT}
        # Shuffle and batch example indices, then gather each batch from the arrays, as Keras's own
        # array adapter does: shuffling whole examples would copy every one through a shuffle buffer.
        indices = tf.data.Dataset.range(len(cache))
        if self.shuffle:
            indices = indices.shuffle(len(cache), seed=self.seed, reshuffle_each_iteration=True)
        indices = indices.batch(self.batch_size)
        if shuffle_batches:
            indices = indices.shuffle(len(self), seed=self.seed, reshuffle_each_iteration=True)
        dataset = tf.data.Dataset.zip((indices, tf.data.Dataset.from_tensors(arrays).repeat()))

        def pack(index, data):
            batch = {key: tf.gather(array, index) for key, array in data.items()}
            return cache._pack(_restore(cache._metadata["inputs"], batch), batch, tf.cast)

        return dataset.map(pack, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class _AttachedArrays(CacheDataset):
    def __init__(self, cache, data, batch_size, shuffle):
        x, y, sample_weight = _unpack(data)
        n = batch_size_of(x)
        if n != len(cache):
            raise ValueError(
                f"The inputs differ from those the cache in {cache.directory} was built on: they hold {n} examples, "
                f"the cache {len(cache)}. Feed the inputs of the build, unchanged and in order, or use "
                "cache.dataset(...)."
            )
        self._parts = _numpy_tree_parts((x, y, sample_weight))
        super().__init__(cache, batch_size, shuffle, seed=None)

    def __getitem__(self, index):
        indices = self._indices(index)
        x, y, sample_weight = (None if part is None else _take(part, indices) for part in self._parts)
        return self.cache._attached_batch(x, y, sample_weight, indices)
