"""Teacher sources: where a distiller's soft targets come from.

A `Distiller` holds one source and never asks which kind it is. Each source knows

- `models`: the frozen Keras models it runs (none for a cache), for variable bookkeeping;
- `check_student(student, logits=True)`: its static compatibility checks, at construction (`logits=False`:
  feature-only distillation, where the models' outputs are not compared as logits);
- `bind_pairs(pairs, student)`: the layer pairs bound to its layers (or its stored features);
- `check_soft_loss(soft_term)`: whether the chosen soft loss can use what it provides;
- `check_first_batch(x)`: the once-per-`fit` check that its outputs on the first batch are finite; returns
  them, `[(who, logits)]`, for the distiller's other checks of that batch (labels, the teacher's accuracy);
- `forward(x, pairs)`: `(logits, features)` for one batch, outside the gradient computation;
- `targets(logits, temperature)`: the logits the soft loss compares with the student's (a several-teacher
  source mixes its teachers' tempered probabilities here);
- `config()`: what `Distiller.get_config` saves as `teacher`.

Adding a kind of teacher (one served by another process, on-policy generation) is one more class
here and one line in `teacher_source`.
"""

import keras
from keras import ops

from keras_kd import validation
from keras_kd.data import text
from keras_kd.data.batch_keys import cached_teacher_outputs, is_cached, teacher_view
from keras_kd.features.binding import BoundPairs
from keras_kd.heads import SplitModel
from keras_kd.losses._common import weighted_mean
from keras_kd.losses.logits import mixture_logits
from keras_kd.losses.top_k import top_k_soft_target_kl
from keras_kd.token_logits import TokenLogits

FIRST_BATCH = "the first batch of training"


class TeacherSource:
    """The interface every kind of teacher implements (see the module docstring)."""

    models = ()
    num_teachers = 1
    weights = None  # normalized mixture weights with several teachers

    def check_student(self, student, logits=True):
        """Static checks of `student` against this teacher, at construction (of their logits when `logits`)."""

    def bind_pairs(self, pairs, student):
        return BoundPairs(pairs, None, student)

    def check_soft_loss(self, soft_term):
        """Raises when `soft_term` (a resolved soft loss) needs what this source cannot give; may replace it."""
        return soft_term

    def check_first_batch(self, x):
        """Raises when the teacher's outputs on the first batch of training are not finite; returns `[(who, logits)]`.

        `who` names each teacher in messages (`"The teacher 'big'"`); a source without models returns `[]`.
        """
        return []

    def forward(self, x, pairs):
        raise NotImplementedError

    def split_heads(self, chunk_size):
        """Splits the teacher models at their output heads, to compute their logits `chunk_size` positions at a time.

        Raises (naming the model) when a model's head cannot be found; a cache has nothing to split.
        """
        self.chunk_size = chunk_size

    def targets(self, logits, temperature):
        """The logits of the soft targets: with several teachers, their mixture at `temperature`."""
        if self.num_teachers == 1:
            return logits
        # (batch, teachers, ..., classes) -> logits of the weighted mixture of tempered probabilities.
        return mixture_logits(logits, temperature, self.weights, axis=1)

    def text_pipeline(self, student, preprocessor=None):
        return text.TextPipeline(list(self.models), student, preprocessor)

    def config(self):
        raise NotImplementedError


def stacked_logits(models, inputs, check_output=None):
    """Each of `models` run once on `inputs`, frozen; their logits stacked: `(batch, teachers, ..., classes)`.

    `check_output(value, model)`, when given, checks (and may convert) each model's output first.
    """
    logits = [model(inputs, training=False) for model in models]
    if check_output is not None:
        logits = [check_output(value, model) for value, model in zip(logits, models)]
    validation.check_teacher_output_shapes(models, [tuple(value.shape) for value in logits])
    return ops.stack([ops.cast(value, "float32") for value in logits], axis=1)


def serialize_model(model):
    """The model's config without its own compile state: the distiller's optimizer trains it."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def _refuse_cached_batch(x):
    if is_cached(x):
        raise ValueError(
            "This batch holds cached teacher outputs (from a TeacherCache), but this Distiller was built on a "
            "teacher model. Build it on the cache, keras_kd.Distiller(cache, student), to train from them."
        )


class ModelTeacher(TeacherSource):
    """One frozen Keras model, run once per step; its paired layers are captured during that run."""

    def __init__(self, model, listed=False, weights=None):
        validation.check_model("teacher", model)
        validation.check_teacher_built(model)
        self.model = model
        self.models = (model,)
        self.listed = listed  # given as a one-element list: saved as one
        self.weights = weights

    def check_student(self, student, logits=True):
        validation.check_separate_models(self.model, student)
        if logits:
            text.check_shared_vocabulary(self.model, student)
            validation.check_model_pair(self.model, student)
        validation.warn_if_student_is_larger([self.model], student)

    def bind_pairs(self, pairs, student):
        return BoundPairs(pairs, self.model, student)

    def check_first_batch(self, x):
        if is_cached(x):
            return []  # refused with its own message by the step
        inputs = teacher_view(x)
        who = f"The teacher {self.model.name!r}"

        def check(outputs):
            validation.check_finite_teacher_outputs(who, outputs, inputs, FIRST_BATCH)

        if self.split is not None:
            return [(who, self.split.checked_outputs(inputs, self.chunk_size, check))]
        outputs = self.model(inputs, training=False)
        check(outputs)
        return [(who, outputs)]

    split = None  # a `SplitModel` when the distiller chunks

    def split_heads(self, chunk_size):
        super().split_heads(chunk_size)
        self.split = SplitModel(self.model, "teacher")

    def forward(self, x, pairs):
        _refuse_cached_batch(x)
        with pairs.capture("teacher") as captured:
            if self.split is None:
                logits = self.model(teacher_view(x), training=False)
            else:
                logits = self.split.forward(teacher_view(x), False, self.chunk_size)
        return logits, pairs.features(captured, "teacher", logits)

    def config(self):
        return [serialize_model(self.model)] if self.listed else serialize_model(self.model)


class EnsembleTeacher(TeacherSource):
    """Several frozen models, each run once per step; the soft targets mix their tempered probabilities."""

    def __init__(self, models, weights):
        self.models = tuple(validation.check_teacher_list(models))
        self.num_teachers = len(self.models)
        self.weights = validation.check_teacher_weights(weights, self.num_teachers)
        validation.check_teacher_output_shapes(self.models, [validation.known_output_shape(t) for t in self.models])

    def check_student(self, student, logits=True):
        for index, model in enumerate(self.models):
            validation.check_separate_models(model, student, role=f"teacher[{index}]")
        for model in self.models:
            text.check_shared_vocabulary(model, student)
            validation.check_model_pair(model, student)
        validation.warn_if_student_is_larger(self.models, student)

    def bind_pairs(self, pairs, student):
        if isinstance(pairs, (list, tuple)) and pairs:
            raise ValueError(
                f"Layer pairs ({', '.join(type(p).__name__ for p in pairs)}) compare one teacher's layers with the "
                f"student's, but this distiller has {self.num_teachers} teachers. Distil the features from one "
                "teacher in a separate Distiller (e.g. Distiller(teacher_1, student, pairs=[...]) first, then "
                "Distiller([teacher_1, teacher_2], student)), or drop the pairs."
            )
        return super().bind_pairs(pairs, student)

    def check_first_batch(self, x):
        if is_cached(x):
            return []
        inputs = teacher_view(x)
        outputs = []
        for index, model in enumerate(self.models):
            label = f"teacher[{index}] {model.name!r}"

            def check(logits, label=label):
                validation.check_finite_teacher_outputs(label, logits, inputs, FIRST_BATCH)

            if self.splits is not None:
                outputs.append((label, self.splits[index].checked_outputs(inputs, self.chunk_size, check)))
                continue
            logits = model(inputs, training=False)
            check(logits)
            outputs.append((label, logits))
        return outputs

    splits = None  # one `SplitModel` per teacher when the distiller chunks

    def split_heads(self, chunk_size):
        super().split_heads(chunk_size)
        self.splits = [SplitModel(model, f"teacher[{index}]") for index, model in enumerate(self.models)]

    def forward(self, x, pairs):
        _refuse_cached_batch(x)
        if self.splits is None:
            # Stacked on axis 1 and mixed by `targets`, with the step's temperature.
            return stacked_logits(self.models, teacher_view(x)), []
        hidden = tuple(split.body(teacher_view(x), training=False) for split in self.splits)
        chunk = self.splits[0].chunk_positions(hidden[0], self.chunk_size)
        logits = TokenLogits(hidden, self._stacked_heads, chunk)
        return (logits.dense() if chunk is None else logits), []

    def _stacked_heads(self, hidden):
        logits = [ops.cast(split.head(h, training=False), "float32") for split, h in zip(self.splits, hidden)]
        return ops.stack(logits, axis=1)

    def config(self):
        return [serialize_model(model) for model in self.models]


class CachedTeacher(TeacherSource):
    """A `keras_kd.TeacherCache`: the teacher's outputs (and paired layers' outputs) read from each batch."""

    def __init__(self, cache, weights):
        self.cache = cache
        self.num_teachers = cache.num_teachers
        self.weights = validation.check_teacher_weights(weights, self.num_teachers, single_model=self.num_teachers == 1)

    def check_student(self, student, logits=True):
        validation.check_model("student", student)
        if not logits:
            return  # the stored logits are not compared: the stored features are
        validation.check_outputs_logits("student", student)
        outputs = getattr(student, "outputs", None)
        if not outputs:
            return
        if len(outputs) != 1:
            raise ValueError(
                f"{student.name!r} has {len(outputs)} outputs; a Distiller needs one output tensor of logits."
            )
        student_shape = tuple(outputs[0].shape)
        if not validation.shapes_match(student_shape, (None, *self.cache.logits_shape)):
            raise ValueError(
                f"The teacher cache in {self.cache.directory} holds logits of shape {(None, *self.cache.logits_shape)} "
                f"per batch, but the student outputs shape {student_shape}. Give the student the teacher's number of "
                "classes (last axis) and sequence length, or build a cache of the matching teacher."
            )

    def bind_pairs(self, pairs, student):
        return BoundPairs(pairs, None, student, teacher_cache=self.cache)

    def check_soft_loss(self, soft_term):
        cache = self.cache
        if soft_term.needs_labels and not cache.has_labels:
            raise ValueError(
                f"soft_loss {soft_term.describe()} needs the labels of every batch, but the teacher cache in "
                f"{cache.directory} holds none. Build the cache from (x, y) data, or use another soft_loss "
                "('kl', 'reverse_kl', GeneralizedJSD) for unlabelled data."
            )
        if cache.top_k is None:
            return soft_term
        if soft_term.spec != "kl":
            raise ValueError(
                f"The teacher cache in {cache.directory} holds the teacher's top {cache.top_k} logits per position, "
                "which only the forward KL uses (keras_kd.losses.top_k_soft_target_loss); "
                f"soft_loss={soft_term.spec!r} needs the dense logits. Use soft_loss='kl', or build the cache with "
                "top_k=None."
            )
        return soft_term.replaced(
            lambda teacher_top_k, student_logits, temperature, weight, labels=None: weighted_mean(
                top_k_soft_target_kl(teacher_top_k, student_logits, temperature), weight
            ),
            per_position=lambda teacher_top_k, student_logits, temperature, labels=None: top_k_soft_target_kl(
                teacher_top_k, student_logits, temperature
            ),
        )

    def check_first_batch(self, x):
        if not is_cached(x):
            return []  # refused with its own message by the step
        validation.check_finite_teacher_outputs(
            f"The teacher cache in {self.cache.directory}",
            cached_teacher_outputs(x),
            None,
            FIRST_BATCH,
            fix="Rebuild it with TeacherCache.build(..., dtype='float32') from a teacher with finite outputs "
            "(float16 stores values beyond 65504 as Inf).",
        )
        return []  # stored outputs, no model: labels and accuracy are checked for model teachers only

    def forward(self, x, pairs):
        if not is_cached(x):
            raise ValueError(
                f"This Distiller reads the teacher's outputs from the cache in {self.cache.directory}, but the batch "
                "holds plain inputs. Fit on cache.dataset(batch_size) (or cache.attach(inputs) to feed your own copy "
                "of the cached inputs); call and predict take plain inputs."
            )
        logits, features = cached_teacher_outputs(x)
        return logits, pairs.stored_features(features)

    def text_pipeline(self, student, preprocessor=None):
        return text.TextPipeline([self.cache], student, preprocessor)

    def config(self):
        return keras.saving.serialize_keras_object(self.cache)


def teacher_source(teacher, teacher_weights=None):
    """The source for `Distiller`'s `teacher` argument: a model, a list of models, or a `TeacherCache`."""
    from keras_kd.cache.teacher_cache import TeacherCache

    if isinstance(teacher, TeacherCache):
        return CachedTeacher(teacher, teacher_weights)
    if not isinstance(teacher, (list, tuple)):
        validation.check_model("teacher", teacher)
        validation.check_teacher_built(teacher)
        validation.check_teacher_weights(teacher_weights, 1, single_model=True)
        return ModelTeacher(teacher)
    if len(teacher) == 1:  # a one-element list is a single teacher
        models = validation.check_teacher_list(teacher)
        return ModelTeacher(models[0], listed=True, weights=validation.check_teacher_weights(teacher_weights, 1))
    return EnsembleTeacher(teacher, teacher_weights)


def deserialize_teacher(config):
    if isinstance(config, (list, tuple)):
        return [keras.saving.deserialize_keras_object(model) for model in config]
    return keras.saving.deserialize_keras_object(config)
