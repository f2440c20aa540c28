"""The `Distiller` model: configuration, the distillation objective, and serialization.

The train/test step bodies live in `keras_kd/trainers/`, one file per backend;
everything here is backend-agnostic.
"""

import functools
import warnings

import keras
from keras import ops

from keras_kd import validation as checks
from keras_kd.cache.teacher_cache import TeacherCache
from keras_kd.data import text as text_pipeline
from keras_kd.data.arrays import is_in_memory
from keras_kd.data.batch_keys import cached_teacher_outputs, is_cached, student_padding_mask, student_view, teacher_view
from keras_kd.features.binding import BoundPairs
from keras_kd.features.capture import capture
from keras_kd.features.pairs import Hint
from keras_kd.losses._reduction import weighted_mean
from keras_kd.losses.logits import mixture_logits
from keras_kd.losses.top_k import top_k_soft_target_kl
from keras_kd.metrics import TermMeans
from keras_kd.soft_loss import SoftLossWarmup
from keras_kd.soft_loss import describe as describe_soft_loss
from keras_kd.soft_loss import deserialize as deserialize_soft_loss
from keras_kd.soft_loss import needs_labels as soft_loss_needs_labels
from keras_kd.soft_loss import resolve as resolve_soft_loss
from keras_kd.soft_loss import serialize as serialize_soft_loss
from keras_kd.soft_loss import warmup_epochs as soft_loss_warmup_epochs
from keras_kd.soft_loss import warmup_weight as soft_loss_warmup_weight
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
    soft term alone, `T**2 * KL(...)`, with weight 1; when the first batch of a
    `fit()` has no labels and `alpha > 0` or a compiled loss would so go unused,
    a warning says so (`alpha=0` is the same objective, without the warning).
    Compiled metrics (`compile(metrics=["accuracy"])`) need labels: label-free
    batches do not update them and leave them out of their logs, while labelled
    batches, such as validation data, update and report them as usual. The
    teacher's outputs on the first batch of `fit()` must be finite
    (`inspect_first_batch`). `sample_weight` (and
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
    tokenize them in the data pipeline (see `keras_kd.data.text`). When the two
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

    Decoupled KD: `soft_loss=keras_kd.losses.DKD(alpha=1.0, beta=8.0, temperature=T)`
    (Zhao et al., CVPR 2022) receives the batch's labels (class ids or one-hot) besides
    the logits, so every batch needs labels; a batch without them is an error. With
    `DKD(warmup_epochs=N)` the soft term is multiplied by `min((e + 1) / N, 1)` in epoch
    `e` (counted from 0, `initial_epoch` included), as in the paper's code: `fit` adds a
    `keras_kd.soft_loss.SoftLossWarmup` callback that sets the weight (a variable, so compiled
    steps see it) at the start of every epoch and logs it as `soft_loss_warmup`; the logged
    `soft_loss` is the weighted term. Outside `fit`, set `distiller.soft_loss_warmup`.
    The distiller's `alpha` still mixes the two terms: `alpha * CE + (1 - alpha) * DKD`, so
    `alpha=0.5` is the paper's `CE + DKD` at half the scale.

    Several teachers: `teacher=[t1, t2, ...]` with `teacher_weights=[w1, w2, ...]` (normalized
    to sum to 1; equal by default). Each teacher runs once per step, frozen, and the soft
    targets are the weighted mixture of their tempered probabilities,
    `p_t = sum_i w_i softmax(z_i / T)`. Probabilities are averaged rather than logits:
    the mixture is the arithmetic mean of the ensemble's distributions, while the softmax of
    averaged logits is their normalized geometric mean, sharper and dominated by the teacher
    with the largest logits (Hinton et al. 2015 mention both means for distilling an
    ensemble). The soft loss (any choice below, DKD included) receives the mixture as the
    logits `T * log p_t` (see `keras_kd.losses.mixture_logits`), computed inside the step
    with the current temperature; a callable `soft_loss` sees those too. The hard-label term
    does not involve the teachers. Layer `pairs` compare one teacher's layers and are refused
    with several teachers. The teachers must output the student's shape; a 1-element list is
    a single teacher. A `TeacherCache` built from a list of teachers stores every teacher's
    logits, so `Distiller(cache, student, teacher_weights=...)` trains on the same mixture
    without running them.

    Offline distillation: with a `keras_kd.TeacherCache` as `teacher`, the teacher's logits
    (and its paired layers' outputs) come from the cache and no step runs the teacher. Fit on
    `cache.dataset(...)` (or `cache.attach(...)`); its batches carry the stored outputs next to
    the student's inputs. The cache must hold logits of the student's output shape and, for
    every pair, its teacher layer (`TeacherCache.build(..., pairs=...)`).

    Args:
        teacher: a built `keras.Model` that returns logits, a list of them (several
            teachers, mixed by `teacher_weights`), or a `keras_kd.TeacherCache`.
        student: a `keras.Model` that returns logits of the teacher's shape.
        temperature: `T > 0` that softens both distributions.
        alpha: weight of the hard-label loss in `[0, 1]`.
        pairs: layer pairs, each adding a feature term (see `keras_kd.features.pairs`).
        soft_loss: the soft term between the tempered distributions: `"kl"`
            (`T**2 * KL(p_t || p_s)`, Hinton et al.), `"reverse_kl"`
            (`T**2 * KL(p_s || p_t)`), a loss object from `keras_kd.losses` such as
            `GeneralizedJSD(beta=0.5)` (its temperature must equal the distiller's,
            which is the one used), `DKD(alpha, beta, ...)` (decoupled KD; needs labels), or
            a callable `(teacher_logits, student_logits, temperature, sample_weight) -> scalar`
            (one with an attribute `needs_labels = True` is called with the labels as a fifth
            argument).
        name: name of the model.
        teacher_weights: with several teachers, one weight >= 0 per teacher (normalized to
            sum to 1); `None` weighs them equally. An error with a single teacher model.

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

    Two teachers, the first weighted twice as much, with decoupled KD warmed up over 2 epochs:

    >>> teachers = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
    >>> distiller = keras_kd.Distiller(teachers, student, teacher_weights=[2, 1],
    ...                                soft_loss=keras_kd.losses.DKD(warmup_epochs=2))
    >>> history = distiller.compile(optimizer="adam").fit(x, y, epochs=3, verbose=0)
    >>> [round(w, 2) for w in history.history["soft_loss_warmup"]]
    [0.5, 1.0, 1.0]
    """

    def __init__(
        self,
        teacher,
        student,
        temperature=4.0,
        alpha=0.1,
        pairs=(),
        soft_loss="kl",
        name="distiller",
        teacher_weights=None,
        **kwargs,
    ):
        _check_model_kwargs(kwargs)
        super().__init__(name=name, **kwargs)
        # The first batch of every fit() (and of the first train_on_batch) is inspected once: see inspect_first_batch.
        self._first_batch_pending = False  # or the entry point ("fit", "train_on_batch") whose first batch is due
        self._first_batch_inspected = False
        self._teacher_cache = teacher if isinstance(teacher, TeacherCache) else None
        if self._teacher_cache is not None:
            checks.check_model("student", student)
            _check_cache_student(teacher, student)
            teachers = []
            num_teachers = teacher.num_teachers
        else:
            teachers = checks.check_teacher_list(teacher) if _is_teacher_list(teacher) else [teacher]
            if not _is_teacher_list(teacher):
                checks.check_model("teacher", teacher)
                checks.check_teacher_built(teacher)
            checks.check_model("student", student)
            checks.check_teacher_output_shapes(teachers, [checks._known_shape(t) for t in teachers])
            for model in teachers:
                text_pipeline.check_shared_vocabulary(model, student)
                checks.check_model_pair(model, student)
            num_teachers = len(teachers)
        self._num_teachers = num_teachers
        self._teacher_weights = checks.check_teacher_weights(
            teacher_weights, num_teachers, single_model=not _is_teacher_list(teacher) and num_teachers == 1
        )
        if num_teachers > 1 and pairs:
            raise ValueError(
                f"Layer pairs ({', '.join(type(p).__name__ for p in pairs)}) compare one teacher's layers with the "
                f"student's, but this distiller has {num_teachers} teachers. Distil the features from one teacher "
                "in a separate Distiller (e.g. Distiller(teacher_1, student, pairs=[...]) first, then "
                "Distiller([teacher_1, teacher_2], student)), or drop the pairs."
            )
        temperature = checks.check_temperature(temperature)
        alpha = checks.check_alpha(alpha)

        for model in teachers:
            model.trainable = False
        self.teacher = list(teachers) if _is_teacher_list(teacher) else teacher
        self.student = student
        self._temperature = self._scalar_variable("temperature", temperature)
        self._alpha = self._scalar_variable("alpha", alpha)
        self._bind_pairs(pairs)
        self.soft_loss = soft_loss
        self._soft_term = resolve_soft_loss(soft_loss, temperature)
        self._soft_needs_labels = soft_loss_needs_labels(soft_loss)
        if self._soft_needs_labels and self._teacher_cache is not None and not self._teacher_cache.has_labels:
            raise ValueError(
                f"soft_loss {describe_soft_loss(soft_loss)} needs the labels of every batch, but the teacher cache "
                f"in {self._teacher_cache.directory} holds none. Build the cache from (x, y) data, or use another "
                "soft_loss ('kl', 'reverse_kl', GeneralizedJSD) for unlabelled data."
            )
        if self._teacher_cache is not None and self._teacher_cache.top_k is not None:
            self._soft_term = _top_k_soft_term(self._teacher_cache, soft_loss)
        self._soft_loss_warmup = None
        if soft_loss_warmup_epochs(soft_loss):
            self._soft_loss_warmup = self._scalar_variable("soft_loss_warmup", soft_loss_warmup_weight(soft_loss, 0))
        self._text_pipeline = _text_pipeline(teachers or [teacher], student)
        if student.built:
            # Built parts make a built distiller: BackupAndRestore and JAX's
            # stateless step need every variable before the first batch.
            self.built = True

    def _bind_pairs(self, pairs):
        if not isinstance(pairs, (list, tuple)):
            raise TypeError(
                f"pairs must be a list of keras_kd.LayerPair objects, got {type(pairs).__name__}. Wrap a single "
                "pair in a list: pairs=[pair]."
            )
        teacher = self.teachers[0] if self.teachers else None
        self._bound_pairs = BoundPairs(list(pairs), teacher, self.student, teacher_cache=self._teacher_cache)
        self.pairs = self._bound_pairs.pairs
        # The logged loss and its parts in one metric, updated once per batch (Keras's own "loss" Mean is not used).
        self.term_means = TermMeans(["loss", "hard_loss", "soft_loss", *self._bound_pairs.log_names], name="loss")
        self._hint_warmup = None
        self._warmup_variable_ids = None
        if self._bound_pairs.hints():
            self._hint_warmup = self._scalar_variable("hint_warmup", 0.0)

    @property
    def metrics(self):
        """`term_means` (the logged `loss`, `hard_loss`, `soft_loss` and pair terms) first, then Keras's metrics."""
        others = [m for m in super().metrics if m is not self.term_means and m is not self._loss_tracker]
        return [self.term_means, *others]

    @property
    def pair_log_names(self):
        """The log entry of each pair's term, in the order of `pairs`."""
        return list(self._bound_pairs.log_names)

    @property
    def teachers(self):
        """The teacher models, in order: one for a single teacher, none with a `TeacherCache`."""
        if self._teacher_cache is not None:
            return []
        return list(self.teacher) if _is_teacher_list(self.teacher) else [self.teacher]

    @property
    def num_teachers(self):
        """How many teachers' soft targets are mixed (a multi-teacher cache counts its teachers)."""
        return self._num_teachers

    @property
    def teacher_weights(self):
        """The teachers' mixture weights, normalized to sum to 1; None for a single teacher."""
        return None if self._teacher_weights is None else list(self._teacher_weights)

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

    @property
    def soft_loss_warmup(self):
        """The warm-up weight of the soft term, in `[0, 1]`: 1.0 without a warm-up.

        With `soft_loss=DKD(warmup_epochs=N)`, `fit` sets it at the start of every epoch `e` to
        `min((e + 1) / N, 1)` (counting from `initial_epoch`); a loop of your own around
        `train_on_batch` sets it by assignment.
        """
        if self._soft_loss_warmup is None:
            return 1.0
        return float(ops.convert_to_numpy(self._soft_loss_warmup))

    @soft_loss_warmup.setter
    def soft_loss_warmup(self, value):
        if self._soft_loss_warmup is None:
            raise ValueError(
                f"soft_loss {describe_soft_loss(self.soft_loss)} has no warm-up (warmup_epochs=0), so there is no "
                "soft_loss_warmup to set. Give the soft loss warmup_epochs > 0, e.g. "
                "keras_kd.losses.DKD(warmup_epochs=20)."
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"soft_loss_warmup must be a number in [0, 1], got {value!r}.")
        self._soft_loss_warmup.assign(float(value))

    def call(self, inputs, training=None):
        """The student's output: `distiller(x)` and `distiller.predict(x)` run the student alone."""
        return self.student(student_view(inputs), training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile`, returning the distiller so that `.fit` chains.

        `loss` is the hard-label loss; leave it `None` for cross-entropy from
        logits (sparse or one-hot, read off the labels' shape). `loss_weights`
        scales a given `loss` only; the hard-label term's weight is `alpha`.
        """
        if loss is None and kwargs.get("loss_weights") is not None:
            raise ValueError(
                f"compile(loss_weights={kwargs['loss_weights']!r}) scales the compiled loss, but no loss was given: "
                "the default hard-label loss (cross-entropy from logits) would ignore it. Weigh the hard-label term "
                "with the distiller's alpha (Distiller(..., alpha=a): alpha * hard + (1 - alpha) * soft), or pass "
                "loss=... together with loss_weights."
            )
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

        See `keras_kd.data.text` for which preprocessor feeds which model.
        """
        if kwargs.get("class_weight") is not None:
            _check_class_weight(self.student, x, y)
        if self._soft_loss_warmup is not None:
            schedule = functools.partial(soft_loss_warmup_weight, self.soft_loss)
            kwargs["callbacks"] = _with_soft_loss_warmup(kwargs.get("callbacks"), schedule)
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
        self._first_batch_pending = "fit"
        try:
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
        finally:
            self._first_batch_pending = False

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
        self._first_batch_pending = False if self._first_batch_inspected else "train_on_batch"
        try:
            return super().train_on_batch(x, y=y, sample_weight=sample_weight, **kwargs)
        finally:
            self._first_batch_pending = False

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

    # Batches without labels: the compiled loss and metrics compare predictions with labels.

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras's compiled loss; 0 for a batch without labels.

        The distiller's steps compute their loss in `compute_distillation_loss`; Keras calls this
        only to build the compiled loss on the first batch, which needs labels. A label-free first
        batch leaves it unbuilt until a labelled batch (validation data, a later `fit`) builds it.
        """
        if y is None:
            return ops.zeros((), dtype="float32")
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics on a labelled batch; a batch without labels leaves them as they are."""
        if y is None:
            return self.get_metrics_result()
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def get_metrics_result(self):
        """The metrics' values, without the compiled metrics while no labelled batch has built them."""
        compiled = self._compile_metrics
        if compiled is None or compiled.built:
            return super().get_metrics_result()
        results = {}
        for metric in self.metrics:
            if metric is compiled:
                continue
            result = metric.result()
            results.update(result if isinstance(result, dict) else {metric.name: result})
        return results

    # The first batch of training: checked once, eagerly, before the compiled steps run.

    def _symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds the model (JAX, PyTorch; TensorFlow under a strategy) from the first batch of
        # fit(), evaluate() and the *_on_batch methods: the one place that sees that batch eagerly.
        if self._first_batch_pending:
            if data_batch is None and iterator is not None:
                data_batch = _first_batch(iterator)
                iterator = None
            self.inspect_first_batch(data_batch)
        return super()._symbolic_build(iterator=iterator, data_batch=data_batch)

    def inspect_first_batch(self, data_batch):
        """Checks the first batch of `fit()` (and of the first `train_on_batch`) once, outside the compiled step.

        - The teacher's outputs on it must be finite (NaN or Inf would make every loss NaN): each
          teacher runs once more, eagerly, on this one batch (a cached batch's stored outputs are
          read instead); later batches cost nothing extra.
        - A batch without labels trains on the soft term alone, with weight 1: when that drops part of
          what was configured (`alpha > 0`, a compiled `loss`), a warning says so, once per `fit()`.
          A `DKD(warmup_epochs=N)` soft loss in a `train_on_batch` loop warns that only `fit()` ramps it.

        Does nothing unless a `fit()` or a first `train_on_batch` is starting.
        """
        entry = self._first_batch_pending
        if not entry or data_batch is None:
            return
        self._first_batch_pending = False
        self._first_batch_inspected = True
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data_batch)
        if y is None and not self._soft_needs_labels:
            _warn_label_free(self.alpha, self._compile_loss is not None)
        if self._soft_loss_warmup is not None and entry == "train_on_batch":
            warnings.warn(
                f"soft_loss {describe_soft_loss(self.soft_loss)} has warmup_epochs="
                f"{soft_loss_warmup_epochs(self.soft_loss)}, which fit() applies epoch by epoch; train_on_batch "
                f"leaves the warm-up weight at {self.soft_loss_warmup}. In a loop of your own, set "
                "distiller.soft_loss_warmup = min((epoch + 1) / warmup_epochs, 1) at the start of every epoch.",
                UserWarning,
                stacklevel=2,
            )
        self._check_teacher_outputs_finite(x)

    def _check_teacher_outputs_finite(self, x):
        where = "the first batch of training"
        if self._teacher_cache is not None:
            if is_cached(x):
                logits, features = cached_teacher_outputs(x)
                checks.check_finite_teacher_outputs(
                    f"The teacher cache in {self._teacher_cache.directory}",
                    (logits, features),
                    None,
                    where,
                    fix="Rebuild it with TeacherCache.build(..., dtype='float32') from a teacher with finite outputs "
                    "(float16 stores values beyond 65504 as Inf).",
                )
            return
        if is_cached(x):
            return  # refused with its own message by the step
        inputs = teacher_view(x)
        teachers = self.teachers
        for index, teacher in enumerate(teachers):
            label = f"teacher[{index}] {teacher.name!r}" if len(teachers) > 1 else f"The teacher {teacher.name!r}"
            checks.check_finite_teacher_outputs(label, teacher(inputs, training=False), inputs, where)

    # The forward passes and the objective, shared by every backend's step.

    def teacher_forward(self, x):
        """The teacher's logits and, per pair, its paired layers' outputs: one forward pass.

        With a teacher cache, both come from the cached batch and the teacher does not run.
        """
        if self._teacher_cache is not None or is_cached(x):
            return self._cached_teacher_forward(x)
        teachers = self.teachers
        if len(teachers) > 1:
            # One forward pass per teacher; their logits stacked on axis 1, mixed in the loss.
            inputs = teacher_view(x)
            logits = [teacher(inputs, training=False) for teacher in teachers]
            checks.check_teacher_output_shapes(teachers, [tuple(value.shape) for value in logits])
            return ops.stack([ops.cast(value, "float32") for value in logits], axis=1), []
        with capture() as captured:
            logits = teachers[0](teacher_view(x), training=False)
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
        if self._num_teachers > 1:
            # (batch, teachers, ..., classes) -> logits of the weighted mixture of tempered probabilities.
            teacher_logits = mixture_logits(teacher_logits, self._temperature, self._teacher_weights, axis=1)
        checks.check_output_shapes(_logits_shape(teacher_logits, student_logits), student_logits.shape)
        labels = None
        if self._soft_needs_labels:
            if y is None:
                raise ValueError(
                    f"soft_loss {describe_soft_loss(self.soft_loss)} needs the labels of every batch (it splits the "
                    "soft targets at the true class), but this batch has none. Pass labels (fit(x, y), or a dataset "
                    "yielding (x, y)), or use another soft_loss ('kl', 'reverse_kl', GeneralizedJSD) for "
                    "unlabelled data."
                )
            labels = y
        soft = self._soft_term(teacher_logits, student_logits, self._temperature, sample_weight, labels)
        soft = ops.cast(soft, "float32")
        if len(soft.shape):
            raise ValueError(
                f"soft_loss {self.soft_loss!r} returned a value of shape {tuple(soft.shape)}; it must return a "
                "scalar (average over examples and positions, using sample_weight)."
            )
        if self._soft_loss_warmup is not None:
            soft = self._soft_loss_warmup * soft
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
        self.term_means.update_state({"loss": loss, **terms}, batch_size)
        if y is None:
            # Without labels only the label-free numbers mean anything.
            logs = self.term_means.result()
            del logs["hard_loss"]
            return logs
        return self.compute_metrics(x, y, student_logits, sample_weight)

    # Serialization.

    def get_config(self):
        if _is_teacher_list(self.teacher):
            teacher = [_serialize_uncompiled(model) for model in self.teacher]
        else:
            teacher = _serialize_uncompiled(self.teacher)
        return {
            "name": self.name,
            "teacher": teacher,
            "student": _serialize_uncompiled(self.student),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "pairs": [keras.saving.serialize_keras_object(pair) for pair in self.pairs],
            "soft_loss": serialize_soft_loss(self.soft_loss),
            "teacher_weights": self.teacher_weights,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["teacher"], (list, tuple)):
            config["teacher"] = [keras.saving.deserialize_keras_object(model) for model in config["teacher"]]
        else:
            config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["pairs"] = [keras.saving.deserialize_keras_object(pair) for pair in config.get("pairs", [])]
        config["soft_loss"] = deserialize_soft_loss(config.get("soft_loss", "kl"))
        return cls(**config)


def _is_teacher_list(teacher):
    return isinstance(teacher, (list, tuple))


# keras.Model keyword arguments that a Distiller would accept but not apply, and what to do instead.
_MODEL_KWARGS_NOT_APPLIED = {
    "dtype": "the teacher and the student keep their own dtype policies: build the student under "
    "keras.config.set_dtype_policy('mixed_bfloat16') (or with dtype=...) for mixed precision",
    "trainable": "a non-trainable distiller would train nothing: freeze layers of the student "
    "(student.get_layer(...).trainable = False) instead; the teacher is always frozen",
    "activity_regularizer": "the distiller's loss adds the student's own losses only: give the student's "
    "layers activity_regularizer=... instead",
    "autocast": "autocasting follows the student's layers and their dtype policies: set autocast on them",
}


def _check_model_kwargs(kwargs):
    for key, fix in _MODEL_KWARGS_NOT_APPLIED.items():
        if key in kwargs:
            raise TypeError(f"Distiller({key}={kwargs[key]!r}) is not applied to the distillation: {fix}.")


def _first_batch(iterator):
    """The first batch of a Keras epoch iterator, as Keras's `_symbolic_build` reads it (fit resets the iterator)."""
    for _, _, data_or_iterator in iterator:
        if isinstance(data_or_iterator, (list, tuple)):
            return data_or_iterator[0]
        return next(data_or_iterator)
    return None


def _warn_label_free(alpha, has_compiled_loss):
    unused = []
    if alpha > 0:
        unused.append(f"alpha={alpha:g} (the soft term gets weight 1, not 1 - alpha)")
    if has_compiled_loss:
        unused.append("the loss given to compile()")
    if not unused:
        return
    warnings.warn(
        f"The first batch of this fit() has no labels, so {' and '.join(unused)} will not be used: label-free "
        "batches train on the soft term alone. For label-free distillation pass alpha=0 and no compile loss (the "
        "same objective, without this warning); otherwise give the data labels, (x, y).",
        UserWarning,
        stacklevel=2,
    )


def _check_class_weight(student, x, y):
    """`fit(class_weight=...)` needs labels, one class id per example: refuse the cases Keras would mishandle."""
    outputs = getattr(student, "outputs", None)
    if outputs and len(outputs[0].shape) > 2:
        raise ValueError(
            f"class_weight weighs each example by its label's class, but the student {student.name!r} outputs "
            f"{tuple(outputs[0].shape)}: one prediction per position, whose labels Keras would read as one-hot "
            "rows. Pass per-position weights as sample_weight instead, e.g. "
            "sample_weight=np.vectorize(class_weight.get)(y) of shape (batch, positions)."
        )
    if y is not None:
        return
    spec = getattr(x, "element_spec", None)  # a tf.data.Dataset tells what it yields
    if is_in_memory(x) or (spec is not None and not (isinstance(spec, tuple) and len(spec) >= 2)):
        raise ValueError(
            "fit(class_weight=...) weighs each example by its label's class, but the data has no labels (only "
            "inputs): label-free batches have no class to weigh. Pass labels, fit(x, y) or a dataset yielding "
            "(x, y), or drop class_weight."
        )


def _with_soft_loss_warmup(callbacks, schedule):
    """`callbacks` plus a `SoftLossWarmup` (unless one is there): `fit` always applies the warm-up."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        if not any(isinstance(c, SoftLossWarmup) for c in callbacks.callbacks):
            callbacks.append(SoftLossWarmup(schedule))
        return callbacks
    callbacks = list(callbacks or [])
    if not any(isinstance(c, SoftLossWarmup) for c in callbacks):
        callbacks.append(SoftLossWarmup(schedule))
    return callbacks


class _SharedTextPipeline(text_pipeline.TextPipeline):
    """The raw-string pipeline of several teachers: they must read the same tokens."""

    def __init__(self, teachers, student):
        super().__init__(teachers[0], student)
        self.teachers = teachers

    def check_can_read_strings(self):
        first = self.teacher_preprocessor
        for index, teacher in enumerate(self.teachers[1:], start=1):
            if getattr(teacher, "preprocessor", None) is not first:
                raise ValueError(
                    f"The teachers {self.teachers[0].name!r} and {teacher.name!r} (teacher[{index}]) have different "
                    "preprocessors, and a batch of raw strings is tokenized once for all teachers. Give the teachers "
                    "one preprocessor object, or pass token inputs that every teacher reads "
                    "(keras_kd.paired_inputs(teacher_tokens, student_tokens) when the student's differ)."
                )
        super().check_can_read_strings()


def _text_pipeline(teachers, student):
    if len(teachers) > 1:
        return _SharedTextPipeline(teachers, student)
    return text_pipeline.TextPipeline(teachers[0], student)


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
    return lambda teacher_top_k, student_logits, temperature, weight, labels=None: weighted_mean(
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
