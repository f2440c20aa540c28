"""One process of a distributed TeacherCache build: its contiguous slice of the data, `part=(index, count)`.

Usage: cache_part.py TEACHER.keras DATA.npz DIRECTORY INDEX COUNT; prints the whole cache's length as JSON.
"""

import json
import sys

import keras
import numpy as np

import keras_kd

teacher_path, data_path, directory, index, count = sys.argv[1:6]
index, count = int(index), int(count)
teacher = keras.saving.load_model(teacher_path)
data = np.load(data_path)
n = len(data["x"])
rows = slice(index * n // count, (index + 1) * n // count)
cache = keras_kd.TeacherCache.build(
    teacher,
    (data["x"][rows], data["y"][rows]),
    directory,
    batch_size=8,
    examples_per_shard=6,
    verbose=0,
    part=(index, count),
    wait_timeout=120,
)
print(json.dumps({"index": index, "examples": len(cache)}))
