"""`ShardStore`: a directory of verified shards with a manifest, written in order and read at random.

Writing (`ShardStore.create`, `append`, `finish`) buffers batches and writes a shard each time
`examples_per_shard` examples are buffered; the manifest is rewritten after every shard with
`"complete": false`, and `finish` writes the rest and marks it `"complete": true`. A build that
dies in the middle keeps every shard the manifest lists: calling `create` again with the same
metadata resumes, and `stored_examples` says how many examples to skip.

Reading (`ShardStore.open`, `get`) refuses an incomplete cache, and gathers any examples in any
order, reading each needed shard once per call and keeping the few most recently read shards in
memory. A shard's SHA-256 is checked the first time a store object reads it.

One build writes a directory at a time: `create` takes a lock on the directory (`shards.DirectoryLock`,
released by `finish`, `close`, a failed write, or the end of the process) and refuses while
another holds it, before it reads, deletes or writes anything there. Any number of processes may
read a complete cache.
"""

import collections
import errno
import json
import os
import threading

import numpy as np

from keras_kd.cache.shards import (
    FORMAT,
    MANIFEST,
    CacheCorruptError,
    DirectoryLock,
    check_arrays,
    corrupt_error,
    is_temp_file,
    load_shard,
    open_regular_file,
    read_manifest,
    read_shard_bytes,
    shard_name,
    shard_path,
    unwritable_error,
    write_manifest,
    write_shard,
)

_MISSING = object()


def _normalize_metadata(metadata):
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}.")
    try:
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise TypeError(
            "metadata must be JSON-serializable (dicts with str keys, lists, str, finite numbers, bools, None): "
            f"{error}"
        ) from None


def _short(value, limit=80):
    text = "(absent)" if value is _MISSING else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_of(arrays):
    return {key: {"dtype": array.dtype.str, "shape": list(array.shape[1:])} for key, array in arrays.items()}


_FIELD_ORDER = ("format", "complete", "metadata", "examples", "examples_per_shard", "schema", "shards")


def _save(directory, manifest):
    """Writes the manifest with its fields in a fixed, readable order."""
    ordered = {key: manifest[key] for key in _FIELD_ORDER if key in manifest}
    write_manifest(directory, {**ordered, **manifest})


def _remove_temp_files(directory, names):
    for name in names:
        if is_temp_file(name):  # left by a write that was killed before it could clean up
            os.remove(os.path.join(directory, name))


def _read_only(array):
    view = array.view()
    view.flags.writeable = False
    return view


def _little_endian(array):
    return array.astype(array.dtype.newbyteorder("<")) if array.dtype.byteorder == ">" else array


class ShardStore:
    """A teacher cache directory: shards of whole examples plus `manifest.json`.

    Make one with `ShardStore.create` (to write, or to resume writing) or `ShardStore.open` (to
    read a complete cache). Arrays are stored under free-form string keys ("x/image",
    "teacher/logits", "fingerprint", ...) that the store does not interpret; every batch must have
    the same keys, dtypes and per-example shapes (pad variable-length sequences to one length).

    >>> import tempfile, numpy as np
    >>> directory = tempfile.mkdtemp()
    >>> store = ShardStore.create(directory, {"teacher": "abc"}, examples_per_shard=4)
    >>> store.append({"y": np.arange(10)})
    >>> store.finish()
    >>> reader = ShardStore.open(directory)
    >>> len(reader), reader.get(np.array([9, 0, 5]))["y"].tolist()
    (10, [9, 0, 5])
    """

    def __init__(self, directory, manifest, *, writable, examples_per_shard=None, cache_shards=4):
        self._directory = os.fspath(directory)
        self._manifest = manifest
        self._writable = writable
        self._examples_per_shard = examples_per_shard
        self._buffer = None  # {key: rows of the shard being filled}, reused from shard to shard
        self._buffered = 0
        self._failed = None
        self._cache_shards = int(cache_shards)
        self._cache = collections.OrderedDict()
        self._verified = set()
        self._lock = threading.Lock()
        self._directory_lock = None
        self._refresh_offsets()

    # ----------------------------------------------------------------------------------- writing

    @classmethod
    def create(cls, directory, metadata, examples_per_shard=1024):
        """Starts writing a cache in `directory`, or resumes an interrupted build there.

        `metadata` (a JSON-serializable dict: the teacher fingerprint, the data description, ...)
        identifies what the cache holds. A directory whose manifest has other metadata is refused,
        naming the keys that differ. With the same metadata the store resumes: the shards the
        manifest lists stay (a missing shard and every shard after it are dropped, so the build
        can redo them), and `stored_examples` says how many examples are already stored. A
        directory that has files but no manifest is refused, so that nothing else is overwritten.

        The store locks the directory until `finish`, `close` or a failed write: while another
        store writes there, `create` raises `RuntimeError` and touches nothing. Only then are the
        temporary files of killed writes removed. A complete cache is opened as it is, without
        writing (a read-only copy can be "built" again to verify it).
        """
        if isinstance(examples_per_shard, bool) or not isinstance(examples_per_shard, int) or examples_per_shard < 1:
            raise ValueError(f"examples_per_shard must be an int >= 1, got {examples_per_shard!r}.")
        metadata = _normalize_metadata(metadata)
        directory = os.fspath(directory)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            raise unwritable_error(directory, error) from None
        lock = DirectoryLock(directory)  # before anything is read or deleted: another build may be writing here
        try:
            manifest, on_disk = cls._prepare(directory, metadata)
            if not manifest["complete"]:
                manifest["examples_per_shard"] = examples_per_shard
            if manifest != on_disk:
                try:
                    _save(directory, manifest)
                except OSError as error:
                    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                        raise unwritable_error(directory, error) from None
                    raise
        except BaseException:
            lock.release()
            raise
        store = cls(directory, manifest, writable=True, examples_per_shard=examples_per_shard)
        store._directory_lock = lock
        return store

    @classmethod
    def _prepare(cls, directory, metadata):
        """`(manifest to write from, manifest as on disk or None)`, the directory cleaned of what killed writes left."""
        names = os.listdir(directory)
        if MANIFEST in names:
            manifest = read_manifest(directory)
            cls._check_same_metadata(directory, manifest["metadata"], metadata)
            on_disk = json.loads(json.dumps(manifest))
            _remove_temp_files(directory, names)
            return cls._resumable(directory, manifest), on_disk
        others = sorted(name for name in names if not is_temp_file(name))
        if others:
            raise ValueError(
                f"{directory} is not empty and has no {MANIFEST}, so it is not a teacher cache: it holds "
                f"{others[:5]}{' ...' if len(others) > 5 else ''}. Give a new or empty directory."
            )
        _remove_temp_files(directory, names)
        return {"format": FORMAT, "complete": False, "metadata": metadata, "examples": 0, "shards": []}, None

    def close(self):
        """Stops writing without finishing: releases the directory's lock; `create` resumes from `stored_examples`."""
        if self._writable and not self.complete and self._failed is None:
            self._failed = RuntimeError("the store was closed")
        self._release()

    def _release(self):
        lock, self._directory_lock = self._directory_lock, None
        if lock is not None:
            lock.release()

    @classmethod
    def combine(cls, directory, parts, metadata):
        """Writes `directory`'s manifest over the complete stores in its subdirectories `parts`; returns it opened.

        Distributed builds write one store per process into `directory/<part>/` (see
        `shards.part_name`); once every part is complete, this lists all their shards, part after
        part, in one manifest (the shard files stay where they are). Each part's metadata must be
        `metadata` plus a `"part"` entry, and every non-empty part the same schema.
        """
        metadata = _normalize_metadata(metadata)
        if os.path.lexists(os.path.join(directory, MANIFEST)):  # never the manifest of another cache
            cls._check_same_metadata(directory, read_manifest(directory)["metadata"], metadata)
        shards, schema, examples_per_shard = [], None, None
        for part in parts:
            part_directory = os.path.join(directory, part)
            manifest = read_manifest(part_directory)
            if not manifest["complete"]:
                raise ValueError(f"Part {part} of the cache in {directory} is not complete yet.")
            own = {key: value for key, value in manifest["metadata"].items() if key != "part"}
            cls._check_same_metadata(part_directory, own, metadata)
            if manifest["examples"]:
                if schema is not None and manifest["schema"] != schema:
                    raise ValueError(
                        f"Part {part} of the cache in {directory} stores {manifest['schema']}, an earlier part "
                        f"{schema}: every process must give batches of the same structure and shapes."
                    )
                schema = manifest["schema"]
            examples_per_shard = examples_per_shard or manifest.get("examples_per_shard")
            shards += [{**entry, "file": f"{part}/{entry['file']}"} for entry in manifest["shards"]]
        combined = {
            "format": FORMAT,
            "complete": True,
            "metadata": metadata,
            "examples": sum(entry["examples"] for entry in shards),
            "shards": shards,
        }
        if examples_per_shard is not None:
            combined["examples_per_shard"] = examples_per_shard
        if schema is not None:
            combined["schema"] = schema
        _save(directory, combined)
        return cls.open(directory)

    @staticmethod
    def _check_same_metadata(directory, stored, given):
        keys = sorted(set(stored) | set(given))
        differing = [key for key in keys if stored.get(key, _MISSING) != given.get(key, _MISSING)]
        if differing:
            details = "; ".join(
                f"{key!r}: cache has {_short(stored.get(key, _MISSING))}, given {_short(given.get(key, _MISSING))}"
                for key in differing
            )
            raise ValueError(
                f"{directory} holds a teacher cache built with different metadata (keys {differing}: {details}). "
                "Use a fresh directory for another teacher or other data, or delete this one to rebuild it."
            )

    @staticmethod
    def _resumable(directory, manifest):
        """Keeps the listed shards up to the first missing one; deletes shard files no entry lists."""
        kept = []
        for index, entry in enumerate(manifest["shards"]):
            if "/" in entry["file"]:
                raise ValueError(
                    f"{directory} holds a teacher cache gathered from the parts of a distributed build, which one "
                    "process cannot resume or extend. Open it with TeacherCache(directory); to build it again, call "
                    "TeacherCache.build with the same part=(index, count) in each process, or use a fresh directory."
                )
            if entry["file"] != shard_name(index):
                raise CacheCorruptError(
                    f"The manifest in {directory} has an invalid entry {entry!r} for shard {index}. Rebuild the "
                    "cache with TeacherCache.build into a fresh directory."
                )
            path = shard_path(directory, entry)
            try:
                file, size = open_regular_file(directory, path)
            except FileNotFoundError:
                break
            except Exception as error:  # a link, a FIFO, a device: not ours to read or overwrite
                raise corrupt_error(path, f"{error.args[0] if error.args else error}, not a shard file") from None
            file.close()
            if size != entry["bytes"]:
                raise corrupt_error(
                    path, f"has the wrong size: expected {entry['bytes']} bytes, found {size} (truncated or replaced)"
                )
            kept.append(entry)
        if len(kept) < len(manifest["shards"]):
            manifest["complete"] = False
        manifest["shards"] = kept
        manifest["examples"] = sum(entry["examples"] for entry in kept)
        listed = {entry["file"] for entry in kept}
        for name in os.listdir(directory):
            if name.startswith("shard-") and name.endswith(".npz") and name not in listed:
                os.remove(os.path.join(directory, name))  # written after the last manifest update, or dropped
        return manifest

    @property
    def stored_examples(self):
        """Examples in the shards written so far (buffered, unwritten examples not included).

        After `create` resumes a build, the first `stored_examples` examples of the data are the
        ones already stored: append from example `stored_examples` on.
        """
        return self._manifest["examples"]

    @property
    def complete(self):
        return bool(self._manifest["complete"])

    def _check_writable(self):
        if not self._writable:
            raise ValueError(f"This store was opened for reading; use ShardStore.create({self._directory!r}, ...).")
        if self._failed is not None:
            raise RuntimeError(
                f"An earlier write to {self._directory} failed ({type(self._failed).__name__}: {self._failed}). "
                f"The {self.stored_examples} examples in its shards are safe: call ShardStore.create again with "
                "the same directory and metadata to resume from there."
            ) from self._failed
        if self.complete:
            raise ValueError(f"The cache in {self._directory} is already complete; open it with ShardStore.open.")

    def _check_schema(self, arrays):
        schema = self._manifest.get("schema")
        if schema is None:
            return
        if set(arrays) != set(schema):
            raise ValueError(
                f"The batch has the keys {sorted(arrays)}, but the cache in {self._directory} stores "
                f"{sorted(schema)}; every batch needs the same keys."
            )
        for key, array in arrays.items():
            dtype, shape = np.dtype(schema[key]["dtype"]), tuple(schema[key]["shape"])
            if array.dtype != dtype or array.shape[1:] != shape:
                raise ValueError(
                    f"Array {key!r} has dtype {array.dtype} and per-example shape {array.shape[1:]}, but the cache "
                    f"in {self._directory} stores it as {dtype} with shape {shape}. Cast it, and pad "
                    "variable-length sequences to one length."
                )

    def append(self, arrays):
        """Buffers a batch (a dict of arrays with one row per example) and writes every full shard.

        The arrays are copied, so the caller may reuse its buffers. If a write fails (a full disk),
        the exception propagates, nothing half-written stays, and this store refuses further
        writes: call `ShardStore.create` again to resume from `stored_examples`.
        """
        self._check_writable()
        arrays, examples = check_arrays(arrays)
        arrays = {key: _little_endian(array) for key, array in arrays.items()}
        self._check_schema(arrays)
        if "schema" not in self._manifest:
            self._manifest["schema"] = _schema_of(arrays)
        size, start = self._examples_per_shard, 0
        while start < examples:  # copied once, into the rows of the shard being filled
            take = min(size - self._buffered, examples - start)
            self._reserve(arrays, self._buffered + take)
            for key, array in arrays.items():
                self._buffer[key][self._buffered : self._buffered + take] = array[start : start + take]
            self._buffered += take
            start += take
            if self._buffered == size:
                self._write_buffer()

    def _reserve(self, arrays, rows):
        """Grows the shard buffer (doubling, up to a shard) to hold `rows` examples, keeping what it holds."""
        capacity = 0 if self._buffer is None else len(next(iter(self._buffer.values())))
        if rows <= capacity:
            return
        capacity = min(self._examples_per_shard, max(rows, 2 * capacity))
        grown = {key: np.empty((capacity, *array.shape[1:]), dtype=array.dtype) for key, array in arrays.items()}
        if self._buffered:
            for key, array in grown.items():
                array[: self._buffered] = self._buffer[key][: self._buffered]
        self._buffer = grown

    def finish(self):
        """Writes the buffered rest as a last (smaller) shard and marks the cache complete."""
        if self._writable and self._failed is None and self.complete:
            self._release()
            return
        self._check_writable()
        if self._buffered:
            self._write_buffer()
        self._buffer = None
        self._manifest["complete"] = True
        try:
            _save(self._directory, self._manifest)
        except BaseException as error:
            self._manifest["complete"] = False
            self._failed = error
            raise
        finally:
            self._release()

    def _write_buffer(self):
        """Writes the buffered examples as the next shard, then the manifest that lists it."""
        rows = self._buffered
        try:
            shards = self._manifest["shards"]
            rows_of_shard = {key: array[:rows] for key, array in self._buffer.items()}
            entry = write_shard(self._directory, len(shards), rows_of_shard)
            shards.append(entry)
            self._manifest["examples"] += entry["examples"]
            try:
                _save(self._directory, self._manifest)
            except BaseException:
                shards.pop()  # the shard file is an orphan that a resumed build overwrites
                self._manifest["examples"] -= entry["examples"]
                raise
        except BaseException as error:
            self._failed = error
            self._release()  # this store writes no more: let a new build resume
            raise
        self._buffered = 0
        self._refresh_offsets()

    # ----------------------------------------------------------------------------------- reading

    @classmethod
    def open(cls, directory, cache_shards=4):
        """Opens a complete cache for reading; `cache_shards` recently read shards stay in memory."""
        directory = os.fspath(directory)
        manifest = read_manifest(directory)
        if not manifest["complete"]:
            raise ValueError(
                f"The teacher cache in {directory} is incomplete: its build was interrupted after "
                f"{manifest.get('examples', 0)} examples in {len(manifest['shards'])} shards. Run TeacherCache.build "
                "again with the same teacher and data to resume it."
            )
        try:
            counts = [int(entry["examples"]) for entry in manifest["shards"]]
        except (TypeError, KeyError, ValueError):
            raise CacheCorruptError(
                f"The manifest in {directory} has a shard entry without an example count."
            ) from None
        if sum(counts) != manifest.get("examples") or (sum(counts) and "schema" not in manifest):
            raise CacheCorruptError(
                f"The manifest in {directory} is inconsistent: its shards hold {sum(counts)} examples, its total "
                f"says {manifest.get('examples')}. Rebuild the cache with TeacherCache.build into a fresh directory."
            )
        if isinstance(cache_shards, bool) or not isinstance(cache_shards, int) or cache_shards < 0:
            raise ValueError(f"cache_shards must be an int >= 0, got {cache_shards!r}.")
        return cls(directory, manifest, writable=False, cache_shards=cache_shards)

    @property
    def directory(self):
        return self._directory

    @property
    def metadata(self):
        """The metadata dict the cache was created with (a copy)."""
        return json.loads(json.dumps(self._manifest["metadata"]))

    @property
    def schema(self):
        """`{key: (dtype, per-example shape)}` of the stored arrays; empty before the first append."""
        schema = self._manifest.get("schema", {})
        return {key: (np.dtype(spec["dtype"]), tuple(spec["shape"])) for key, spec in schema.items()}

    def __len__(self):
        return self._manifest["examples"]

    def __repr__(self):
        state = "complete" if self.complete else "incomplete"
        return f"<ShardStore {self._directory!r}: {len(self)} examples in {len(self._starts)} shards, {state}>"

    def _refresh_offsets(self):
        counts = np.array([entry["examples"] for entry in self._manifest["shards"]], dtype=np.int64)
        self._ends = np.cumsum(counts)
        self._starts = self._ends - counts

    def _shard(self, index):
        """The arrays of shard `index`: from the in-memory LRU, or read (and verified once) from disk."""
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            verify = index not in self._verified
        entry = self._manifest["shards"][index]
        path, data = read_shard_bytes(self._directory, entry, verify=verify)
        arrays = load_shard(path, data)
        expected = self.schema
        found = {key: (array.dtype, array.shape[1:]) for key, array in arrays.items()}
        if found != expected or any(len(array) != entry["examples"] for array in arrays.values()):
            raise corrupt_error(path, f"does not hold {entry['examples']} examples of {expected}, found {found}")
        for array in arrays.values():
            array.flags.writeable = False
        with self._lock:
            self._verified.add(index)
            if self._cache_shards:
                self._cache[index] = arrays
                while len(self._cache) > self._cache_shards:
                    self._cache.popitem(last=False)
        return arrays

    @property
    def num_shards(self):
        """How many shards the manifest lists (written so far, while building)."""
        return len(self._starts)

    @property
    def shard_starts(self):
        """The position of each shard's first example, in manifest order (a read-only int64 array).

        Shard `k` holds the examples `shard_starts[k]` to `shard_ends[k] - 1`.
        """
        return _read_only(self._starts)

    @property
    def shard_ends(self):
        """One past the position of each shard's last example, in manifest order (a read-only int64 array)."""
        return _read_only(self._ends)

    def read_all(self):
        """Every example as `{key: array}`, in example order, in one array per key.

        Each shard is read (and verified) as `get` reads it; the in-memory shards are then released,
        since the returned arrays hold the same rows.
        """
        parts = [self._shard(index) for index in range(self.num_shards)]
        arrays = {
            key: np.concatenate([part[key] for part in parts]) if parts else np.empty((0, *shape), dtype=dtype)
            for key, (dtype, shape) in self.schema.items()
        }
        with self._lock:
            self._cache.clear()
        return arrays

    def get(self, indices):
        """The examples at `indices` (any order, repeats allowed) as `{key: array}`, rows in that order.

        Each shard the indices touch is read once per call. The first read of a shard by this store
        checks its size and SHA-256 (`CacheCorruptError` on a mismatch); later reads come from an
        in-memory LRU of the `cache_shards` most recent shards, or, once evicted, from disk with a
        size check and the ZIP format's CRC-32 of every array. The returned arrays are new copies.
        """
        indices = np.asarray(indices)
        if indices.ndim != 1:
            raise ValueError(f"indices must be a 1-D array of example positions, got shape {indices.shape}.")
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"indices must be integers, got dtype {indices.dtype}.")
        indices = indices.astype(np.int64)
        total = len(self)
        bad = (indices < 0) | (indices >= total)
        if bad.any():
            raise IndexError(
                f"Index {indices[bad][0]} is out of range for the cache in {self._directory}, which holds "
                f"{total} examples (valid indices: 0 to {total - 1})."
            )
        shard_ids = np.searchsorted(self._ends, indices, side="right")
        rows_in_shard = indices - self._starts[shard_ids]
        out = {key: np.empty((len(indices), *shape), dtype=dtype) for key, (dtype, shape) in self.schema.items()}
        for index in np.unique(shard_ids):
            positions = np.flatnonzero(shard_ids == index)
            arrays = self._shard(int(index))
            for key in out:
                out[key][positions] = arrays[key][rows_in_shard[positions]]
        return out
