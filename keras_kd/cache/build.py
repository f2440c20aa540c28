"""Building a teacher cache: the teacher runs once over the data and its outputs are written to shards.

`build_cache` is the body of `TeacherCache.build` (its docstring documents the arguments), in steps:

1. `_check_arguments`: the teacher(s), `dtype`, `top_k`, `pairs` and the distributed options,
   before any data is read;
2. `_metadata`: what identifies the cache (teacher fingerprints, input nesting, labels), from the
   first batch; a bad `top_k` is refused here, before anything is written;
3. `_open_store`: the `ShardStore` of the whole cache or of this process's part, resumed when a
   build was interrupted;
4. `_write_batches`: per batch, the examples a resumed build already stored are checked
   (`_check_resumed`) and skipped, the teacher runs (`_TeacherForward`) on the rest, and
   `_batch_arrays` lays them out as stored;
5. for a distributed build, `_gather_parts`: process 0 writes the manifest over every part.

`numpy_batches` reads the user's data as `(x, y, sample_weight)` NumPy batches; `TeacherCache.attach`
reads its inputs through it too, so that their fingerprints are computed as the build computed them.
"""

import itertools
import os
import time

import keras
import numpy as np

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
from keras_kd.cache.shards import part_name, read_manifest
from keras_kd.cache.store import ShardStore
from keras_kd.data.arrays import batch_size_of, dataset_batches, is_in_memory, unpack_batch
from keras_kd.data.batch_keys import student_view, teacher_view
from keras_kd.features import layer_paths
from keras_kd.features.capture import capture, captured_output
from keras_kd.features.pairs import LayerPair
from keras_kd.losses.top_k import check_top_k, top_k_logits
from keras_kd.teachers import stacked_logits

# ----------------------------------------------------------------------------- the build, step by step


def build_cache(
    teacher, data, directory, *, top_k, pairs, dtype, batch_size, examples_per_shard, verbose, part, wait_timeout
):
    """Runs `TeacherCache.build` (its docstring documents the arguments, and holds their defaults).

    Returns the directory of the complete cache.
    """
    teachers, dtype, pair_paths, layers = _check_arguments(teacher, dtype, top_k, pairs, part, wait_timeout)
    batches = numpy_batches(data, batch_size)
    first = next(batches, None)
    if first is None:
        raise ValueError("data is empty: there is nothing to run the teacher on.")
    metadata = _metadata(teachers, dtype, pair_paths, top_k, first)
    part = None if part is None else _check_part(part)
    store = _open_store(directory, metadata, part, examples_per_shard)
    forward = _TeacherForward(teachers, pair_paths, layers, top_k)
    _write_batches(store, forward, metadata, itertools.chain([first], batches), verbose)
    store.finish()
    if part is not None:
        _gather_parts(directory, metadata, *part, 3600.0 if wait_timeout is None else wait_timeout)
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


def _metadata(teachers, dtype, pair_paths, top_k, first):
    """The manifest's metadata (see `keras_kd.cache.teacher_cache`), from the first batch `(x, y, sample_weight)`."""
    x0, y0, sw0 = first
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


def _write_batches(store, forward, metadata, batches, verbose):
    """Appends every batch's examples to `store`, but those a resumed build stored already (checked, skipped)."""
    skip = store.stored_examples
    progbar = keras.utils.Progbar(None, unit_name="example") if verbose else None
    position = 0
    for x, y, sample_weight in batches:
        n = batch_size_of(x)
        _check_same_structure(metadata, y, sample_weight, position)
        fingerprints = example_fingerprints(x)
        done = min(max(skip - position, 0), n)
        if done:
            _check_resumed(store, position, fingerprints[:done])
        if done < n:
            if done:  # the first `done` examples of this batch were stored before the interruption
                x, y, sample_weight = (None if part is None else _slice(part, done) for part in (x, y, sample_weight))
            arrays = _batch_arrays(forward, metadata, (x, y, sample_weight), position + done)
            arrays[FINGERPRINT] = fingerprints[done:]
            store.append(arrays)
        position += n
        if progbar is not None:
            progbar.update(position)
    if position < skip:
        raise ValueError(
            f"The interrupted build in {store.directory} stored {skip} examples, but the data has only {position}: "
            "the data changed since. Use a fresh directory, or delete this one to rebuild."
        )


def _batch_arrays(forward, metadata, batch, first):
    """`{key: array}` of one batch as stored (no fingerprint): inputs, labels, the teacher's outputs.

    `first` is the position of the batch's first example, for the error on non-finite outputs.
    """
    x, y, sample_weight = batch
    logits, features = forward.predict_on_batch(teacher_view(x))
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

    def __init__(self, teachers, pair_paths, layers, top_k=None):
        super().__init__(name=f"{teachers[0].name}_cache_forward")
        self.teachers = list(teachers)
        self.top_k = top_k
        # A plain function, so that Keras does not track the teacher's inner layers a second time.
        self._run_teacher = lambda x: _forward_with_features(teachers[0], pair_paths, layers, x)
        self.built = True

    def call(self, x, training=False):
        teachers = self.teachers
        if len(teachers) > 1:
            return stacked_logits(teachers, x, _checked_teacher_output), []
        logits, features = self._run_teacher(x)
        logits = _checked_teacher_output(logits, teachers[0])
        if self.top_k is not None:
            # On the teacher's device: only K values per position leave it.
            logits = top_k_logits(logits, self.top_k)
        return logits, features


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
    logits = _single_output(teacher(_slice(x, 0, 1), training=False), f"The teacher {teacher.name!r}'s output")
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


def _check_resumed(store, position, fingerprints):
    stored = store.get(np.arange(position, position + len(fingerprints)))[FINGERPRINT]
    mismatch = np.flatnonzero(np.any(stored != fingerprints, axis=1))
    if mismatch.size:
        raise ValueError(
            f"The data changed since the interrupted build in {store.directory}: example "
            f"{position + int(mismatch[0])} does not match the one stored there (different, reordered or augmented "
            "inputs). Resume with the same data in the same order (no shuffling, no augmentation), or use a fresh "
            "directory."
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
        yield tuple(None if part is None else _slice(part, start, stop) for part in (x, y, sample_weight))


def _slice(structure, start, stop=None):
    return keras.tree.map_structure(lambda a: a[start:stop], structure)
