"""A `TeacherCache.build` that pauses while a shard is in its temporary file, for a second build to collide with.

Usage: paused_cache_build.py TEACHER.keras DATA.npz DIRECTORY PAUSE_MARKER GO_MARKER

Builds the cache of the teacher over the data's `x` and `y` (batches of 16, 16 examples per shard).
While shard 1 is being written (its bytes are in the temporary file, which is neither renamed nor
listed in the manifest yet), the process writes `PAUSE_MARKER` and waits until `GO_MARKER` exists;
then it finishes the build and prints the cache's length. tests/test_bad_inputs_cache.py starts
other builds into the same directory meanwhile: they must be refused without touching its files.
"""

import os
import sys
import time

import keras
import numpy as np
from pause_in_shard import pause_in_shard

import keras_kd

teacher_path, data_path, directory, pause_marker, go_marker = sys.argv[1:6]
teacher = keras.saving.load_model(teacher_path)
data = np.load(data_path)


def pause():
    with open(pause_marker + ".part", "w") as file:
        file.write(str(os.getpid()))
    os.replace(pause_marker + ".part", pause_marker)
    deadline = time.monotonic() + 240
    while not os.path.exists(go_marker):
        if time.monotonic() > deadline:
            raise RuntimeError("paused_cache_build.py waited 240 s for its go marker.")
        time.sleep(0.05)


pause_in_shard(1, pause)
cache = keras_kd.TeacherCache.build(
    teacher, (data["x"], data["y"]), directory, batch_size=16, examples_per_shard=16, verbose=0
)
print(len(cache))
