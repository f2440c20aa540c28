"""Progressive distillation through teacher assistants (Mirzadeh et al. 2020).

When the student is much smaller than the teacher, distilling it directly can do worse than
training it alone: the student cannot follow the teacher. "Improved Knowledge Distillation via
Teacher Assistant" (Mirzadeh et al., AAAI 2020) puts models of intermediate size between them
and distils step by step: the teacher into the first assistant, that assistant (now frozen) into
the next, and so on down to the student. `progressive` runs that chain with one
`keras_kd.Distiller` per stage.
"""

import contextlib
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from keras_kd import validation as checks
from keras_kd.cache.fingerprints import teacher_fingerprint
from keras_kd.cache.teacher_cache import TeacherCache
from keras_kd.data.arrays import batch_size_of, dataset_batches, is_in_memory, unpack_batch
from keras_kd.distiller import Distiller
from keras_kd.features.pairs import LayerPair

DEFAULT_COMPILE = {"optimizer": "adam", "metrics": ["accuracy"]}


def progressive(
    teacher,
    students,
    data,
    epochs_per_stage,
    validation_data=None,
    cache=False,
    compile=None,
    batch_size=None,
    shuffle=True,
    callbacks=None,
    verbose=1,
    **distiller_kwargs,
):
    """Distils `teacher` into `students[0]`, that into `students[1]`, ..., down to `students[-1]`.

    `students` is the chain `[assistant_1, ..., assistant_k, student]`, largest first; with one
    model it is plain distillation. Stage `i` (counted from 1) trains `students[i - 1]` with a
    `keras_kd.Distiller` whose teacher is the model trained by the stage before (the `teacher`
    for stage 1), frozen. Every stage fits on the same `data` and compiles its own, fresh
    optimizer. The models are trained in place and returned in a list; their `trainable` flags
    are as they were before the call.

    Args:
        teacher: a built, trained `keras.Model` returning logits.
        students: a non-empty list of `keras.Model`, the assistants then the student, each
            returning logits of the teacher's shape.
        data: what `Distiller.fit` takes: in-memory NumPy arrays `x`, `(x, y)` or
            `(x, y, sample_weight)` (batched by `batch_size`, shuffled when `shuffle`), a batched
            `tf.data.Dataset` or a `keras.utils.PyDataset`. Batches without labels train on the
            soft term alone.
        epochs_per_stage: an int >= 1 for every stage, or a list with one int per stage.
        validation_data: optional `(x, y)` arrays or a dataset, evaluated after every epoch of
            every stage (`Distiller.fit`'s `validation_data`).
        cache: `False` runs each stage's teacher online, in every training step. `True` runs it
            once per stage: the stage builds a `keras_kd.TeacherCache` of its teacher over
            `data` (and over `validation_data`) in a temporary directory, trains from it and
            deletes it. A directory path keeps the caches in
            `<directory>/stage-<i>-<teacher fingerprint>/` (`train/`, `validation/`), so a
            rerun with the same data reuses every stage whose teacher is unchanged, typically
            stage 1, the expensive one. Cached training sees the inputs of one pass over `data`:
            arrays, or a dataset without random augmentation. Outputs are stored as float16,
            which changes results within float16 rounding.
        compile: keyword arguments of every stage's `Distiller.compile` (default
            `{"optimizer": "adam", "metrics": ["accuracy"]}`, without the metric when `data`
            has no labels), or a list with one dict per stage. An optimizer or metric object is
            cloned (`from_config(get_config())`) for each stage, so no state is shared; `loss`
            is the hard-label loss.
        batch_size: batch size for in-memory `data` (default 32), and of the cached training
            batches when `cache` is set (default: the size of `data`'s first batch).
        shuffle: shuffle in-memory `data` (and cached examples) every epoch.
        callbacks: Keras callbacks passed to every stage's `fit`, such as
            `keras_kd.callbacks.TemperatureScheduler`.
        verbose: 0 silent, 1 a header per stage and Keras's progress bar, 2 one line per epoch.
        **distiller_kwargs: arguments of every stage's `keras_kd.Distiller`: `temperature`,
            `alpha`, `soft_loss`, ... Layer `pairs` name layers of particular models, so
            `pairs` must hold one list per stage, `pairs=[[...stage 1...], [...stage 2...]]`
            (`[]` for a stage without pairs).

    Returns:
        `(models, report)`: `models` the list of trained `students`; `report` a `StageReport`,
        a list with one dict per stage: `stage` (from 1), `teacher` and `student` (model
        names), `epochs`, `loss` (the last epoch's training loss), `seconds` (the stage's
        wall time, cache builds included), and, with `validation_data`, the last epoch's
        validation logs (`val_loss`, `val_soft_loss`, `val_hard_loss`, `val_accuracy`, ...).
        `print(report)` shows a table.

    Raises:
        ValueError, TypeError: bad `students`, `epochs_per_stage`, `compile`, `pairs` or
            `cache`, before any training; errors of a stage's `Distiller` (for instance a
            student whose output shape is not its teacher's) name the stage.

    Example:

    >>> import numpy as np, keras, keras_kd
    >>> def mlp(hidden, name):
    ...     return keras.Sequential([keras.Input((8,)), keras.layers.Dense(hidden, activation="relu"),
    ...                              keras.layers.Dense(3)], name=name)
    >>> x, y = np.random.rand(64, 8).astype("float32"), np.random.randint(0, 3, 64)
    >>> teacher = mlp(64, "teacher")
    >>> models, report = keras_kd.recipes.progressive(
    ...     teacher, [mlp(16, "assistant"), mlp(4, "student")], (x, y), epochs_per_stage=[2, 1],
    ...     validation_data=(x, y), temperature=4.0, alpha=0.1, verbose=0)
    >>> [(row["stage"], row["teacher"], row["student"], row["epochs"]) for row in report]
    [(1, 'teacher', 'assistant', 2), (2, 'assistant', 'student', 1)]
    >>> print(report)  # doctest: +SKIP
    stage  teacher -> student     epochs    loss  val_loss  val_accuracy  seconds
    1      teacher -> assistant        2  0.9787    0.9532        0.3594      0.6
    2      assistant -> student        1  0.6313    0.6217        0.3281      0.2
    """
    if distiller_kwargs.get("on_policy") is not None:
        raise ValueError(
            "progressive does not take on_policy: its stages distil on fixed data with validation after each. Run "
            "progressive off-policy, then keras_kd.Distiller(teacher, student, on_policy=...).fit(prompts)."
        )
    students = _check_students(teacher, students)
    count = len(students)
    epochs = _check_epochs(epochs_per_stage, count)
    compile_kwargs = _check_compile(compile, count, _has_labels(data))
    stage_pairs = _check_pairs(distiller_kwargs.pop("pairs", ()), count)
    cache_root = _check_cache(cache)
    in_memory = is_in_memory(data)
    if batch_size is not None and not in_memory and cache_root is None:
        raise ValueError(
            f"batch_size={batch_size!r} is for in-memory arrays; data is a {type(data).__name__}, which is already "
            "batched. Batch the dataset itself (dataset.batch(n)), or leave batch_size=None."
        )

    chain = [teacher, *students]
    trainable = [model.trainable for model in chain]
    report = StageReport()
    try:
        for index, student in enumerate(students):
            stage, stage_teacher = index + 1, chain[index]
            start = time.perf_counter()
            if verbose:
                how = "" if cache_root is None else ", teacher outputs cached"
                plural = "s" if epochs[index] > 1 else ""
                print(
                    f"Stage {stage}/{count}: {stage_teacher.name} -> {student.name}, {epochs[index]} epoch{plural}{how}"
                )
            with _stage_errors(stage, count, stage_teacher, student), _stage_directory(cache_root, stage) as root:
                if root is None:
                    distiller = Distiller(stage_teacher, student, pairs=stage_pairs[index], **distiller_kwargs)
                    fit_args = _online_fit_args(data, validation_data, batch_size, shuffle, in_memory)
                else:
                    directory = os.path.join(root, f"stage-{stage}-{teacher_fingerprint(stage_teacher)[:12]}")
                    train_cache, fit_args = _cached_fit_args(
                        stage_teacher,
                        data,
                        validation_data,
                        stage_pairs[index],
                        directory,
                        batch_size,
                        shuffle,
                        in_memory,
                        verbose,
                    )
                    distiller = Distiller(train_cache, student, pairs=stage_pairs[index], **distiller_kwargs)
                distiller.compile(**_fresh(compile_kwargs[index]))
                history = distiller.fit(epochs=epochs[index], callbacks=callbacks, verbose=verbose, **fit_args)
            report.append(_stage_entry(stage, stage_teacher, student, epochs[index], history, start))
    finally:
        for model, flag in zip(chain, trainable):
            model.trainable = flag
    return list(students), report


class StageReport(list):
    """The per-stage results of `progressive`: a list of dicts, printed as a table.

    Each row has `stage`, `teacher`, `student`, `epochs`, `loss` and `seconds`, and the last
    epoch's validation logs when `progressive` had `validation_data`; `str(report)` lays them out
    with one line per stage.

    Example:

    >>> from keras_kd.recipes import StageReport
    >>> report = StageReport([
    ...     {"stage": 1, "teacher": "teacher", "student": "assistant", "epochs": 5, "loss": 0.91, "seconds": 12.0},
    ...     {"stage": 2, "teacher": "assistant", "student": "student", "epochs": 5, "loss": 0.62, "seconds": 4.5},
    ... ])
    >>> print(report)
    stage  teacher -> student    epochs    loss  seconds
    1      teacher -> assistant       5  0.9100     12.0
    2      assistant -> student       5  0.6200      4.5
    >>> [row["student"] for row in report]
    ['assistant', 'student']
    """

    def __str__(self):
        if not self:
            return "StageReport: no stages"
        optional = [key for key in ("val_loss", "val_accuracy") if any(key in row for row in self)]
        names = [f"{row['teacher']} -> {row['student']}" for row in self]
        width = max(len("teacher -> student"), *map(len, names)) + 2
        header = f"{'stage':<7}{'teacher -> student':<{width}}{'epochs':>6}{'loss':>8}"
        header += "".join(f"{key:>{len(key) + 2}}" for key in optional) + f"{'seconds':>9}"
        lines = [header]
        for row, name in zip(self, names):
            line = f"{row['stage']:<7}{name:<{width}}{row['epochs']:>6}{row['loss']:>8.4f}"
            for key in optional:
                value = row.get(key)
                line += f"{value:>{len(key) + 2}.4f}" if value is not None else " " * (len(key) + 2)
            lines.append(line + f"{row['seconds']:>9.1f}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- checks


def _check_students(teacher, students):
    checks.check_model("teacher", teacher)
    if isinstance(students, keras.Model) or not isinstance(students, (list, tuple)):
        hint = " For one student, pass [student]." if isinstance(students, keras.Model) else ""
        raise TypeError(
            "students must be a list of keras.Model, the assistants then the student (largest first), got "
            f"{type(students).__name__}.{hint}"
        )
    if not students:
        raise ValueError(
            "students is empty: give at least the student, [student] (direct distillation), or "
            "[assistant, ..., student] to distil through teacher assistants."
        )
    for i, model in enumerate(students):
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"students[{i}] must be a keras.Model, got {type(model).__name__}. Wrap layers in "
                "keras.Sequential([...]) or a functional keras.Model(inputs, outputs)."
            )
    chain = [teacher, *students]
    for i, model in enumerate(chain):
        for j in range(i):
            if chain[j] is model:
                first = "the teacher" if j == 0 else f"students[{j - 1}]"
                raise ValueError(
                    f"students[{i - 1}] is the same model as {first} ({model.name!r}); every stage needs its own "
                    "model. Build a new model (or keras.models.clone_model) for each place in the chain."
                )
    return list(students)


def _check_epochs(value, count):
    if checks.is_integer(value):
        values = [value] * count
    elif isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(
                f"epochs_per_stage has {len(value)} entries but there are {count} stages (one per model in "
                f"students); give one int per stage, or a single int for every stage."
            )
        values = list(value)
    else:
        raise TypeError(f"epochs_per_stage must be an int or a list of {count} ints, got {value!r}.")
    for i, epochs in enumerate(values):
        if not checks.is_integer(epochs) or epochs < 1:
            where = "epochs_per_stage" if checks.is_integer(value) else f"epochs_per_stage[{i}]"
            raise ValueError(f"{where} must be an int >= 1 (epochs of stage {i + 1}), got {epochs!r}.")
    return [int(epochs) for epochs in values]


def _has_labels(data):
    """Whether `data` carries labels, as far as can be told without reading it (else True)."""
    if is_in_memory(data):
        return unpack_batch(data, what="data")[1] is not None
    if isinstance(data, keras.utils.PyDataset) and len(data):
        batch = data[0]
        return isinstance(batch, tuple) and len(batch) > 1
    spec = getattr(data, "element_spec", None)
    return spec is None or (isinstance(spec, tuple) and len(spec) > 1)


def _check_compile(value, count, has_labels=True):
    if value is None:
        # Accuracy needs labels (and Keras 3.15 fails to build compiled metrics on a first batch without them).
        return [DEFAULT_COMPILE if has_labels else {"optimizer": "adam"}] * count
    if isinstance(value, dict):
        return [value] * count
    if isinstance(value, (list, tuple)) and all(isinstance(item, dict) for item in value):
        if len(value) != count:
            raise ValueError(
                f"compile has {len(value)} dicts but there are {count} stages; give one dict for every stage, or "
                "one dict per stage."
            )
        return list(value)
    raise TypeError(
        "compile must be a dict of Distiller.compile arguments, e.g. compile=dict(optimizer=keras.optimizers."
        f"Adam(1e-3), metrics=['accuracy']), or a list with one such dict per stage; got {value!r}."
    )


def _check_pairs(value, count):
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return [[] for _ in range(count)]
    if not isinstance(value, (list, tuple)) or any(isinstance(item, LayerPair) for item in value):
        raise ValueError(
            "pairs name layers of particular models, and progressive trains a different teacher and student in "
            f"each of its {count} stages: give one list of pairs per stage, pairs=[[...stage 1...], "
            "[...stage 2...], ...] ([] for a stage without pairs)."
        )
    if len(value) != count:
        raise ValueError(
            f"pairs has {len(value)} lists but there are {count} stages; give one list of pairs per stage "
            "([] for a stage without pairs)."
        )
    for i, stage_pairs in enumerate(value):
        if not isinstance(stage_pairs, (list, tuple)):
            raise TypeError(
                f"pairs[{i}] (the pairs of stage {i + 1}) must be a list of keras_kd.LayerPair, got {stage_pairs!r}."
            )
    return [list(stage_pairs) for stage_pairs in value]


def _check_cache(cache):
    if cache is None or cache is False:
        return None
    if cache is True:
        return True
    if isinstance(cache, (str, os.PathLike)):
        return os.fspath(cache)
    raise TypeError(
        f"cache must be False (online teacher), True (a temporary teacher cache per stage) or a directory path "
        f"(caches kept there), got {cache!r}."
    )


# ----------------------------------------------------------------------------- stages


@contextlib.contextmanager
def _stage_errors(stage, count, teacher, student):
    """Re-raises a stage's ValueError/TypeError with the stage number and models in front."""
    try:
        yield
    except (ValueError, TypeError) as error:
        kind = TypeError if isinstance(error, TypeError) else ValueError
        raise kind(f"Stage {stage} of {count} ({teacher.name!r} -> {student.name!r}): {error}") from error


@contextlib.contextmanager
def _stage_directory(cache_root, stage):
    """The root of a stage's caches: None (online), the user's directory, or a temporary one removed after."""
    if cache_root is not True:
        yield cache_root
        return
    root = tempfile.mkdtemp(prefix=f"keras_kd_progressive_stage{stage}_")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _online_fit_args(data, validation_data, batch_size, shuffle, in_memory):
    if not in_memory:
        return {"x": data, "validation_data": validation_data, "shuffle": shuffle}
    x, y, sample_weight = unpack_batch(data, what="data")
    return {
        "x": x,
        "y": y,
        "sample_weight": sample_weight,
        "batch_size": batch_size,
        "shuffle": shuffle,
        "validation_data": validation_data,
    }


def _cached_fit_args(teacher, data, validation_data, pairs, directory, batch_size, shuffle, in_memory, verbose):
    """Builds (or reopens) the stage's caches; returns the training cache and `fit`'s arguments."""
    build_batch = (batch_size or 32) if in_memory else None
    cache = TeacherCache.build(
        teacher, data, os.path.join(directory, "train"), pairs=pairs, batch_size=build_batch, verbose=verbose
    )
    batch = batch_size or build_batch or _first_batch_size(data)
    # Drawn from NumPy's global generator, so keras.utils.set_random_seed fixes the order.
    seed = int(np.random.randint(2**31 - 1))
    fit_args = {"x": cache.dataset(batch, shuffle=shuffle, seed=seed), "shuffle": False}
    if validation_data is not None:
        val_in_memory = is_in_memory(validation_data)
        val_cache = TeacherCache.build(
            teacher,
            validation_data,
            os.path.join(directory, "validation"),
            pairs=pairs,
            batch_size=(batch_size or 32) if val_in_memory else None,
            verbose=verbose,
        )
        val_batch = (batch_size or 32) if val_in_memory else _first_batch_size(validation_data)
        fit_args["validation_data"] = val_cache.dataset(val_batch, shuffle=False)
    return cache, fit_args


def _first_batch_size(data):
    batch = next(dataset_batches(data, "data", "in-memory arrays"))
    return batch_size_of(batch[0] if isinstance(batch, tuple) else batch)


def _fresh(compile_kwargs):
    """The compile arguments with optimizer and metric objects cloned, so that stages share no state."""
    kwargs = dict(compile_kwargs)
    optimizer = kwargs.get("optimizer")
    if isinstance(optimizer, keras.optimizers.Optimizer):
        kwargs["optimizer"] = optimizer.__class__.from_config(optimizer.get_config())
    for key in ("metrics", "weighted_metrics"):
        if kwargs.get(key) is not None:
            kwargs[key] = keras.tree.map_structure(_clone_metric, kwargs[key])
    return kwargs


def _clone_metric(metric):
    if isinstance(metric, keras.metrics.Metric):
        return metric.__class__.from_config(metric.get_config())
    return metric


def _stage_entry(stage, teacher, student, epochs, history, start):
    logs = {key: values[-1] for key, values in history.history.items() if values}
    entry = {
        "stage": stage,
        "teacher": teacher.name,
        "student": student.name,
        "epochs": epochs,
        "loss": float(logs["loss"]),
    }
    entry.update({key: float(value) for key, value in logs.items() if key.startswith("val_")})
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry
