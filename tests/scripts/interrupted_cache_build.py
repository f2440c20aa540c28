"""A `TeacherCache.build` that pauses in the middle of writing a shard, for tests/test_interruption.py to kill.

Usage: interrupted_cache_build.py TEACHER.keras DATA.npz DIRECTORY PAUSE_MARKER PAUSE_SHARD

Builds the cache of the teacher over the data's `x` and `y`, fed in batches of 8 by a generator,
dtype float32, 16 examples per shard. When shard number `PAUSE_SHARD` is being written (its bytes
are in the temporary file, which is neither renamed nor listed in the manifest yet), the process
writes `PAUSE_MARKER` and waits for the test to kill it. Prints the cache's length if nothing
killed it.
"""

import os
import sys
import time

import keras
import numpy as np
from pause_in_shard import pause_in_shard

import keras_kd

BATCH_SIZE = 8
EXAMPLES_PER_SHARD = 16

teacher_path, data_path, directory, pause_marker, pause_shard = sys.argv[1:6]
teacher = keras.saving.load_model(teacher_path)
data = np.load(data_path)
x, y = data["x"], data["y"]


def batches():
    for start in range(0, len(x), BATCH_SIZE):
        yield x[start : start + BATCH_SIZE], y[start : start + BATCH_SIZE]


def pause():
    with open(pause_marker + ".tmp", "w") as file:
        file.write(str(os.getpid()))
    os.replace(pause_marker + ".tmp", pause_marker)
    time.sleep(300)  # the test kills the process here
    raise RuntimeError("interrupted_cache_build.py waited at its pause marker, but nothing killed it.")


pause_in_shard(int(pause_shard), pause)
cache = keras_kd.TeacherCache.build(
    teacher, batches(), directory, dtype="float32", examples_per_shard=EXAMPLES_PER_SHARD, verbose=0
)
print(len(cache))
