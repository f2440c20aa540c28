"""Makes a running `TeacherCache.build` call a function while one shard's bytes sit in its temporary file.

Used by the cache-build scripts beside it: the shard is neither renamed nor listed in the manifest
yet when `pause()` runs, which is the moment a kill or a second build must not damage anything.
"""

import os

from keras_kd.cache import shards


def pause_in_shard(index, pause):
    """Patches `shards.atomic_write` so that writing shard `index` calls `pause()` once its bytes are flushed."""
    atomic_write = shards.atomic_write

    def atomic_write_pausing(path, write):
        if os.path.basename(path) != shards.shard_name(index):
            return atomic_write(path, write)

        def write_then_pause(file):
            write(file)
            file.flush()
            pause()

        return atomic_write(path, write_then_pause)

    shards.atomic_write = atomic_write_pausing
