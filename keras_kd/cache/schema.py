"""The layout of a teacher cache's examples: the keys they are stored under and the nesting of `x`.

`keras_kd.cache.teacher_cache` describes what each key holds. Here are their names, shared by the
builder (`keras_kd.cache.build`) and the readers (`TeacherCache`, `keras_kd.cache.datasets`),
and the three functions that map the student's inputs to stored arrays and back: `input_spec`
records the nesting of `x` (kept in the metadata's `inputs`), `leaves` flattens a batch of `x`
into `(key, array)` following it, and `restore` rebuilds `x` from the arrays read back.

>>> import numpy as np
>>> x = {"image": np.zeros((2, 3)), "extra": [np.ones((2,)), np.ones((2, 1))]}
>>> spec = input_spec(x)
>>> [key for key, _ in leaves(spec, x)]
['x/image', 'x/extra/0', 'x/extra/1']
>>> back = restore(spec, dict(leaves(spec, x)))
>>> sorted(back), type(back["extra"]).__name__
(['extra', 'image'], 'list')
"""

KIND = "keras_kd.TeacherCache"
DTYPES = ("float16", "float32")
LOGITS = "teacher/logits"
TOP_K_VALUES = "teacher/top_k/values"
TOP_K_INDICES = "teacher/top_k/indices"
TOP_K_TAIL = "teacher/top_k/tail_logsumexp"
FINGERPRINT = "fingerprint"


def feature_key(pair_index, layer_index):
    """The key of the stored output of teacher layer `layer_index` of pair `pair_index`."""
    return f"teacher/feature/{pair_index}/{layer_index}"


def input_spec(x, key="x"):
    """The nesting of `x` as JSON, with each leaf replaced by the key it is stored under."""
    if isinstance(x, dict):
        for name in x:
            if not isinstance(name, str):
                raise TypeError(f"Input dicts need str keys to be cached; got the key {name!r}.")
        return {"dict": {name: input_spec(value, f"{key}/{name}") for name, value in x.items()}}
    if isinstance(x, (list, tuple)):
        kind = "list" if isinstance(x, list) else "tuple"
        return {kind: [input_spec(value, f"{key}/{i}") for i, value in enumerate(x)]}
    return key


def leaves(spec, x):
    """`[(key, leaf)]` of `x` following `spec`."""
    if isinstance(spec, str):
        return [(spec, x)]
    if "dict" in spec:
        return [item for name, sub in spec["dict"].items() for item in leaves(sub, x[name])]
    kind = "list" if "list" in spec else "tuple"
    return [item for i, sub in enumerate(spec[kind]) for item in leaves(sub, x[i])]


def restore(spec, arrays):
    """`x` with the nesting `spec`, its leaves taken from `arrays` (`{key: array}`)."""
    if isinstance(spec, str):
        return arrays[spec]
    if "dict" in spec:
        return {name: restore(sub, arrays) for name, sub in spec["dict"].items()}
    if "list" in spec:
        return [restore(sub, arrays) for sub in spec["list"]]
    return tuple(restore(sub, arrays) for sub in spec["tuple"])
