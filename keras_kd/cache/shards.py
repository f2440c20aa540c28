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
* Only regular files inside the cache directory are read: a shard or manifest that is a symbolic
  link, a FIFO or a device (or lies behind a linked part folder) is refused without being read,
  and a shard is read up to the size its manifest entry declares, never more.
* `read_manifest` checks every field's type (`CacheCorruptError` on a tampered manifest), so that
  readers can index it without further checks.
* `DirectoryLock` is the advisory lock (`flock` on the directory itself, no extra file) that keeps
  two builds from writing one directory at once.
"""

import errno
import hashlib
import io
import json
import os
import re
import stat
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
# Far beyond any real manifest (a million shards take ~200 MB); a larger file is not read.
MAX_MANIFEST_BYTES = 1 << 28
# Deeper JSON is refused: a cache's manifest nests a few levels (plus the nesting of the inputs).
MAX_MANIFEST_DEPTH = 64
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)  # a symbolic link fails to open (ELOOP)
    | getattr(os, "O_NONBLOCK", 0)  # opening a FIFO does not wait for a writer
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


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


class DirectoryLock:
    """An advisory lock on a directory (`flock` on the directory itself: no file is added), held until `release`.

    `shared=False` (one writer) refuses while anyone else holds it; `shared=True` is held by the
    processes of a distributed build together, and refuses while a writer holds it. The lock dies
    with its process (even on `kill -9`), so an interrupted build never leaves a stale lock. Where
    the platform or filesystem cannot lock a directory (Windows, some network filesystems), it is a
    no-op. A refusal raises `RuntimeError` before anything in the directory is read or changed.
    """

    def __init__(self, directory, shared=False):
        self.directory = os.fspath(directory)
        self._fd = None
        try:
            import fcntl
        except ImportError:  # Windows: no directory locks
            return
        fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"Another build is writing the teacher cache in {self.directory} (another process, or another "
                "TeacherCache.build in this one); two builds into one directory would destroy each other's files, so "
                "this one touched nothing. Wait until that build ends and build again (it then resumes, or returns the "
                "finished cache), or give this build another directory."
            ) from None
        except OSError:  # a filesystem without flock on directories: proceed unlocked
            os.close(fd)
            return
        self._fd = fd

    def release(self):
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def __del__(self):
        self.release()


def unwritable_error(directory, error):
    """The `OSError` to raise when `directory` cannot be created or written: what failed, and the fix.

    Permission problems and read-only filesystems are `PermissionError`s; other errors keep their kind.
    """
    message = (
        f"Cannot write the teacher cache to {directory}: {error.strerror or error}. Give a directory this process "
        "can create and write (check its permissions, and that its filesystem is not mounted read-only)."
    )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionError(error.errno, message)
    return OSError(error.errno, message)


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


def write_npy(file, array):
    """Writes `array` to `file` as the bytes of a `.npy` file (the layout `np.save` writes), without a copy.

    `np.lib.format.write_array` copies the data into chunks of bytes first when `file` is not a real
    file (a member of a ZIP archive is not); a shard writes its rows straight from the array.
    """
    array = np.ascontiguousarray(array)
    header = npy_format.header_data_from_array_1_0(array)
    try:
        npy_format.write_array_header_1_0(file, header)
    except ValueError:  # a header beyond 64 KiB (a structured dtype of very many fields)
        npy_format.write_array_header_2_0(file, header)
    if array.size:
        file.write(memoryview(array.reshape(-1).view(np.uint8)))


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
                    write_npy(member, array)

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


class _NotRegular(Exception):
    """A cache path that is not a regular file inside the cache directory; its `args[0]` says what it is."""


def _inside(directory, path):
    """Whether the folder of `path` is `directory` or a subfolder of it, reached without a symbolic link."""
    folder = os.path.dirname(os.path.abspath(path))
    relative = os.path.relpath(folder, os.path.abspath(directory))
    real = os.path.realpath(directory)
    return os.path.realpath(folder) == (real if relative == "." else os.path.join(real, relative))


def open_regular_file(directory, path):
    """`(file, size)`: `path` opened for binary reading, a regular file inside `directory`.

    Raises `FileNotFoundError` when it is absent, and `_NotRegular` (saying what it is) for a symbolic
    link, a FIFO, a device, a directory, or a file behind a linked folder; neither is read.
    """
    if not _inside(directory, path):
        raise _NotRegular("lies outside the cache directory (a folder on its path is a symbolic link)")
    if not hasattr(os, "O_NOFOLLOW") and os.path.islink(path):
        raise _NotRegular("is a symbolic link")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno == errno.ELOOP or os.path.islink(path):
            raise _NotRegular("is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _NotRegular("is not a regular file (a FIFO, a device or a directory)")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _not_regular_error(path, problem):
    return CacheCorruptError(
        f"Cache file {path} {problem}: a teacher cache reads only regular files inside its directory, so it was not "
        "read. Replace it with the file TeacherCache.build wrote, or rebuild the cache into a fresh directory."
    )


def read_shard_bytes(directory, entry, verify=True):
    """Reads a shard file's bytes, checking its size always and its SHA-256 when `verify`.

    Only a regular file inside `directory` is opened, and no more than the entry's `bytes` are read.
    """
    path = shard_path(directory, entry)
    expected = entry.get("bytes")
    try:
        file, size = open_regular_file(directory, path)
    except FileNotFoundError:
        raise corrupt_error(path, "is missing") from None
    except _NotRegular as problem:
        raise _not_regular_error(path, problem.args[0]) from None
    with file:
        if size != expected:
            raise corrupt_error(
                path, f"has the wrong size: expected {expected} bytes, found {size} (truncated or replaced)"
            )
        data = file.read(expected)
    if len(data) != expected:
        raise corrupt_error(path, f"has the wrong size: expected {expected} bytes, read {len(data)} (truncated)")
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
    """Reads `manifest.json` of a cache directory and checks its `"format"` and the types of its fields.

    Raises `FileNotFoundError` when there is no manifest (not a cache directory, or a build that
    never started), `CacheCorruptError` when it is not valid JSON, is not a regular file, or lacks a
    required field or has one of the wrong type (`check_manifest`), and `ValueError` when it was
    written by another, incompatible cache format.
    """
    path = os.path.join(directory, MANIFEST)
    try:
        file, size = open_regular_file(directory, path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{directory} is not a teacher cache: it has no {MANIFEST}. Build one with TeacherCache.build, "
            "or check the path."
        ) from None
    except _NotRegular as problem:
        raise _not_regular_error(path, problem.args[0]) from None
    with file:
        if size > MAX_MANIFEST_BYTES:
            raise CacheCorruptError(
                f"{path} holds {size} bytes, more than any manifest ({MAX_MANIFEST_BYTES}); it is not one. Rebuild "
                "the cache with TeacherCache.build into a fresh directory."
            )
        data = file.read(MAX_MANIFEST_BYTES + 1)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        reason = "it nests too deeply" if isinstance(error, RecursionError) else error
        raise CacheCorruptError(
            f"{path} is not valid JSON ({reason}). Rebuild the cache with TeacherCache.build into a fresh directory."
        ) from None
    if not isinstance(manifest, dict):
        raise CacheCorruptError(f"{path} holds a {type(manifest).__name__}, not a JSON object.")
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path} has format {_short(manifest.get('format'))}, but this version of keras_kd reads {FORMAT!r}. "
            "Rebuild the cache with this version, or read it with the keras_kd version that wrote it."
        )
    missing = [key for key in ("complete", "metadata", "shards", "examples") if key not in manifest]
    if missing:
        raise CacheCorruptError(
            f"{path} lacks the fields {missing}: it was edited or damaged. Rebuild the cache with TeacherCache.build "
            "into a fresh directory."
        )
    check_manifest(directory, manifest)
    return manifest


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _depth(value):
    """How deeply lists and dicts nest in a JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth <= MAX_MANIFEST_DEPTH:
                stack.extend((child, depth + 1) for child in item)
    return deepest


def _is_count(value, minimum=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_dtype_name(name):
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError):
        return False
    return dtype.kind != "O" and dtype.str == name


def check_manifest(directory, manifest):
    """Raises `CacheCorruptError`, naming the field, when a field of a read manifest has the wrong type.

    `complete` is a bool, `metadata` an object, `examples` a count, `examples_per_shard` (if present)
    a positive count, `schema` (if present) `{key: {"dtype": NumPy dtype string, "shape": [counts]}}`,
    and `shards` a list of `{"file": a shard path of this directory, "examples": count, "sha256": 64
    hex digits, "bytes": count}`; nothing nests deeper than `MAX_MANIFEST_DEPTH`.
    """
    path = os.path.join(directory, MANIFEST)

    def refuse(field, value, expected):
        return CacheCorruptError(
            f"{path} has an invalid {field}: {_short(value)}, where a manifest has {expected}. It was edited or "
            "damaged: rebuild the cache with TeacherCache.build into a fresh directory."
        )

    if _depth(manifest) > MAX_MANIFEST_DEPTH:
        raise CacheCorruptError(
            f"{path} nests deeper than {MAX_MANIFEST_DEPTH} levels, which no manifest does: it was edited or "
            "damaged. Rebuild the cache with TeacherCache.build into a fresh directory."
        )
    if not isinstance(manifest["complete"], bool):
        raise refuse("'complete'", manifest["complete"], "true or false")
    if not isinstance(manifest["metadata"], dict):
        raise refuse("'metadata'", manifest["metadata"], "a JSON object")
    if not _is_count(manifest["examples"]):
        raise refuse("'examples'", manifest["examples"], "a count of examples (an int >= 0)")
    if "examples_per_shard" in manifest and not _is_count(manifest["examples_per_shard"], 1):
        raise refuse("'examples_per_shard'", manifest["examples_per_shard"], "an int >= 1")
    schema = manifest.get("schema", {})
    if not isinstance(schema, dict):
        raise refuse("'schema'", schema, "a JSON object")
    for key, spec in schema.items():
        valid = (
            isinstance(spec, dict)
            and isinstance(spec.get("dtype"), str)
            and _check_dtype_name(spec["dtype"])
            and isinstance(spec.get("shape"), list)
            and all(_is_count(size) for size in spec["shape"])
        )
        if not valid:
            raise refuse(f"schema entry {key!r}", spec, '{"dtype": a NumPy dtype such as "<f2", "shape": [sizes]}')
    if not isinstance(manifest["shards"], list):
        raise refuse("'shards'", manifest["shards"], "a list of shard entries")
    for index, entry in enumerate(manifest["shards"]):
        valid = (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and _is_count(entry.get("examples"))
            and _is_count(entry.get("bytes"))
            and isinstance(entry.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None
        )
        if not valid:
            raise refuse(
                f"entry for shard {index}",
                entry,
                '{"file": name, "examples": count, "sha256": 64 hex digits, "bytes": count}',
            )
        shard_path(directory, entry)
