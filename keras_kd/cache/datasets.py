"""The batches of a teacher cache for `fit`: `TeacherCache.dataset` and `TeacherCache.attach`.

`CacheDataset` (what `dataset` returns) is a `keras.utils.PyDataset` with random access over the
stored examples; on TensorFlow, `as_tf_dataset` serves a cache held in memory through `tf.data`
instead. `attached` (what `TeacherCache.attach` returns) pairs the user's own copy of the inputs
with the stored outputs: `_AttachedArrays` for in-memory arrays, a generator for a dataset. All of
them go through the cache's public reading methods only (`batch`, `pack_batch`, `attached_batch`, `resident_arrays`,
`shuffled_order`).
"""

import keras
import numpy as np

from keras_kd.cache.build import numpy_batches, numpy_parts
from keras_kd.cache.schema import FINGERPRINT
from keras_kd.data.arrays import batch_size_of, is_in_memory, unpack_batch


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
            self._order = self.cache.shuffled_order(self._rng)

    def as_tf_dataset(self, shuffle_batches=False):
        """The same batches as a `tf.data.Dataset` over the cache held in memory; None when it is not.

        Every epoch visits every example once, in a new order when `shuffle` (a permutation of
        the whole cache, as `dataset` shuffles a cache that fits in memory), and without `shuffle`
        `shuffle_batches` reorders the batches each epoch (what `fit(shuffle=True)` does to a
        `PyDataset`; a permutation of all examples needs no more). TensorFlow's `fit` reads it
        without a Python call per batch.
        """
        resident = self.cache.resident_arrays()
        if resident is None:
            return None
        import tensorflow as tf

        cache, examples, size = self.cache, len(self.cache), self.batch_size
        arrays = {key: array for key, array in resident.items() if key != FINGERPRINT}
        # Batches of example indices, each gathered from the arrays, as Keras's own array adapter does:
        # shuffling whole examples would copy every one through a shuffle buffer, and even a shuffle
        # buffer of indices costs a per-element step per example before each epoch's first batch.
        if self.shuffle:
            # One permutation per epoch, drawn in one op: `Dataset.random` gives each iteration (epoch)
            # of the dataset a new seed, a reproducible sequence of them for a given `seed`.
            seeds = tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True).take(1)
            indices = seeds.map(
                lambda seed: tf.random.experimental.stateless_shuffle(
                    tf.range(examples, dtype=tf.int64), seed=tf.stack([seed, tf.constant(0, tf.int64)])
                )
            ).flat_map(lambda order: _batches_of(tf, order, examples, size))
            indices = indices.apply(tf.data.experimental.assert_cardinality(len(self)))  # Keras counts the steps
        else:
            order = tf.data.Dataset.range(len(self))
            if shuffle_batches:
                order = order.shuffle(len(self), seed=self.seed, reshuffle_each_iteration=True)
            indices = order.map(lambda b: tf.range(b * size, tf.minimum((b + 1) * size, examples)))
        dataset = tf.data.Dataset.zip((indices, tf.data.Dataset.from_tensors(arrays).repeat()))

        def pack(index, data):
            return cache.pack_batch({key: tf.gather(array, index) for key, array in data.items()}, tf.cast)

        dataset = dataset.map(pack, num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        # As Keras's array adapter: no static rewrites of this small pipeline at each epoch's iterator.
        options.experimental_optimization.apply_default_optimizations = False
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _batches_of(tf, order, examples, size):
    """A dataset of the batches of `size` indices of `order` (a vector of `examples` indices), the last smaller."""
    full = examples // size
    batches = tf.data.Dataset.from_tensor_slices(tf.reshape(order[: full * size], [full, size]))
    if examples % size:
        batches = batches.concatenate(tf.data.Dataset.from_tensors(order[full * size :]))
    return batches


class _AttachedArrays(CacheDataset):
    """What `TeacherCache.attach` returns for in-memory arrays: their batches with the stored outputs."""

    def __init__(self, cache, data, batch_size, shuffle):
        x, y, sample_weight = unpack_batch(data)
        n = batch_size_of(x)
        if n != len(cache):
            raise ValueError(
                f"The inputs differ from those the cache in {cache.directory} was built on: they hold {n} examples, "
                f"the cache {len(cache)}. Feed the inputs of the build, unchanged and in order, or use "
                "cache.dataset(...)."
            )
        self._parts = numpy_parts((x, y, sample_weight))
        super().__init__(cache, batch_size, shuffle, seed=None)

    def as_tf_dataset(self, shuffle_batches=False):
        """None: these batches carry your own inputs, checked batch by batch, so they are not served by `tf.data`."""
        return None

    def __getitem__(self, index):
        indices = self._indices(index)
        x, y, sample_weight = (None if part is None else _take(part, indices) for part in self._parts)
        return self.cache.attached_batch(x, y, sample_weight, indices)


def attached(cache, data, batch_size, shuffle):
    """What `cache.attach(data, batch_size, shuffle)` returns (see `TeacherCache.attach`)."""
    if is_in_memory(data):
        if batch_size is None:
            batch_size = 32
        return _AttachedArrays(cache, data, batch_size, shuffle)
    if shuffle:
        raise ValueError(
            "attach can only shuffle in-memory arrays; shuffling a dataset would reorder its inputs away from "
            "the cached outputs. Pass arrays, or shuffle=False."
        )
    return _attached_batches(cache, data, batch_size)


def _attached_batches(cache, data, batch_size):
    """A one-pass generator of a dataset's batches with the stored outputs, for `attach`."""
    position = 0
    for x, y, sample_weight in numpy_batches(data, batch_size):
        n = batch_size_of(x)
        indices = np.arange(position, position + n)
        if position + n > len(cache):
            raise ValueError(
                f"The inputs differ from those the cache in {cache.directory} was built on: they hold more than "
                f"its {len(cache)} examples. Feed the inputs of the build, unchanged and in order, or use "
                "cache.dataset(...)."
            )
        yield cache.attached_batch(x, y, sample_weight, indices)
        position += n


def _take(structure, indices):
    return keras.tree.map_structure(lambda a: np.asarray(a)[indices], structure)
