"""Shard files and the manifest of a teacher cache: atomic writes, verified reads.

A shard `shard-00007.npz` is an uncompressed NumPy `.npz` archive (a ZIP of `.npy` members, the
layout `np.savez` writes and `np.load` reads) holding whole examples: every array in it has the same
first dimension. The manifest `manifest.json` lists the shards, each with its example count, byte
size and SHA-256.

Guarantees:

* Writes are atomic. A shard or the manifest is written to a temporary file in the same directory,
  flushed and `fsync`-ed, then renamed over its final name with `os.replace`, so a reader or a
  resumed build sees the old file or the new one, never a half-written one. If the write fails (a
  full disk, an interrupt) the temporary file is removed and the exception re-raised.
* Reads are verified. `read_shard_bytes` checks the file's size (and its SHA-256 unless told not
  to) against the manifest entry, and `load_shard` parses the bytes that were checked; both raise
  `CacheCorruptError` on a missing, truncated, altered or unreadable file. `ShardStore` reads
  shards through them.
"""

import errno
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile

import numpy as np
from numpy.lib import format as npy_format

FORMAT = "keras_kd.teacher_cache/1"
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{index:05d}.npz"
PART_PATTERN = "part-{index:05d}-of-{count:05d}"
_PART_DIRECTORY = re.compile(r"part-\d{5}-of-\d{5}")
TEMP_SUFFIX = ".tmp"
_CHUNK = 1 << 20


class CacheCorruptError(ValueError):
    """A cache file is missing, truncated, altered or unreadable."""


def shard_name(index):
    return SHARD_PATTERN.format(index=index)


def part_name(index, count):
    """The subdirectory that part `index` of a `count`-part build writes its shards to."""
    return PART_PATTERN.format(index=index, count=count)


def is_temp_file(name):
    """Whether `name` is a temporary file left by an interrupted atomic write of this module."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and (".shard-" in name or f".{MANIFEST}." in name)


def _fsync_directory(directory):
    """Makes the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Calls `write(file)` on a temporary file next to `path`, then renames it to `path`.

    The temporary file is flushed and fsync-ed before the rename. On any exception (including
    `OSError(ENOSPC)` from a full disk) it is removed and the exception re-raised, so `path` keeps
    its previous content, or stays absent.
    """
    directory, name = os.path.split(os.fspath(path))
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as error:
        try:
            os.remove(temp)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            error.add_note(f"The disk is full while writing {path}; nothing was half-written. Free space and retry.")
        raise
    _fsync_directory(directory or ".")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_arrays(arrays):
    """Validates a dict of arrays for a shard; returns it as NumPy arrays, and the number of examples."""
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError(f"A shard needs a non-empty dict of arrays, got {type(arrays).__name__}.")
    out = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"Shard keys must be non-empty strings, got {key!r}.")
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(
                f"Array {key!r} has dtype object, which cannot be stored without pickle. "
                "Store text as a fixed-width string array (dtype 'S' or 'U') or as token ids."
            )
        if npy_format.descr_to_dtype(npy_format.dtype_to_descr(array.dtype)) != array.dtype:
            raise ValueError(
                f"Array {key!r} has dtype {array.dtype}, which .npy files cannot record (it would read back as "
                f"{npy_format.descr_to_dtype(npy_format.dtype_to_descr(array.dtype))}). Cast it to float32 or "
                "float16 first."
            )
        if array.ndim == 0:
            raise ValueError(f"Array {key!r} is a scalar; shard arrays need a leading example dimension.")
        out[key] = array
    lengths = {key: array.shape[0] for key, array in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"All arrays of a shard must have the same first dimension (one row per example), got {lengths}."
        )
    return out, next(iter(lengths.values()))


def write_shard(directory, index, arrays):
    """Writes `arrays` (a dict of name -> array, one row per example) as `shard-{index:05d}.npz`.

    The file is an uncompressed `.npz` (the `np.savez` layout; any key is allowed, even ones that
    are `np.savez` argument names) written atomically. Returns its manifest entry:
    `{"file": name, "examples": n, "sha256": hex digest of the file, "bytes": size}`.
    """
    arrays, examples = check_arrays(arrays)
    name = shard_name(index)
    path = os.path.join(directory, name)

    def write(file):
        with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, array in arrays.items():
                with archive.open(key + ".npy", "w", force_zip64=True) as member:
                    npy_format.write_array(member, array, allow_pickle=False)

    atomic_write(path, write)
    return {"file": name, "examples": int(examples), "sha256": file_sha256(path), "bytes": os.path.getsize(path)}


def corrupt_error(path, problem):
    """A `CacheCorruptError` for the shard file `path`, with the fix."""
    return CacheCorruptError(
        f"Cache shard {path} {problem}. Rebuild the cache with TeacherCache.build into a fresh directory, "
        f"or delete {path} and run TeacherCache.build again with the same teacher and data to resume "
        "(it rewrites the missing shard and the ones after it)."
    )


def _is_file_name(name):
    return bool(name) and name not in (".", "..") and os.path.basename(name) == name


def shard_path(directory, entry):
    """Where the shard of a manifest entry is: a file of `directory`, or of a part's subdirectory."""
    name = entry.get("file") if isinstance(entry, dict) else None
    parts = name.split("/") if isinstance(name, str) else []
    valid = (len(parts) == 1 and _is_file_name(parts[0])) or (
        len(parts) == 2 and _PART_DIRECTORY.fullmatch(parts[0]) and _is_file_name(parts[1])
    )
    if not valid:
        raise CacheCorruptError(f"The manifest in {directory} has an invalid shard entry {entry!r}.")
    return os.path.join(directory, *parts)


def load_shard(path, data):
    """Parses the bytes of a shard file; any parse failure is a `CacheCorruptError`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:  # a damaged ZIP or .npy can fail in many ways; all of them mean corruption
        raise corrupt_error(path, f"cannot be read ({type(error).__name__}: {error})") from error


def read_shard_bytes(directory, entry, verify=True):
    """Reads a shard file's bytes, checking its size always and its SHA-256 when `verify`."""
    path = shard_path(directory, entry)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise corrupt_error(path, "is missing") from None
    if len(data) != entry.get("bytes"):
        raise corrupt_error(
            path, f"has the wrong size: expected {entry.get('bytes')} bytes, found {len(data)} (truncated or replaced)"
        )
    if verify:
        found = hashlib.sha256(data).hexdigest()
        if found != entry.get("sha256"):
            raise corrupt_error(path, f"has the wrong checksum: expected sha256 {entry.get('sha256')}, found {found}")
    return path, data


def write_manifest(directory, manifest):
    """Writes `manifest` as `manifest.json` (indent 2), atomically like a shard."""
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(os.path.join(directory, MANIFEST), lambda file: file.write(text.encode("utf-8")))


def read_manifest(directory):
    """Reads `manifest.json` of a cache directory and checks its `"format"`.

    Raises `FileNotFoundError` when there is no manifest (not a cache directory, or a build that
    never started), `CacheCorruptError` when it is not valid JSON or lacks required fields, and
    `ValueError` when it was written by another, incompatible cache format.
    """
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{directory} is not a teacher cache: it has no {MANIFEST}. Build one with TeacherCache.build, "
            "or check the path."
        ) from None
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CacheCorruptError(
            f"{path} is not valid JSON ({error}). Rebuild the cache with TeacherCache.build into a fresh directory."
        ) from None
    if not isinstance(manifest, dict):
        raise CacheCorruptError(f"{path} holds a {type(manifest).__name__}, not a JSON object.")
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path} has format {manifest.get('format')!r}, but this version of keras_kd reads {FORMAT!r}. "
            "Rebuild the cache with this version, or read it with the keras_kd version that wrote it."
        )
    missing = [key for key in ("complete", "metadata", "shards") if key not in manifest]
    if missing or not isinstance(manifest["shards"], list):
        raise CacheCorruptError(f"{path} lacks the fields {missing or ['shards (a list)']}.")
    return manifest
