"""The `Distiller` model: configuration, the distillation objective, and serialization.

The train/test step bodies live in `keras_kd/trainers/`, one file per backend;
everything here is backend-agnostic.
"""

import keras
from keras import ops

from keras_kd import checks, text_pipeline
from keras_kd.cache.teacher_cache import TeacherCache
from keras_kd.losses._reduction import weighted_mean
from keras_kd.losses.top_k import top_k_soft_target_kl
from keras_kd.model_inputs import cached_teacher_outputs, is_cached, student_padding_mask, student_view, teacher_view
from keras_kd.pair_bindings import BoundPairs
from keras_kd.pairs import Hint
from keras_kd.soft_loss import deserialize as deserialize_soft_loss
from keras_kd.soft_loss import resolve as resolve_soft_loss
from keras_kd.soft_loss import serialize as serialize_soft_loss
from keras_kd.taps import capture
from keras_kd.trainers import DistillationSteps


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(DistillationSteps, keras.Model):
    """Trains `student` to match `teacher` (Hinton, Vinyals & Dean 2015).

    The loss of a labelled batch is

        L = alpha * L_hard(y, s) + (1 - alpha) * T**2 * KL(softmax(t / T) || softmax(s / T))

    where `t` and `s` are the teacher's and the student's logits and `L_hard`
    is the loss given to `compile()` (default: sparse categorical cross-entropy
    from logits for integer labels, categorical for one-hot labels). A batch
    without labels (`fit(x)` or a dataset yielding only inputs) trains on the
    soft term alone, `T**2 * KL(...)`, with weight 1. `sample_weight` (and
    `class_weight`) weights both terms; the soft term is averaged over
    examples and, for `(batch, ..., classes)` outputs, over positions.
    Regularization losses of the student are added.

    Each of `pairs` (`keras_kd.Hint`, `AttentionTransfer`, `Relational`,
    `CosineEmbedding`, or a `keras_kd.LayerPair` with a loss of your own) adds
    one term computed between a teacher layer's and a student layer's outputs.
    Layers are named by path (`"block3"`, `"inner_model/dense_2"`,
    `"backbone/transformer_layer_3"` in a KerasHub task) and their outputs are
    captured during the models' own forward passes: each step still runs the
    teacher once and the student once. Regressors (a `Hint` between layers of
    different widths) are built here, train with the student, and stay out of
    `distiller.student`.

    KerasHub `TextClassifier` and `CausalLM` tasks can be teacher and student, and
    `fit`, `evaluate` and `predict` accept raw strings: the models' preprocessors
    tokenize them in the data pipeline (see `keras_kd.text_pipeline`). When the two
    models read different inputs of the same examples, pass
    `keras_kd.paired_inputs(teacher_x, student_x)` as `x`.

    The teacher is frozen: it runs with `training=False`, outside the gradient
    computation, and its weights never change. `call`, `predict` and
    `evaluate`'s metrics use the student. `fit` and `evaluate` log `loss`,
    `hard_loss` (labelled batches only), `soft_loss` (the `T**2 * KL` value
    before weighting), one entry per pair (`hint_loss`, `attention_loss`,
    `relational_loss`, `cosine_loss`: the term's contribution to `loss`) and the
    compiled metrics on the student's outputs.

    `temperature` and `alpha` are variables: set them between epochs
    (`distiller.temperature = 2.0`, or `keras_kd.callbacks.TemperatureScheduler`)
    and compiled steps see the new value without recompiling.

    Offline distillation: with a `keras_kd.TeacherCache` as `teacher`, the teacher's logits
    (and its paired layers' outputs) come from the cache and no step runs the teacher. Fit on
    `cache.dataset(...)` (or `cache.attach(...)`); its batches carry the stored outputs next to
    the student's inputs. The cache must hold logits of the student's output shape and, for
    every pair, its teacher layer (`TeacherCache.build(..., pairs=...)`).

    Args:
        teacher: a built `keras.Model` that returns logits, or a `keras_kd.TeacherCache`.
        student: a `keras.Model` that returns logits of the teacher's shape.
        temperature: `T > 0` that softens both distributions.
        alpha: weight of the hard-label loss in `[0, 1]`.
        pairs: layer pairs, each adding a feature term (see `keras_kd.pairs`).
        soft_loss: the soft term between the tempered distributions: `"kl"`
            (`T**2 * KL(p_t || p_s)`, Hinton et al.), `"reverse_kl"`
            (`T**2 * KL(p_s || p_t)`), a loss object from `keras_kd.losses` such as
            `GeneralizedJSD(beta=0.5)` (its temperature must equal the distiller's,
            which is the one used), or a callable
            `(teacher_logits, student_logits, temperature, sample_weight) -> scalar`.
        name: name of the model.

    Example:

    >>> import numpy as np, keras, keras_kd
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> distiller = keras_kd.Distiller(teacher, student, temperature=4.0, alpha=0.1)
    >>> x, y = np.random.rand(32, 4), np.random.randint(0, 3, 32)
    >>> history = distiller.compile(optimizer="adam", metrics=["accuracy"]).fit(
    ...     x, y, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'hard_loss', 'loss', 'soft_loss']
    """

    def __init__(
        self, teacher, student, temperature=4.0, alpha=0.1, pairs=(), soft_loss="kl", name="distiller", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self._teacher_cache = teacher if isinstance(teacher, TeacherCache) else None
        if self._teacher_cache is not None:
            checks.check_model("student", student)
            _check_cache_student(teacher, student)
        else:
            checks.check_model("teacher", teacher)
            checks.check_model("student", student)
            checks.check_teacher_built(teacher)
            text_pipeline.check_shared_vocabulary(teacher, student)
            checks.check_model_pair(teacher, student)
        temperature = checks.check_temperature(temperature)
        alpha = checks.check_alpha(alpha)

        if self._teacher_cache is None:
            teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self._temperature = self._scalar_variable("temperature", temperature)
        self._alpha = self._scalar_variable("alpha", alpha)
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.soft_loss_tracker = keras.metrics.Mean(name="soft_loss")
        self._bind_pairs(pairs)
        self.soft_loss = soft_loss
        self._soft_term = resolve_soft_loss(soft_loss, temperature)
        if self._teacher_cache is not None and self._teacher_cache.top_k is not None:
            self._soft_term = _top_k_soft_term(self._teacher_cache, soft_loss)
        self._text_pipeline = text_pipeline.TextPipeline(teacher, student)
        if student.built:
            # Built parts make a built distiller: BackupAndRestore and JAX's
            # stateless step need every variable before the first batch.
            self.built = True

    def _bind_pairs(self, pairs):
        if not isinstance(pairs, (list, tuple)):
            raise TypeError(f"pairs must be a list of keras_kd.LayerPair objects, got {type(pairs).__name__}.")
        self._bound_pairs = BoundPairs(list(pairs), self.teacher, self.student, teacher_cache=self._teacher_cache)
        self.pairs = self._bound_pairs.pairs
        self.pair_loss_trackers = [keras.metrics.Mean(name=name) for name in self._bound_pairs.log_names]
        self._hint_warmup = None
        self._warmup_variable_ids = None
        if self._bound_pairs.hints():
            self._hint_warmup = self._scalar_variable("hint_warmup", 0.0)

    @property
    def pair_log_names(self):
        """The log entry of each pair's term, in the order of `pairs`."""
        return list(self._bound_pairs.log_names)

    def _scalar_variable(self, name, value):
        return self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(value),
            dtype="float32",
            trainable=False,
            autocast=False,
            name=name,
        )

    @property
    def temperature(self):
        """The current temperature `T` (a float); assign to change it."""
        return float(ops.convert_to_numpy(self._temperature))

    @temperature.setter
    def temperature(self, value):
        self._temperature.assign(checks.check_temperature(value))

    @property
    def alpha(self):
        """The current hard-loss weight `alpha` (a float); assign to change it."""
        return float(ops.convert_to_numpy(self._alpha))

    @alpha.setter
    def alpha(self, value):
        self._alpha.assign(checks.check_alpha(value))

    def call(self, inputs, training=None):
        return self.student(student_view(inputs), training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile`, returning the distiller so that `.fit` chains.

        `loss` is the hard-label loss; leave it `None` for cross-entropy from
        logits (sparse or one-hot, read off the labels' shape).
        """
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        return self

    # Raw strings for KerasHub tasks: the preprocessors run in the data pipeline.

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        sample_weight=None,
        validation_data=None,
        validation_split=0.0,
        validation_batch_size=None,
        shuffle=True,
        **kwargs,
    ):
        """`keras.Model.fit`; raw strings are tokenized by the KerasHub models' preprocessors.

        See `keras_kd.text_pipeline` for which preprocessor feeds which model.
        """
        pipeline = self._text_pipeline
        if text_pipeline.holds_strings(x):
            if validation_split and validation_data is None:
                (x, y, sample_weight), validation_data = pipeline.split(x, y, sample_weight, validation_split)
                validation_split = 0.0
            x = pipeline.dataset(x, y, sample_weight, batch_size, shuffle=shuffle)
            y = sample_weight = None
            shuffle = False  # done above, per example; Keras would warn that a dataset is not shuffled
            validation_batch_size = validation_batch_size or batch_size
            batch_size = None
        if text_pipeline.holds_strings(validation_data):
            if text_pipeline.is_dataset(validation_data):
                validation_data = pipeline.dataset(validation_data)
            else:
                vx, vy, vsw = keras.utils.unpack_x_y_sample_weight(tuple(validation_data))
                validation_data = pipeline.dataset(vx, vy, vsw, validation_batch_size or batch_size)
            validation_batch_size = None
        return super().fit(
            x=x,
            y=y,
            batch_size=batch_size,
            sample_weight=sample_weight,
            validation_data=validation_data,
            validation_split=validation_split,
            validation_batch_size=validation_batch_size,
            shuffle=shuffle,
            **kwargs,
        )

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """`keras.Model.evaluate`; raw strings are tokenized as in `fit`."""
        if text_pipeline.holds_strings(x):
            x = self._text_pipeline.dataset(x, y, sample_weight, batch_size)
            y = sample_weight = batch_size = None
        return super().evaluate(x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """The student's `predict`; raw strings are tokenized by the student's preprocessor."""
        if text_pipeline.holds_strings(x):
            x = self._text_pipeline.input_dataset(x, batch_size)
            batch_size = None
        return super().predict(x, batch_size=batch_size, **kwargs)

    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        """`keras.Model.train_on_batch`; raw strings are tokenized as in `fit`."""
        if text_pipeline.holds_strings(x):
            x, y, sample_weight = self._text_pipeline.preprocess_batch(x, y, sample_weight)
        return super().train_on_batch(x, y=y, sample_weight=sample_weight, **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        """`keras.Model.test_on_batch`; raw strings are tokenized as in `fit`."""
        if text_pipeline.holds_strings(x):
            x, y, sample_weight = self._text_pipeline.preprocess_batch(x, y, sample_weight)
        return super().test_on_batch(x, y=y, sample_weight=sample_weight, **kwargs)

    def predict_on_batch(self, x):
        """The student's `predict_on_batch`; raw strings are tokenized by the student's preprocessor."""
        if text_pipeline.holds_strings(x):
            self._text_pipeline.check_can_read_strings()
            x = self._text_pipeline.preprocess_inputs(x)
        return super().predict_on_batch(x)

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # The forward passes and the objective, shared by every backend's step.

    def teacher_forward(self, x):
        """The teacher's logits and, per pair, its paired layers' outputs: one forward pass.

        With a teacher cache, both come from the cached batch and the teacher does not run.
        """
        if self._teacher_cache is not None or is_cached(x):
            return self._cached_teacher_forward(x)
        with capture() as captured:
            logits = self.teacher(teacher_view(x), training=False)
        return logits, self._bound_pairs.features(captured, "teacher")

    def _cached_teacher_forward(self, x):
        if self._teacher_cache is None:
            raise ValueError(
                "This batch holds cached teacher outputs (from a TeacherCache), but this Distiller was built on a "
                "teacher model. Build it on the cache, keras_kd.Distiller(cache, student), to train from them."
            )
        if not is_cached(x):
            raise ValueError(
                f"This Distiller reads the teacher's outputs from the cache in {self._teacher_cache.directory}, but "
                "the batch holds plain inputs. Fit on cache.dataset(batch_size) (or cache.attach(inputs) to feed "
                "your own copy of the cached inputs); call and predict take plain inputs."
            )
        logits, features = cached_teacher_outputs(x)
        return logits, self._bound_pairs.stored_features(features)

    def student_forward(self, x, training):
        """The student's logits and, per pair, its paired layers' outputs: one forward pass."""
        with capture() as captured:
            logits = self.student(student_view(x), training=training)
        return logits, self._bound_pairs.features(captured, "student")

    def compute_distillation_loss(
        self,
        y,
        student_logits,
        teacher_logits,
        sample_weight=None,
        teacher_features=(),
        student_features=(),
        inputs=None,
    ):
        """Returns `(loss, terms)` for one batch; `terms` holds the logged parts.

        `inputs` (the batch's `x`) supplies a KerasHub `padding_mask`, which weights the
        positions of sequence-valued pair terms (`Hint`, `CosineEmbedding`).
        """
        padding_mask = None if inputs is None else student_padding_mask(inputs)
        checks.check_output_shapes(_logits_shape(teacher_logits, student_logits), student_logits.shape)
        soft = ops.cast(self._soft_term(teacher_logits, student_logits, self._temperature, sample_weight), "float32")
        if len(soft.shape):
            raise ValueError(
                f"soft_loss {self.soft_loss!r} returned a value of shape {tuple(soft.shape)}; it must return a "
                "scalar (average over examples and positions, using sample_weight)."
            )
        terms = {"soft_loss": soft}
        if y is None:
            loss = soft
        else:
            hard = self._hard_loss(y, student_logits, sample_weight)
            terms["hard_loss"] = hard
            loss = self._alpha * hard + (1.0 - self._alpha) * soft
        hint_total = 0.0
        for pair, name, t_features, s_features in zip(
            self.pairs, self._bound_pairs.log_names, teacher_features, student_features
        ):
            pair_weight = _pair_sample_weight(pair, sample_weight, padding_mask, s_features)
            value = pair.compute(t_features, s_features, pair_weight)
            if pair.scaled_for_distribution:
                value = self.per_replica_value(value)
            terms[name] = value
            loss = loss + value
            if self._hint_warmup is not None and isinstance(pair, Hint):
                hint_total = hint_total + value
        regularization = self.student.losses
        if regularization:
            loss = loss + ops.sum([ops.cast(ops.sum(r), "float32") for r in regularization])
        if self._hint_warmup is not None:
            # FitNets stage 1 (HintWarmup): the hint terms alone while the flag is 1.
            loss = self._hint_warmup * hint_total + (1.0 - self._hint_warmup) * loss
        return loss, terms

    def mask_gradients(self, gradients):
        """During a hint warm-up, zeroes the gradients of variables past the hinted layers."""
        if self._warmup_variable_ids is None:
            return gradients
        keep = 1.0 - self._hint_warmup
        return [
            g if g is None or id(v) in self._warmup_variable_ids else g * ops.cast(keep, g.dtype)
            for g, v in zip(gradients, self.trainable_variables)
        ]

    @property
    def hint_warmup(self):
        """1.0 while FitNets' hint warm-up runs (see `keras_kd.callbacks.HintWarmup`), else 0.0."""
        return 0.0 if self._hint_warmup is None else float(ops.convert_to_numpy(self._hint_warmup))

    @hint_warmup.setter
    def hint_warmup(self, value):
        if self._hint_warmup is None:
            raise ValueError(
                "This distiller has no keras_kd.Hint pair, so there is no hint warm-up. Add a Hint to `pairs`."
            )
        if value not in (0, 1, 0.0, 1.0, True, False):
            raise ValueError(f"hint_warmup is 1 (warm-up) or 0 (full distillation), got {value!r}.")
        self._hint_warmup.assign(float(value))

    def enable_hint_warmup_masks(self):
        """Prepares the gradient masks of the hint warm-up; called by `HintWarmup` before training.

        Raises when a model along a hinted path has no graph (subclassed), since
        then the variables past the hinted layer cannot be told apart.
        """
        if self._hint_warmup is None:
            raise ValueError(
                "HintWarmup needs a keras_kd.Hint in the distiller's pairs; this distiller has "
                f"{[type(p).__name__ for p in self.pairs] or 'no pairs'}."
            )
        if self._warmup_variable_ids is None:
            ids = {id(v) for v in self._bound_pairs.warmup_variables(self.student)}
            self._warmup_variable_ids = ids
            # A step traced before the masks existed would not mask: trace again.
            self.make_train_function(force=True)

    def _hard_loss(self, y, logits, sample_weight):
        if self._compile_loss is not None:
            value = self._compile_loss(y, logits, sample_weight)
            return self.per_replica_value(ops.cast(value, "float32"))
        logits = ops.cast(logits, "float32")
        if checks.label_kind(y.shape, logits.shape) == "sparse":
            if len(y.shape) == len(logits.shape):
                y = ops.squeeze(y, axis=-1)
            values = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        else:
            values = keras.losses.categorical_crossentropy(ops.cast(y, "float32"), logits, from_logits=True)
        return weighted_mean(values, sample_weight)

    def update_distillation_metrics(self, loss, terms, x, y, student_logits, sample_weight):
        """Updates the loss trackers and compiled metrics; returns the logs of this batch."""
        batch_size = ops.shape(keras.tree.flatten(x)[0])[0]
        self._loss_tracker.update_state(loss, sample_weight=batch_size)
        self.soft_loss_tracker.update_state(terms["soft_loss"], sample_weight=batch_size)
        self._update_pair_trackers(terms, batch_size)
        if y is None:
            # Without labels only the label-free numbers mean anything.
            trackers = [self._loss_tracker, self.soft_loss_tracker, *self.pair_loss_trackers]
            return {m.name: m.result() for m in trackers}
        self.hard_loss_tracker.update_state(terms["hard_loss"], sample_weight=batch_size)
        return self.compute_metrics(x, y, student_logits, sample_weight)

    def _update_pair_trackers(self, terms, batch_size):
        for tracker in self.pair_loss_trackers:
            tracker.update_state(terms[tracker.name], sample_weight=batch_size)

    # Serialization.

    def get_config(self):
        return {
            "name": self.name,
            "teacher": _serialize_uncompiled(self.teacher),
            "student": _serialize_uncompiled(self.student),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "pairs": [keras.saving.serialize_keras_object(pair) for pair in self.pairs],
            "soft_loss": serialize_soft_loss(self.soft_loss),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "student"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        config["pairs"] = [keras.saving.deserialize_keras_object(pair) for pair in config.get("pairs", [])]
        config["soft_loss"] = deserialize_soft_loss(config.get("soft_loss", "kl"))
        return cls(**config)


def _serialize_uncompiled(model):
    """The model's config without its own compile state: the distiller's optimizer trains it."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def _pair_sample_weight(pair, sample_weight, padding_mask, student_features):
    """The sample weight of one pair term: times the padding mask for (batch, positions, width) features."""
    if padding_mask is None or not pair.position_weighted:
        return sample_weight
    if any(len(feature.shape) != 3 for feature in student_features) or len(padding_mask.shape) != 2:
        return sample_weight
    mask = ops.cast(padding_mask, "float32")
    if sample_weight is None:
        return mask
    sample_weight = ops.cast(sample_weight, "float32")
    if len(sample_weight.shape) == 1:
        return mask * ops.expand_dims(sample_weight, -1)
    return mask * ops.reshape(sample_weight, ops.shape(mask))


def _logits_shape(teacher_logits, student_logits):
    """The teacher's logits shape; for a top-k cache's `(values, indices, tail)`, as if dense."""
    if isinstance(teacher_logits, tuple):
        return (*teacher_logits[0].shape[:-1], student_logits.shape[-1])
    return teacher_logits.shape


def _top_k_soft_term(cache, soft_loss):
    """The soft term of a top-k cache: the bucketed forward KL (`keras_kd.losses.top_k_soft_target_loss`)."""
    if soft_loss != "kl":
        raise ValueError(
            f"The teacher cache in {cache.directory} holds the teacher's top {cache.top_k} logits per position, which "
            f"only the forward KL uses (keras_kd.losses.top_k_soft_target_loss); soft_loss={soft_loss!r} needs the "
            "dense logits. Use soft_loss='kl', or build the cache with top_k=None."
        )
    return lambda teacher_top_k, student_logits, temperature, weight: weighted_mean(
        top_k_soft_target_kl(teacher_top_k, student_logits, temperature), weight
    )


def _check_cache_student(cache, student):
    """The static checks of a student against a cache's stored logits."""
    checks.check_outputs_logits("student", student)
    outputs = getattr(student, "outputs", None)
    if not outputs:
        return
    if len(outputs) != 1:
        raise ValueError(f"{student.name!r} has {len(outputs)} outputs; a Distiller needs one output tensor of logits.")
    student_shape = tuple(outputs[0].shape)
    if not checks.shapes_match(student_shape, (None, *cache.logits_shape)):
        raise ValueError(
            f"The teacher cache in {cache.directory} holds logits of shape {(None, *cache.logits_shape)} per batch, "
            f"but the student outputs shape {student_shape}. Give the student the teacher's number of classes "
            "(last axis) and sequence length, or build a cache of the matching teacher."
        )
