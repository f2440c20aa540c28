"""Building a teacher cache: the teacher runs once over the data and its outputs are written to shards.

`build_cache` is the body of `TeacherCache.build` (its docstring documents the arguments), in steps:

1. `_check_arguments`: the teacher(s), `dtype`, `top_k`, `pairs` and the distributed options,
   before any data is read;
2. `_metadata`: what identifies the cache (teacher fingerprints, input nesting, labels), from the
   first batch; a bad `top_k` is refused here, before anything is written;
3. `_open_store`: the `ShardStore` of the whole cache or of this process's part, resumed when a
   build was interrupted;
4. `_write_batches`: per batch, the examples a resumed build already stored are checked
   (`_check_resumed`: inputs, labels and sample weights) and skipped, the teacher is dispatched
   (`_TeacherForward` through the backend's `BatchPredictor`) on the rest; a `_Writer` thread
   fetches its outputs, lays them out as stored (`_batch_arrays`), fingerprints them and writes the
   shards while the teacher runs on the next batches;
5. for a distributed build, `_gather_parts`: process 0 writes the manifest over every part.

Two builds never write one directory at once: the store locks it (`shards.DirectoryLock`), and the
processes of a distributed build share a lock on the top directory, after checking that it holds
no other cache (`_lock_distributed_target`).

`numpy_batches` reads the user's data as `(x, y, sample_weight)` NumPy batches; `TeacherCache.attach`
reads its inputs through it too, so that their fingerprints are computed as the build computed them.
"""

import functools
import itertools
import json
import os
import threading
import time

import keras
import numpy as np
from keras import ops

from keras_kd import validation as checks
from keras_kd.cache.fingerprints import example_fingerprints, teacher_fingerprint, to_numpy
from keras_kd.cache.schema import (
    DTYPES,
    FINGERPRINT,
    KIND,
    LOGITS,
    TOP_K_INDICES,
    TOP_K_TAIL,
    TOP_K_VALUES,
    feature_key,
    input_spec,
    leaves,
)
from keras_kd.cache.shards import DirectoryLock, is_temp_file, part_name, read_manifest, unwritable_error
from keras_kd.cache.store import ShardStore
from keras_kd.data.arrays import batch_count, batch_size_of, dataset_batches, is_in_memory, rows, unpack_batch
from keras_kd.data.batch_keys import student_view, teacher_view
from keras_kd.features import layer_paths
from keras_kd.features.capture import capture, captured_output
from keras_kd.features.pairs import LayerPair
from keras_kd.heads import SplitModel
from keras_kd.losses.top_k import check_top_k, top_k_logits
from keras_kd.teachers import stacked_logits
from keras_kd.token_logits import check_chunk_size
from keras_kd.trainers import BatchPredictor

# ----------------------------------------------------------------------------- the build, step by step


def build_cache(
    teacher,
    data,
    directory,
    *,
    top_k,
    pairs,
    dtype,
    batch_size,
    examples_per_shard,
    verbose,
    part,
    wait_timeout,
    chunk_size="auto",
):
    """Runs `TeacherCache.build` (its docstring documents the arguments, and holds their defaults).

    Returns the directory of the complete cache.
    """
    teachers, dtype, pair_paths, layers = _check_arguments(teacher, dtype, top_k, pairs, part, wait_timeout)
    chunk_size = _check_chunk_size(chunk_size, top_k)
    batches = numpy_batches(data, batch_size)
    first = next(batches, None)
    if first is None:
        raise ValueError("data is empty: there is nothing to run the teacher on.")
    metadata = _metadata(teachers, dtype, pair_paths, top_k, first)
    part = None if part is None else _check_part(part)
    progress = _progress(data, batch_size) if verbose else None
    # A distributed build shares the top directory's lock with its other parts, after checking that it
    # holds no other cache: a single-process build cannot start there meanwhile, nor these parts beside one.
    shared_lock = None if part is None else _lock_distributed_target(directory, metadata, part[1])
    try:
        store = _open_store(directory, metadata, part, examples_per_shard)
        try:
            forward = _TeacherForward(teachers, pair_paths, layers, top_k, chunk_size)
            _write_batches(store, forward, metadata, itertools.chain([first], batches), progress)
            store.finish()
        finally:
            store.close()  # releases the directory's lock, also when the build failed: a new one resumes
        if part is not None:
            _gather_parts(directory, metadata, *part, 3600.0 if wait_timeout is None else wait_timeout)
    finally:
        if shared_lock is not None:
            shared_lock.release()
    return directory


def _check_arguments(teacher, dtype, top_k, pairs, part, wait_timeout):
    """`(teachers, dtype name, pair paths, their resolved teacher layers)`; a bad argument raises here."""
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
    layers = [[layer_paths.resolve(teachers[0], path, "teacher") for path in paths] for paths in pair_paths]
    return teachers, dtype, pair_paths, layers


def _check_chunk_size(chunk_size, top_k):
    chunk_size = check_chunk_size(chunk_size)
    if top_k is None and chunk_size not in (None, "auto"):
        raise ValueError(
            f"chunk_size={chunk_size} computes a top-k cache's logits a chunk of positions at a time, but top_k=None "
            "stores the dense logits, which are whole anyway. Pass top_k=K, or drop chunk_size."
        )
    return chunk_size


def _metadata(teachers, dtype, pair_paths, top_k, first):
    """The manifest's metadata (see `keras_kd.cache.teacher_cache`), from the first batch `(x, y, sample_weight)`."""
    x0, y0, sw0 = first
    _check_numbers(
        y0,
        "labels y",
        "Map them to class ids first (keras.layers.StringLookup, or "
        "np.unique(y, return_inverse=True)[1]) and build again.",
    )
    _check_numbers(sw0, "sample weights", "Cast them to float32 first and build again.")
    metadata = {
        "kind": KIND,
        "teacher": _fingerprints(teachers),
        "dtype": dtype,
        "pair_paths": pair_paths,
        "inputs": input_spec(student_view(x0)),
        "has_labels": y0 is not None,
        "has_sample_weight": sw0 is not None,
    }
    if len(teachers) > 1:
        metadata["num_teachers"] = len(teachers)
    if top_k is not None:
        # Checked before anything is written: a bad top_k leaves no directory behind.
        vocabulary_size = _vocabulary_size(teachers[0], teacher_view(x0))
        check_top_k(top_k, vocabulary_size)
        metadata.update(top_k=top_k, vocabulary_size=vocabulary_size)
    return metadata


def _open_store(directory, metadata, part, examples_per_shard):
    """The store this call writes: `directory`'s, or for `part=(index, count)` its part's subdirectory."""
    if part is None:
        return ShardStore.create(directory, metadata, examples_per_shard=examples_per_shard)
    index, count = part
    part_metadata = {**metadata, "part": [index, count]}
    return ShardStore.create(
        os.path.join(directory, part_name(index, count)), part_metadata, examples_per_shard=examples_per_shard
    )


def _progress(data, batch_size):
    """`(keras.utils.Progbar, unit)`: its target is the number of examples of in-memory data, the number of
    batches of a dataset that knows it (`len`, a `tf.data` cardinality), unknown otherwise."""
    if is_in_memory(data):
        x = unpack_batch(data)[0]
        return keras.utils.Progbar(batch_size_of(x), unit_name="example"), "example"
    return keras.utils.Progbar(batch_count(data), unit_name="batch"), "batch"


def _write_batches(store, forward, metadata, batches, progress):
    """Appends every batch's examples to `store`, but those already stored (checked, skipped).

    The teacher runs here; a `_Writer` thread fingerprints each batch and appends it to the store
    (writing the shards), in order, while the teacher runs on the next batches.
    """
    skip = store.stored_examples
    progbar, unit = progress if progress is not None else (None, None)
    position = 0
    with BatchPredictor(forward.model) as predictor, _Writer() as writer:
        for count, (x, y, sample_weight) in enumerate(batches, 1):
            n = batch_size_of(x)
            _check_same_structure(metadata, y, sample_weight, position)
            done = min(max(skip - position, 0), n)
            if done:
                _check_resumed(store, position, *(_first_rows(part, done) for part in (x, y, sample_weight)))
            if done < n:
                if store.complete:
                    raise _more_data_than_stored(store, position + done)
                if done:  # the first `done` examples of this batch were stored before the interruption
                    x, y, sample_weight = (None if p is None else rows(p, done) for p in (x, y, sample_weight))
                arrays = _dispatch_batch(predictor, forward, metadata, (x, y, sample_weight), position + done)
                size = 2 * sum(np.asarray(leaf).nbytes for leaf in keras.tree.flatten(x))  # inputs, and stored
                writer.submit(functools.partial(_append, store, arrays, x), size)
            position += n
            if progbar is not None:
                progbar.update(position if unit == "example" else count)
    if position < skip:
        if store.complete:
            raise ValueError(
                f"{store.directory} holds a complete teacher cache of {skip} examples of this teacher, but the data "
                f"has only {position}: it is other data. Give a fresh directory for it, or delete {store.directory} "
                "to rebuild the cache."
            )
        raise ValueError(
            f"The interrupted build in {store.directory} stored {skip} examples, but the data has only {position}: "
            "the data changed since. Use a fresh directory, or delete this one to rebuild."
        )


def _append(store, arrays, x):
    """On the writer thread: the batch's arrays (`arrays()` fetches the teacher's outputs), its fingerprints,
    then its rows into the store (which writes full shards)."""
    arrays = arrays()
    arrays[FINGERPRINT] = example_fingerprints(x)
    store.append(arrays)


def _more_data_than_stored(store, position):
    return ValueError(
        f"{store.directory} holds a complete teacher cache of {store.stored_examples} examples of this teacher, but "
        f"the data goes on past them (example {position} and later): it is other data. Give a fresh directory for "
        f"it, or delete {store.directory} to rebuild the cache."
    )


class _Writer:
    """One thread that runs the jobs given to `submit` in order: the build's hashing and shard writes.

    The teacher's next batches run meanwhile (the `fsync` of a shard waits for the disk, NumPy and
    hashlib release the GIL on large arrays). At most `max_bytes` of batches wait (at least one);
    `submit` blocks beyond. An exception in a job is raised by the next `submit` or on leaving the
    `with` block, and the jobs after it are dropped. Leaving the block waits for the jobs given so
    far, also when the build raised: the shards of the examples processed so far are written, as a
    resumed build expects.
    """

    def __init__(self, max_bytes=256 << 20):
        self._max_bytes = max_bytes
        self._jobs = []
        self._pending_bytes = 0
        self._closing = False
        self._error = None
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="keras_kd-cache-writer", daemon=True)
        self._thread.start()

    def submit(self, job, size):
        with self._condition:
            while self._jobs and self._pending_bytes + size > self._max_bytes and self._error is None:
                self._condition.wait()
            self._raise_error()
            self._jobs.append((job, size))
            self._pending_bytes += size
            self._condition.notify_all()

    def _raise_error(self):
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self):
        while True:
            with self._condition:
                while not self._jobs and not self._closing:
                    self._condition.wait()
                if not self._jobs:
                    return
                job, size = self._jobs[0]
            try:
                if self._error is None:
                    job()
            except BaseException as error:  # raised in the building thread
                with self._condition:
                    self._error = error
            with self._condition:
                self._jobs.pop(0)
                self._pending_bytes -= size
                self._condition.notify_all()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._thread.join()
        if kind is None:
            self._raise_error()
        return False


def _dispatch_batch(predictor, forward, metadata, batch, first):
    """Starts the teacher on one batch; returns `arrays()`, the batch as stored (no fingerprint), for the writer.

    `arrays()` fetches the teacher's outputs (waiting for them), checks them and returns `{key: array}`:
    inputs, labels, the teacher's outputs. `first` is the position of the batch's first example, for
    the errors on non-finite inputs (raised here) and outputs (raised by `arrays()`).
    """
    x = batch[0]
    checks.check_finite_inputs(x, "TeacherCache.build's data", first)
    outputs = predictor.dispatch(teacher_view(x))
    return functools.partial(_batch_arrays, forward, metadata, batch, first, predictor.fetch, outputs)


def _batch_arrays(forward, metadata, batch, first, fetch, outputs):
    x, y, sample_weight = batch
    logits, features = forward.outputs(fetch(outputs))
    arrays = {key: np.asarray(leaf) for key, leaf in leaves(metadata["inputs"], student_view(x))}
    if y is not None:
        arrays["y"] = np.asarray(y)
    if sample_weight is not None:
        arrays["sample_weight"] = np.asarray(sample_weight)
    dtype = metadata["dtype"]
    arrays.update(_logit_arrays(logits, dtype, metadata.get("top_k"), first))
    for i, pair_features in enumerate(features):
        for j, value in enumerate(pair_features):
            what = f"The outputs of the teacher layer {metadata['pair_paths'][i][j]!r}"
            arrays[feature_key(i, j)] = _finite(value, dtype, what, first)
    return arrays


def _logit_arrays(logits, dtype, top_k, first):
    """The stored keys of the teacher's logits: dense, or top-k values, indices and tail log-mass."""
    if top_k is None:
        return {LOGITS: _finite(logits, dtype, "The teacher's logits", first)}
    values, indices, tail = logits
    return {
        TOP_K_VALUES: _finite(values, dtype, "The teacher's top-k logits", first),
        TOP_K_INDICES: np.asarray(indices).astype("int32"),
        TOP_K_TAIL: _finite(tail, "float32", "The teacher's tail log-mass", first),
    }


# ----------------------------------------------------------------------------- the teacher's forward pass


class _TeacherForward(keras.Model):
    """The teacher's logits and its paired layers' outputs, run through Keras's compiled predict step.

    `predict_on_batch` jit-compiles it on JAX, traces it with `tf.function` on TensorFlow and runs it
    without autograd on PyTorch, as `teacher.predict` would. Several teachers (no pairs, no top-k)
    each run once and their logits are stacked on axis 1: `(batch, teachers, ..., classes)`.
    """

    def __init__(self, teachers, pair_paths, layers, top_k=None, chunk_size=None):
        super().__init__(name=f"{teachers[0].name}_cache_forward")
        self.teachers = list(teachers)
        self.top_k = top_k
        self.chunk_size = chunk_size
        # Top-k of a language model: its body runs once, its head a chunk of positions at a time (see `_top_k`).
        self._split = _language_model_split(teachers[0]) if top_k is not None and chunk_size is not None else None
        run = teachers[0] if self._split is None else self._split.body
        # A plain function, so that Keras does not track the teacher's inner layers a second time.
        self._run_teacher = lambda x: _forward_with_features(run, pair_paths, layers, x)
        # One teacher's logits alone are what its own `predict_on_batch` computes: its compiled predict
        # step (shared with the user's `teacher.predict`) serves every build, instead of a compilation
        # per build on JAX.
        self._teacher_predicts = len(teachers) == 1 and not pair_paths and top_k is None
        self.built = True

    @property
    def model(self):
        """The model whose compiled predict step runs: the teacher itself for its logits alone, else this one."""
        return self.teachers[0] if self._teacher_predicts else self

    def outputs(self, fetched):
        """`(logits, features)` from what `self.model` returned: features per pair, logits per `top_k`, stacked."""
        if self._teacher_predicts:
            return _checked_teacher_output(fetched, self.teachers[0]), []
        return fetched

    def call(self, x, training=False):
        teachers = self.teachers
        if len(teachers) > 1:
            return stacked_logits(teachers, x, _checked_teacher_output), []
        outputs, features = self._run_teacher(x)
        outputs = _checked_teacher_output(outputs, teachers[0])
        if self.top_k is not None:
            # On the teacher's device: only K values per position leave it.
            outputs = self._top_k(outputs)
        return outputs, features

    def _top_k(self, outputs):
        """`top_k_logits` of the teacher's logits; from its final hidden states (`outputs`), chunk by chunk, if split.

        A chunk's logits are reduced to their top k before the next chunk's are computed, so that the
        teacher's full `(batch, positions, vocabulary)` logits never exist at once.
        """
        split = self._split
        if split is None:
            return top_k_logits(outputs, self.top_k)
        chunk = split.chunk_positions(outputs, self.chunk_size)
        if chunk is None:
            return top_k_logits(split.head(outputs, training=False), self.top_k)
        positions = outputs.shape[1]
        parts = [
            top_k_logits(split.head(outputs[:, start : start + chunk], training=False), self.top_k)
            for start in range(0, positions, chunk)
        ]
        return tuple(ops.concatenate([part[i] for part in parts], axis=1) for i in range(3))


def _language_model_split(teacher):
    """`teacher` split at its output head when its logits are `(batch, positions, vocabulary)`; else None."""
    try:
        return SplitModel(teacher, "teacher")
    except ValueError:
        return None


def _forward_with_features(teacher, pair_paths, layers, x):
    """`teacher(x)` and, per pair, the outputs of its teacher `layers` in that same pass.

    The one place where the build captures inner layers (`keras_kd.features.capture`); the layers
    carry the capturing wrapper only during this pass.
    """
    with capture(itertools.chain.from_iterable(layers)) as captured:
        logits = teacher(x, training=False)
    features = [
        [captured_output(captured, layer, path, "teacher") for path, layer in zip(paths, pair_layers)]
        for paths, pair_layers in zip(pair_paths, layers)
    ]
    return logits, features


def _checked_teacher_output(value, teacher):
    return _single_output(value, f"The teacher {teacher.name!r}'s output")


def _single_output(value, what):
    is_array_like = isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype"))
    if not is_array_like or isinstance(value, (dict, list, tuple)):
        raise ValueError(f"{what} must be one tensor to be cached; got {type(value).__name__}.")
    return value


def _vocabulary_size(teacher, x):
    """The size of the last axis of the teacher's output, from one example."""
    logits = _single_output(teacher(rows(x, 0, 1), training=False), f"The teacher {teacher.name!r}'s output")
    return int(logits.shape[-1])


# ----------------------------------------------------------------------------- checks


def _check_teachers(teacher):
    """The teacher models to cache: one model, or a non-empty list of built models of one output shape."""
    if isinstance(teacher, (list, tuple)):
        teachers = checks.check_teacher_list(teacher)
        checks.check_teacher_output_shapes(teachers, [checks.known_output_shape(t) for t in teachers])
        return teachers
    checks.check_model("teacher", teacher)
    checks.check_teacher_built(teacher)
    return [teacher]


def _fingerprints(teachers):
    """The metadata's `teacher`: one fingerprint, or a list of them for several teachers."""
    if len(teachers) == 1:
        return teacher_fingerprint(teachers[0])
    return [teacher_fingerprint(t) for t in teachers]


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


def _check_same_structure(metadata, y, sample_weight, position):
    if (y is not None, sample_weight is not None) != (metadata["has_labels"], metadata["has_sample_weight"]):
        raise ValueError(
            f"The batch at example {position} has {'labels' if y is not None else 'no labels'} and "
            f"{'sample weights' if sample_weight is not None else 'no sample weights'}, unlike the first "
            "batch. Every batch must have the same structure."
        )


def _check_resumed(store, position, x, y, sample_weight):
    """Raises when the examples from `position` on (`x`, `y`, `sample_weight`) are not the ones stored there."""
    stored = store.get(np.arange(position, position + batch_size_of(x)))
    mismatch = np.flatnonzero(np.any(stored[FINGERPRINT] != example_fingerprints(x), axis=1))
    if mismatch.size:
        raise ValueError(
            f"The data changed since the interrupted build in {store.directory}: example "
            f"{position + int(mismatch[0])} does not match the one stored there (different, reordered or augmented "
            "inputs). Resume with the same data in the same order (no shuffling, no augmentation), or use a fresh "
            "directory."
        )
    for key, given, what in (("y", y, "labels y"), ("sample_weight", sample_weight, "sample weights")):
        if given is None:
            continue
        row = _first_differing_row(stored[key], np.asarray(given))
        if row is not None:
            outcome = "return the stored ones" if store.complete else "mix stored and new ones"
            raise ValueError(
                f"The {what} of example {position + row} differ from those the cache in {store.directory} holds "
                f"({_short(np.asarray(given)[row])} given, {_short(stored[key][row])} stored); its inputs are the "
                f"same, so the build would {outcome}. Give a fresh directory for these {what}, or delete "
                f"{store.directory} to rebuild the cache."
            )


def _first_differing_row(stored, given):
    """The first row where `given` differs from `stored` (NaN equal to NaN), or None; any row if the shapes differ."""
    if stored.shape != given.shape:
        return 0
    same = stored == given
    if stored.dtype.kind == "f" and given.dtype.kind == "f":
        same |= np.isnan(stored) & np.isnan(given)
    differing = np.flatnonzero(~same.reshape(len(same), -1).all(axis=1))
    return int(differing[0]) if differing.size else None


def _short(value, limit=60):
    text = np.array2string(np.asarray(value), threshold=8) if np.ndim(value) else repr(np.asarray(value).item())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_numbers(value, what, fix):
    """Labels and sample weights are stored for the student's loss: numbers (or bools), not text or objects."""
    if value is None:
        return
    for leaf in keras.tree.flatten(value):
        dtype = np.asarray(leaf).dtype
        if dtype.kind not in "biuf":
            kind = "text" if dtype.kind in "SUO" else "not numbers"
            raise ValueError(
                f"The {what} have dtype {dtype} ({kind}), but a teacher cache stores them for the student's loss, "
                f"which needs numbers. {fix}"
            )


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


# ----------------------------------------------------------------------------- distributed builds


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


def _lock_distributed_target(directory, metadata, count):
    """The shared lock of a distributed build's `directory`, taken once it is known to hold no other cache."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise unwritable_error(directory, error) from None
    lock = DirectoryLock(directory, shared=True)
    try:
        _check_distributed_target(directory, metadata, count)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_distributed_target(directory, metadata, count):
    """Refuses, before anything is written, a directory whose gathered manifest `_gather_parts` would overwrite."""
    manifest = _manifest_or_none(directory)
    parts = [part_name(i, count) for i in range(count)]
    if manifest is None:
        others = sorted(name for name in os.listdir(directory) if name not in parts and not is_temp_file(name))
        if others:
            raise ValueError(
                f"{directory} is not empty and has no manifest.json, so it is not a teacher cache: it holds "
                f"{others[:5]}{' ...' if len(others) > 5 else ''}. Give a new or empty directory."
            )
        return
    stored, given = manifest["metadata"], json.loads(json.dumps(metadata))
    state = "complete" if manifest["complete"] else "interrupted"
    if stored.get("teacher") != given["teacher"]:
        raise ValueError(
            f"{directory} holds the {state} teacher cache of another teacher (fingerprint {stored.get('teacher')}; "
            f"this build's teacher has {given['teacher']}). A distributed build there would overwrite its manifest "
            f"and orphan its shards, so nothing was written. Give a fresh directory, or delete {directory} to "
            "replace that cache."
        )
    differing = sorted(key for key in set(stored) | set(given) if stored.get(key) != given.get(key))
    if differing:
        raise ValueError(
            f"{directory} holds the {state} teacher cache of this teacher (fingerprint {given['teacher']}) built with "
            f"other settings or data (metadata keys {differing}). A distributed build there would overwrite its "
            f"manifest and orphan its shards, so nothing was written. Give a fresh directory, or delete {directory} "
            "to replace that cache."
        )
    if not all(entry["file"].split("/")[0] in parts for entry in manifest["shards"]):
        raise ValueError(
            f"{directory} holds the {state} teacher cache of this teacher and data, written by a single process or "
            f"by a distributed build of another part count; part=(index, {count}) would overwrite its manifest. "
            "Open it with TeacherCache(directory), or give a fresh directory."
        )


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


# ----------------------------------------------------------------------------- the user's data


def numpy_batches(data, batch_size):
    """Yields `(x, y, sample_weight)` of NumPy arrays (None where absent), in the data's order.

    In-memory data is cut into batches of `batch_size` (default 32); a dataset is already batched
    and takes no `batch_size`.
    """
    if is_in_memory(data):
        if batch_size is None:
            batch_size = 32
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        yield from (numpy_parts(b) for b in _array_batches(data, batch_size))
        return
    if batch_size is not None:
        raise ValueError(
            "batch_size is for in-memory arrays; a dataset is already batched (batch it with .batch(n) instead)."
        )
    accepted = "NumPy arrays (x, a dict of arrays, or a tuple (x, y[, sample_weight]))"
    for batch in dataset_batches(data, "data", accepted):
        yield numpy_parts(unpack_batch(batch))


def numpy_parts(parts):
    """`parts` (such as `(x, y, sample_weight)`) with every array converted to NumPy; None stays None."""
    return tuple(None if part is None else keras.tree.map_structure(to_numpy, part) for part in parts)


def _array_batches(data, batch_size):
    """Batches `(x, y, sample_weight)` of in-memory data, in order."""
    x, y, sample_weight = unpack_batch(data)
    total = batch_size_of(x)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        yield tuple(None if part is None else rows(part, start, stop) for part in (x, y, sample_weight))


def _first_rows(structure, stop):
    return None if structure is None else rows(structure, 0, stop)
