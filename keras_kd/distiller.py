"""The `Distiller` model: configuration, Keras entry points and serialization.

Where the rest lives: the teacher kinds in `keras_kd/teachers.py`, the loss of one batch in
`keras_kd/objective.py`, the soft loss in `keras_kd/soft_loss.py`, layer pairs in
`keras_kd/features/`, and the train/test steps in `keras_kd/trainers/` (one file per backend,
under the contract of `trainers/base.py`). See docs/architecture.md.
"""

import types
import warnings

import keras
from keras import ops

from keras_kd import feature_only, validation
from keras_kd import soft_loss as soft_losses
from keras_kd.augment import check_augment, deserialize_augment, refuse_paired_or_cached, serialize_augment
from keras_kd.callbacks import SoftLossWarmup
from keras_kd.chunked_terms import ChunkedTerms
from keras_kd.data import text
from keras_kd.data.arrays import array_refs, first_rows, is_in_memory, same_arrays
from keras_kd.data.batch_keys import is_cached, student_view, teacher_view
from keras_kd.heads import chunking_split
from keras_kd.metrics import TermMeans
from keras_kd.objective import Objective
from keras_kd.on_policy.checks import check_on_policy
from keras_kd.on_policy.loop import fit_on_policy
from keras_kd.teachers import deserialize_teacher, serialize_model, teacher_source
from keras_kd.token_logits import TokenLogits, check_chunk_size
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
    (checked once, eagerly, before the compiled steps run). `sample_weight` (and
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
    computation, and its weights never change. The distiller does not modify it (its
    `trainable` flag stays as given; its variables are left out of the distiller's
    `trainable_variables`), and refuses a student that is the teacher or shares its layers. `call`, `predict` and
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
    `keras_kd.callbacks.SoftLossWarmup` callback that sets the weight (a variable, so compiled
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

    Feature-only (general) distillation: with `soft_loss=None` the loss is the pairs' terms alone
    (plus the student's regularization losses), so the models need no logits: KerasHub backbones
    and sentence-embedding models, whose dict outputs pairs name by key (`"sequence_output"`,
    `"pooled_output"`), optionally pooled over the padding mask (`pooling="mean"`, the sentence
    embedding). Batches carry inputs only (labels are refused), `call`/`predict` return the
    student's outputs as it returns them (a dict for a backbone), and the logs hold `loss` and one
    entry per pair. `temperature`, `alpha > 0`, an integer `chunk_size`, `on_policy` and a compiled
    loss or metrics configure the missing terms and are refused. Raw strings need
    `preprocessor=`, since backbones carry none. See docs/general-distillation.md.

    Args:
        teacher: a built `keras.Model` that returns logits, a list of them (several
            teachers, mixed by `teacher_weights`), or a `keras_kd.TeacherCache`.
        student: a `keras.Model` that returns logits of the teacher's shape (any outputs with
            `soft_loss=None`).
        temperature: `T` in `[0.01, 100]` (where float32 holds the soft loss) that softens both
            distributions; `None` (default) is 4.0. Refused with `soft_loss=None`.
        alpha: weight of the hard-label loss in `[0, 1]`; `None` (default) is 0.1, and 0 with
            `soft_loss=None` (where anything above 0 is refused).
        pairs: layer pairs, each adding a feature term (see `keras_kd.features.pairs`).
        soft_loss: the soft term between the tempered distributions: `"kl"`
            (`T**2 * KL(p_t || p_s)`, Hinton et al.), `"reverse_kl"`
            (`T**2 * KL(p_s || p_t)`), a loss object from `keras_kd.losses` such as
            `GeneralizedJSD(beta=0.5)` (its temperature must equal the distiller's,
            which is the one used), `DKD(alpha, beta, ...)` (decoupled KD; needs labels), or
            a callable `(teacher_logits, student_logits, temperature, sample_weight) -> scalar`
            (one with an attribute `needs_labels = True` is called with the labels as a fifth
            argument). `None`: no soft term, feature-only distillation (see above); needs `pairs`.
        name: name of the model.
        teacher_weights: with several teachers, one weight >= 0 per teacher (normalized to
            sum to 1); `None` weighs them equally. An error with a single teacher model.
        chunk_size: how language models' token-level terms are computed. `None`: from both
            models' full `(batch, positions, vocabulary)` logits. An int `N`: `N` positions at a
            time, from the final hidden states through each model's own output head, so that
            neither model's full logits (nor their softmaxes and gradients) exist at once; the
            loss and the gradients are those of `None` (see docs/large-vocabulary.md). `"auto"`
            (default): for KerasHub `CausalLM` and `Seq2SeqLM` pairs (or a `TeacherCache` and
            such a student), dense while one step's float32 logits take under 64 MiB and chunks
            of about 64 MiB above (96 MiB on PyTorch, where fewer chunks cost less time); dense
            for every other model, and where a model's output head cannot be separated (a
            `MaskedLM`'s head also reads the masked positions, whose logits are few). An int
            needs functional models whose logits have a positions axis; otherwise it is an
            error naming the model. Compiled metrics are then updated chunk by chunk (one more
            pass of the student's head).
            A callable `soft_loss` is called per chunk and its values averaged by positions,
            which is its dense value when it averages over examples and positions.
        on_policy: None, or a `keras_kd.OnPolicy` for KerasHub `CausalLM` pairs: `fit` then takes
            prompts (raw strings; `fit(prompts, completions)` for supervised batches), and per batch
            the student being trained (or the teacher, or the data) writes the completions that the
            token-level terms compare, prompt and padding positions weighted 0. Logs add, over the
            epoch so far, `on_policy_share` (batches the student wrote), `completion_length` (mean
            tokens), and the total `generation_seconds` and `training_seconds`.
            `alpha` weights the cross-entropy on the completion's tokens (usually 0 on-policy).
        preprocessor: None, or a KerasHub preprocessor (any callable from a batch of strings to the
            models' token inputs) that tokenizes raw strings given to `fit`, `evaluate` and `predict`
            for models without a preprocessor of their own (backbones); it feeds teacher and student
            alike and is saved with the distiller. Refused where a model has its own preprocessor.
        augment: None, a Keras preprocessing layer (`keras.layers.RandomFlip()`, `RandomCrop`, `MixUp`,
            `CutMix`, `RandAugment`, ...), a list of them (applied in order), or a callable
            `(x, seed) -> x` drawing its randomness from `seed` (a `keras.random.SeedGenerator` the
            distiller owns). Applied once per training step, inside the step, to the batch's inputs;
            the augmented batch goes to both the teacher and the student (consistent teaching,
            Beyer et al. 2022). `evaluate`, validation and `predict` see the inputs as given (the
            layers in inference mode; `RandomCrop` crops the center). Mixing layers (`MixUp`,
            `CutMix`) need label-free training (`alpha=0`). Refused with a `TeacherCache` (its outputs
            belong to other views) and with `on_policy`. Saved with the distiller.

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

    Feature-only: a student embedding trained to the teacher's, without logits or labels:

    >>> def embedder(width):
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, name="embedding")])
    >>> distiller = keras_kd.Distiller(embedder(8), embedder(8), soft_loss=None,
    ...                                pairs=[keras_kd.CosineEmbedding("embedding", "embedding")])
    >>> sorted(distiller.compile(optimizer="adam").fit(x, epochs=1, verbose=0).history)
    ['cosine_loss', 'loss']
    """

    def __init__(
        self,
        teacher,
        student,
        temperature=None,
        alpha=None,
        pairs=(),
        soft_loss="kl",
        name="distiller",
        teacher_weights=None,
        chunk_size="auto",
        on_policy=None,
        preprocessor=None,
        augment=None,
        **kwargs,
    ):
        _check_model_kwargs(kwargs)
        super().__init__(name=name, **kwargs)
        # The first batch of every fit() (and of the first train_on_batch) is inspected once: see _inspect_first_batch.
        self._first_batch_pending = False  # or the entry point ("fit", "train_on_batch") whose first batch is due
        self._first_batch_inspected = False
        self._source = teacher_source(teacher, teacher_weights)
        validation.check_model("student", student)
        temperature, alpha, chunk_size = feature_only.resolve_defaults(
            soft_loss, pairs, temperature, alpha, chunk_size, on_policy
        )
        self.on_policy = check_on_policy(on_policy, self._source, student)
        self._source.check_student(student, logits=soft_loss is not None)
        temperature = validation.check_temperature(temperature)
        alpha = validation.check_alpha(alpha)
        # The teachers are left as given (their `trainable` flags too): their variables are kept out of the
        # distiller's trainable variables instead (see `trainable_variables`), and the steps run them outside
        # the gradient computation.
        self._teacher_variable_ids = frozenset(id(v) for model in self._source.models for v in model.variables)
        self.teacher = list(teacher) if isinstance(teacher, (list, tuple)) else teacher
        self.student = student
        self._bound_pairs = self._source.bind_pairs(pairs, student)
        self.pairs = self._bound_pairs.pairs
        self.soft_loss = soft_loss
        self._soft_term = (
            None if soft_loss is None else self._source.check_soft_loss(soft_losses.resolve(soft_loss, temperature))
        )
        self.chunk_size = check_chunk_size(chunk_size)
        self._student_split = chunking_split(self.chunk_size, self._source, student, self._bound_pairs)
        self._variables = self._create_variables(temperature, alpha)
        self._objective = Objective(
            self._source,
            self._soft_term,
            self._bound_pairs,
            student,
            self._variables,
            compiled_loss=lambda: self._compile_loss,
            replicas=self._replicas,
        )
        if self._student_split is not None:
            head_variables = self._student_split.head.trainable_variables
            self._objective.chunked_terms = ChunkedTerms(
                self._objective, self, lambda: self._without_teachers(head_variables)
            )
        # The logged loss and its parts in one metric, updated once per batch (Keras's own "loss" Mean is not used).
        logits_terms = [] if self.feature_only else ["hard_loss", "soft_loss"]
        self.term_means = TermMeans(["loss", *logits_terms, *self._bound_pairs.log_names], name="loss")
        self.preprocessor = preprocessor
        self._text_pipeline = self._source.text_pipeline(student, preprocessor)
        self._augmentation = check_augment(augment, self._source, self.on_policy)
        if self._augmentation is not None:
            # Tracked, so that their seed generators' states are the distiller's variables (JAX's stateless step).
            self._augment_layers = self._augmentation.layers
            self._augment_seed = self._augmentation.seed
        if student.built:
            # Built parts make a built distiller: BackupAndRestore and JAX's
            # stateless step need every variable before the first batch.
            self.built = True

    def _create_variables(self, temperature, alpha):
        """The scalars the compiled steps read: T, alpha and the warm-up weights that this configuration has."""
        variables = types.SimpleNamespace(
            temperature=self._scalar_variable("temperature", temperature),
            alpha=self._scalar_variable("alpha", alpha),
            soft_loss_warmup=None,
            hint_warmup=None,
        )
        if self._bound_pairs.hints():
            variables.hint_warmup = self._scalar_variable("hint_warmup", 0.0)
        if self._soft_term is not None and self._soft_term.warmup_epochs:
            variables.soft_loss_warmup = self._scalar_variable("soft_loss_warmup", self._soft_term.warmup_weight(0))
        return variables

    def _scalar_variable(self, name, value):
        return self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(value),
            dtype="float32",
            trainable=False,
            autocast=False,
            name=name,
        )

    # Properties.

    _teacher_variable_ids = frozenset()  # set at construction
    _inspected_arrays = None  # the in-memory data whose first batch fit() inspected last (weak references)

    def _without_teachers(self, variables):
        return [v for v in variables if id(v) not in self._teacher_variable_ids]

    def _teachers_of(self, variables):
        return [v for v in variables if id(v) in self._teacher_variable_ids]

    @property
    def trainable_variables(self):
        """The variables that training updates: the student's and the regressors', never a teacher's.

        A teacher's variables count as non-trainable here whatever its `trainable` flag, which the
        distiller leaves as it was: the optimizer gets no slots for them and no step updates them.
        """
        return self._without_teachers(super().trainable_variables)

    @property
    def non_trainable_variables(self):
        return super().non_trainable_variables + self._teachers_of(super().trainable_variables)

    @property
    def trainable_weights(self):
        return self._without_teachers(super().trainable_weights)

    @property
    def non_trainable_weights(self):
        return super().non_trainable_weights + self._teachers_of(super().trainable_weights)

    @property
    def metrics(self):
        """`term_means` (the logged `loss`, `hard_loss`, `soft_loss` and pair terms) first, then Keras's metrics."""
        others = [m for m in super().metrics if m is not self.term_means and m is not self._loss_tracker]
        return [self.term_means, *others]

    @property
    def augment(self):
        """What `augment` was given (a layer, a list of layers, a callable), or None."""
        return None if self._augmentation is None else self._augmentation.spec

    @property
    def feature_only(self):
        """Whether this is feature-only (general) distillation: `soft_loss=None`, the pair terms alone."""
        return self._soft_term is None

    @property
    def pair_log_names(self):
        """The log entry of each pair's term, in the order of `pairs`."""
        return list(self._bound_pairs.log_names)

    @property
    def teachers(self):
        """The teacher models, in order: one for a single teacher, none with a `TeacherCache`."""
        return list(self._source.models)

    @property
    def num_teachers(self):
        """How many teachers' soft targets are mixed (a multi-teacher cache counts its teachers)."""
        return self._source.num_teachers

    @property
    def teacher_weights(self):
        """The teachers' mixture weights, normalized to sum to 1; None for a single teacher."""
        return None if self._source.weights is None else list(self._source.weights)

    @property
    def temperature(self):
        """The current temperature `T` (a float); assign to change it."""
        return float(ops.convert_to_numpy(self._variables.temperature))

    @temperature.setter
    def temperature(self, value):
        if self.feature_only:
            feature_only.refuse_assignment("temperature", value)
        self._variables.temperature.assign(validation.check_temperature(value))

    @property
    def alpha(self):
        """The current hard-loss weight `alpha` (a float); assign to change it."""
        return float(ops.convert_to_numpy(self._variables.alpha))

    @alpha.setter
    def alpha(self, value):
        if self.feature_only:
            feature_only.refuse_assignment("alpha", value)
        self._variables.alpha.assign(validation.check_alpha(value))

    @property
    def soft_loss_warmup(self):
        """The warm-up weight of the soft term, in `[0, 1]`: 1.0 without a warm-up.

        With `soft_loss=DKD(warmup_epochs=N)`, `fit` sets it at the start of every epoch `e` to
        `min((e + 1) / N, 1)` (counting from `initial_epoch`); a loop of your own around
        `train_on_batch` sets it by assignment.
        """
        if self._variables.soft_loss_warmup is None:
            return 1.0
        return float(ops.convert_to_numpy(self._variables.soft_loss_warmup))

    @soft_loss_warmup.setter
    def soft_loss_warmup(self, value):
        if self.feature_only:
            feature_only.refuse_assignment("soft_loss_warmup", value)
        if self._variables.soft_loss_warmup is None:
            raise ValueError(
                f"soft_loss {self._soft_term.describe()} has no warm-up (warmup_epochs=0), so there is no "
                "soft_loss_warmup to set. Give the soft loss warmup_epochs > 0, e.g. "
                "keras_kd.losses.DKD(warmup_epochs=20)."
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"soft_loss_warmup must be a number in [0, 1], got {value!r}.")
        self._variables.soft_loss_warmup.assign(float(value))

    @property
    def hint_warmup(self):
        """1.0 while FitNets' hint warm-up runs (see `keras_kd.callbacks.HintWarmup`), else 0.0."""
        variable = self._variables.hint_warmup
        return 0.0 if variable is None else float(ops.convert_to_numpy(variable))

    @hint_warmup.setter
    def hint_warmup(self, value):
        if self._variables.hint_warmup is None:
            raise ValueError(
                "This distiller has no keras_kd.Hint pair, so there is no hint warm-up. Add a Hint to `pairs`."
            )
        if value not in (0, 1, 0.0, 1.0, True, False):
            raise ValueError(f"hint_warmup is 1 (warm-up) or 0 (full distillation), got {value!r}.")
        self._variables.hint_warmup.assign(float(value))

    def call(self, inputs, training=None):
        """The student's output: `distiller(x)` and `distiller.predict(x)` run the student alone."""
        return self.student(student_view(self._augment_inputs(inputs, training=False)), training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile`, returning the distiller so that `.fit` chains.

        `loss` is the hard-label loss; leave it `None` for cross-entropy from
        logits (sparse or one-hot, read off the labels' shape). The student outputs
        logits, so a Keras cross-entropy named by a string (`"sparse_categorical_crossentropy"`,
        `"categorical_crossentropy"`, `"binary_crossentropy"`, ...) is taken with
        `from_logits=True`, and a loss object or function with `from_logits=False` is
        refused. `loss_weights` scales a given `loss` only; the hard-label term's weight is `alpha`.
        """
        if loss is None and kwargs.get("loss_weights") is not None:
            raise ValueError(
                f"compile(loss_weights={kwargs['loss_weights']!r}) scales the compiled loss, but no loss was given: "
                "the default hard-label loss (cross-entropy from logits) would ignore it. Weigh the hard-label term "
                "with the distiller's alpha (Distiller(..., alpha=a): alpha * hard + (1 - alpha) * soft), or pass "
                "loss=... together with loss_weights."
            )
        if self.feature_only:
            feature_only.refuse_compile(loss, metrics)
        loss = validation.resolve_hard_loss(loss)
        if self._student_split is not None:
            _check_chunkable_loss(loss)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        return self

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # Keras's entry points: raw strings for KerasHub tasks are tokenized by their preprocessors
    # in the data pipeline (keras_kd.data.text); each first asks the backend whether it can run.

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
        self._check_entry("fit")
        validation.check_data_reaches_teacher(
            validation_data, getattr(self._source, "cache", None), "fit(validation_data=...)"
        )
        if kwargs.get("class_weight") is not None:
            _check_class_weight(self.student, x, y)
        if self._variables.soft_loss_warmup is not None:
            kwargs["callbacks"] = _with_soft_loss_warmup(kwargs.get("callbacks"))
        if self.on_policy is not None:
            return fit_on_policy(
                self,
                self.on_policy,
                x,
                y,
                batch_size,
                sample_weight=sample_weight,
                validation_data=validation_data,
                validation_split=validation_split,
                validation_batch_size=validation_batch_size,
                shuffle=shuffle,
                **kwargs,
            )
        x, y, sample_weight, batch_size, shuffle, validation_data, validation_split, validation_batch_size = (
            self._text_pipeline.fit_arguments(
                x, y, sample_weight, batch_size, shuffle, validation_data, validation_split, validation_batch_size
            )
        )
        x, shuffle = self._fit_data(x, shuffle)
        self._first_batch_pending = "fit"
        self._inspect_in_memory_first_batch(x, y, sample_weight, batch_size)
        try:
            with self._restoring_variables():
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
        self._check_entry("evaluate")
        if not kwargs.get("_use_cached_eval_dataset"):  # fit's validation data was checked when fit started
            validation.check_data_reaches_teacher(x, getattr(self._source, "cache", None), "evaluate()'s data")
        if text.holds_strings(x):
            x = self._text_pipeline.dataset(x, y, sample_weight, batch_size)
            y = sample_weight = batch_size = None
        with self._restoring_variables():
            return super().evaluate(x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """The student's `predict`; raw strings are tokenized by the student's preprocessor."""
        self._check_entry("predict")
        if text.holds_strings(x):
            x = self._text_pipeline.input_dataset(x, batch_size)
            batch_size = None
        with self._restoring_variables():
            return super().predict(x, batch_size=batch_size, **kwargs)

    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        """`keras.Model.train_on_batch`; raw strings are tokenized as in `fit`."""
        self._check_entry("train_on_batch")
        if text.holds_strings(x):
            x, y, sample_weight = self._text_pipeline.preprocess_batch(x, y, sample_weight)
        self._first_batch_pending = False if self._first_batch_inspected else "train_on_batch"
        try:
            with self._restoring_variables():
                return super().train_on_batch(x, y=y, sample_weight=sample_weight, **kwargs)
        finally:
            self._first_batch_pending = False

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        """`keras.Model.test_on_batch`; raw strings are tokenized as in `fit`."""
        self._check_entry("test_on_batch")
        if text.holds_strings(x):
            x, y, sample_weight = self._text_pipeline.preprocess_batch(x, y, sample_weight)
        with self._restoring_variables():
            return super().test_on_batch(x, y=y, sample_weight=sample_weight, **kwargs)

    def predict_on_batch(self, x):
        """The student's `predict_on_batch`; raw strings are tokenized by the student's preprocessor."""
        self._check_entry("predict_on_batch")
        if text.holds_strings(x):
            self._text_pipeline.check_can_read_strings()
            x = self._text_pipeline.preprocess_inputs(x)
        with self._restoring_variables():
            return super().predict_on_batch(x)

    # Batches without labels: the compiled loss and metrics compare predictions with labels.

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras's compiled loss; 0 for a batch without labels.

        The distiller's steps compute their loss in `keras_kd.objective`; Keras calls this only to
        build the compiled loss on the first batch, which needs labels. A label-free first batch
        leaves it unbuilt until a labelled batch (validation data, a later `fit`) builds it.
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

    # What the backend steps call (the contract in keras_kd/trainers/base.py).

    def _inspect_first_batch(self, data_batch):
        """Checks the first batch of `fit()` (and of the first `train_on_batch`) once, outside the compiled step.

        - The teacher's outputs on it must be finite (NaN or Inf would make every loss NaN): each
          teacher runs once more, eagerly, on this one batch (a cached batch's stored outputs are
          read instead); later batches cost nothing extra.
        - A batch without labels trains on the soft term alone, with weight 1: when that drops part of
          what was configured (`alpha > 0`, a compiled `loss`), a warning says so, once per `fit()`.
          A `DKD(warmup_epochs=N)` soft loss in a `train_on_batch` loop warns that only `fit()` ramps it.
        - Before the teacher runs, the inputs must fit the models: a dict that holds none of a model's
          input names (a dataset of dicts read whole as `x`) and input shapes a model does not take are
          refused, naming each model's inputs and `keras_kd.paired_inputs`.
        - Class-id labels must lie in `[0, classes)` (the compiled loss's `ignore_class` aside), and a
          teacher whose accuracy on the labelled batch is near chance gets a warning (untrained, or
          teacher and student swapped); both read the teacher outputs of the finiteness check above.
        """
        entry = self._first_batch_pending
        if not entry or data_batch is None:
            return
        self._first_batch_pending = False
        self._first_batch_inspected = True
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data_batch)
        x = self._augment_inputs(x, training=False)  # what a shape-changing augmentation (a crop) gives the models
        validation.check_first_batch_inputs(x, y, self._first_batch_readers(x))
        if self._augmentation is not None:
            self._augmentation.check_labels(y, self.alpha, self._soft_term)
        if not self.feature_only and y is None and not self._soft_term.needs_labels:
            _warn_label_free(self.alpha, self._compile_loss is not None, x)
        # An on-policy fit steps with train_on_batch and applies the warm-up per epoch itself.
        if self._variables.soft_loss_warmup is not None and entry == "train_on_batch" and self.on_policy is None:
            warnings.warn(
                f"soft_loss {self._soft_term.describe()} has warmup_epochs={self._soft_term.warmup_epochs}, which "
                f"fit() applies epoch by epoch; train_on_batch leaves the warm-up weight at {self.soft_loss_warmup}. "
                "In a loop of your own, set distiller.soft_loss_warmup = min((epoch + 1) / warmup_epochs, 1) at the "
                "start of every epoch.",
                UserWarning,
                stacklevel=2,
            )
        teacher_outputs = self._source.check_first_batch(x)
        if self.feature_only:
            return  # no logits to compare with labels, which the objective refuses
        classes = (validation.known_output_shape(self.student) or (None,))[-1]
        if classes is None and teacher_outputs:
            classes = teacher_outputs[0][1].shape[-1]
        validation.check_class_labels(y, classes, _ignore_class(self.loss))
        if self.on_policy is not None:
            return  # the labels are sampled completions: the teacher's accuracy on them says nothing
        for who, logits in teacher_outputs:
            validation.warn_if_near_chance(who, logits, y, sample_weight)

    def _inspect_in_memory_first_batch(self, x, y, sample_weight, batch_size):
        """`fit`'s first-batch inspection for in-memory data, from its first rows; otherwise left to the backend.

        Reading the rows creates no iterator (on TensorFlow one costs about two steps of a small model).
        A later fit on the very same arrays (a loop of short fits) does not inspect them again: the eager
        teacher forward would cost it 1-3 steps.
        """
        first = first_rows(x, y, sample_weight, batch_size or 32)
        if first is None:
            return
        if same_arrays(self._inspected_arrays, (x, y, sample_weight)):
            self._first_batch_pending = False
            return
        self._inspect_first_batch(first)
        self._inspected_arrays = array_refs((x, y, sample_weight))

    def _first_batch_readers(self, x):
        """`(role, model, what it reads of batch input x)` for the student and each teacher (None: a cached batch)."""
        readers = [("student", self.student, student_view(x))]
        teachers = self._source.models
        for index, model in enumerate(teachers):
            role = "teacher" if len(teachers) == 1 else f"teacher[{index}]"
            readers.append((role, model, None if is_cached(x) else teacher_view(x)))
        return readers

    def _augment_inputs(self, x, training=True):
        """The batch's one augmented view, what teacher and student both read (`training=False`: see `augment.py`)."""
        if self._augmentation is None:
            return x
        return self._augmentation(refuse_paired_or_cached(x), training=training)

    def _teacher_forward(self, x):
        """The teacher's logits and, per pair, its paired layers' outputs (from one forward pass, or a cache)."""
        return self._source.forward(x, self._bound_pairs)

    def _student_forward(self, x, training):
        """The student's logits and, per pair, its paired layers' outputs: one forward pass."""
        with self._bound_pairs.capture("student") as captured:
            if self._student_split is None:
                logits = self.student(student_view(x), training=training)
            else:
                logits = self._student_split.forward(student_view(x), training, self.chunk_size, self._auto_chunk_bytes)
        return logits, self._bound_pairs.features(captured, "student", logits)

    def _update_metrics(self, loss, terms, x, y, student_logits, sample_weight):
        """Updates the loss trackers and compiled metrics; returns the logs of this batch."""
        batch_size = ops.shape(keras.tree.flatten(x)[0])[0]
        self.term_means.update_state({"loss": loss, **terms}, batch_size)
        if y is None:
            # Without labels only the label-free numbers mean anything.
            logs = self.term_means.result()
            logs.pop("hard_loss", None)
            return logs
        if student_logits is None:  # chunked logits, whose metrics `_metrics_before_update` updated
            return self.get_metrics_result()
        if isinstance(student_logits, TokenLogits):
            return self._update_metrics_by_chunk(x, y, student_logits, sample_weight)
        return self.compute_metrics(x, y, student_logits, sample_weight)

    def _metrics_before_update(self, x, y, student_logits, sample_weight):
        """Where a step updates the weights before its metrics: chunked logits' metrics now (their head runs
        again, and must see the weights the loss saw); returns what `_update_metrics` is to be given."""
        if not isinstance(student_logits, TokenLogits) or y is None:
            return student_logits
        self._update_metrics_by_chunk(x, y, student_logits, sample_weight)
        return None

    def _update_metrics_by_chunk(self, x, y, student_logits, sample_weight):
        """The compiled metrics of chunked logits, updated chunk by chunk (each chunk's logits computed once more).

        Each position of a chunk is passed as an example of its own: Keras's mean metrics average an
        example's positions before averaging examples, which, every example having the same positions,
        is the mean over all positions, and so the sum of the chunks' updates.
        """
        if self._compile_metrics is None:
            return self.get_metrics_result()
        positions, chunk = student_logits.positions, student_logits.chunk_positions
        if sample_weight is not None and len(sample_weight.shape) == 1:
            sample_weight = ops.broadcast_to(ops.expand_dims(sample_weight, -1), ops.shape(y)[:2])
        for start in range(0, positions, chunk):
            stop = min(start + chunk, positions)
            logits = ops.stop_gradient(student_logits.logits(student_logits.chunk(start, stop - start)))
            weight = None if sample_weight is None else _one_per_row(sample_weight[:, start:stop])
            self.compute_metrics(x, _one_per_row(y[:, start:stop]), _one_per_row(logits), weight)
        return self.get_metrics_result()

    def _enable_hint_warmup_masks(self):
        """Prepares the gradient masks of the hint warm-up; called by `keras_kd.callbacks.HintWarmup`.

        Raises when a model along a hinted path has no graph (subclassed), since
        then the variables past the hinted layer cannot be told apart.
        """
        if self._variables.hint_warmup is None:
            raise ValueError(
                "HintWarmup needs a keras_kd.Hint in the distiller's pairs; this distiller has "
                f"{[type(p).__name__ for p in self.pairs] or 'no pairs'}."
            )
        if self._objective.warmup_variable_ids is None:
            self._objective.warmup_variable_ids = {id(v) for v in self._bound_pairs.warmup_variables(self.student)}
            # A step traced before the masks existed would not mask: trace again.
            self.make_train_function(force=True)

    # Serialization.

    def get_config(self):
        config = {
            "name": self.name,
            "teacher": self._source.config(),
            "student": serialize_model(self.student),
            "temperature": None if self.feature_only else self.temperature,
            "alpha": None if self.feature_only else self.alpha,
            "pairs": [keras.saving.serialize_keras_object(pair) for pair in self.pairs],
            "soft_loss": soft_losses.serialize(self.soft_loss),
            "teacher_weights": self.teacher_weights,
            "chunk_size": self.chunk_size,
            "on_policy": None if self.on_policy is None else keras.saving.serialize_keras_object(self.on_policy),
        }
        if self.preprocessor is not None:
            config["preprocessor"] = keras.saving.serialize_keras_object(self.preprocessor)
        if self.augment is not None:
            config["augment"] = serialize_augment(self._augmentation)
        # A student sharing a teacher's KerasHub preprocessor (keras_kd.hub.student_from_teacher) must share it again
        # when loaded: Keras saves the shared object's assets (the vocabulary) once, and its nested configs lose the
        # sharing, so a second copy would load without a vocabulary (issue 17).
        shared = getattr(self.student, "preprocessor", None)
        for index, model in enumerate(getattr(self._source, "models", ()) if shared is not None else ()):
            if getattr(model, "preprocessor", None) is shared:
                config["student_preprocessor_from_teacher"] = index
                break
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = deserialize_teacher(config["teacher"])
        teachers = config["teacher"] if isinstance(config["teacher"], list) else [config["teacher"]]
        student, index = config["student"], config.pop("student_preprocessor_from_teacher", None)
        if index is not None:  # the teacher's preprocessor object, as when saved
            student = {**student, "config": {**student["config"], "preprocessor": teachers[index].preprocessor}}
        config["student"] = keras.saving.deserialize_keras_object(student)
        # Their own optimizers never train inside a distiller and their compile configs are not saved, but KerasHub
        # tasks compile themselves when built: the optimizer state saved with them (a fine-tuned teacher's moments)
        # would not fit, and Keras would warn that it skips it. Skip it once, silently (issue 17).
        optimizers = (getattr(m, "optimizer", None) for m in (*teachers, config["student"]))
        for optimizer in {id(o): o for o in optimizers if o}.values():
            optimizer.load_own_variables = lambda store, optimizer=optimizer: delattr(optimizer, "load_own_variables")
        config["pairs"] = [keras.saving.deserialize_keras_object(pair) for pair in config.get("pairs", [])]
        config["soft_loss"] = soft_losses.deserialize(config.get("soft_loss", "kl"))
        if config.get("on_policy") is not None:
            config["on_policy"] = keras.saving.deserialize_keras_object(config["on_policy"])
        if config.get("preprocessor") is not None:
            config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        if config.get("augment") is not None:
            config["augment"] = deserialize_augment(config["augment"])
        return cls(**config)


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


def _warn_label_free(alpha, has_compiled_loss, x=None):
    unused = []
    if alpha > 0:
        unused.append(f"alpha={alpha:g} (the soft term gets weight 1, not 1 - alpha)")
    if has_compiled_loss:
        unused.append("the loss given to compile()")
    if not unused:
        return
    fix = "give the data labels, (x, y)"
    if isinstance(x, dict) and not is_cached(x):
        keys = sorted(x)
        fix = (
            f"give the data labels: fit() reads a batch as x, (x, y) or (x, y, sample_weight), so this dict (keys "
            f"{keys}) is all x. If one of its keys holds the labels, map the dataset to (x, y) tuples first, e.g. "
            "dataset.map(lambda d: ({k: v for k, v in d.items() if k != 'label'}, d['label']))"
        )
    warnings.warn(
        f"The first batch of this fit() has no labels, so {' and '.join(unused)} will not be used: label-free "
        "batches train on the soft term alone. For label-free distillation pass alpha=0 and no compile loss (the "
        f"same objective, without this warning); otherwise {fix}.",
        UserWarning,
        stacklevel=2,
    )


def _check_chunkable_loss(loss):
    """A chunked distiller sums a compiled loss over chunks as a mean over positions: refuse other reductions."""
    reduction = getattr(loss, "reduction", "sum_over_batch_size")
    if isinstance(loss, keras.losses.Loss) and reduction != "sum_over_batch_size":
        raise ValueError(
            f"compile(loss={type(loss).__name__}(reduction={reduction!r})): this distiller computes the hard-label "
            "term a chunk of positions at a time (chunk_size) and adds the chunks' values as means over positions, "
            "which is the loss's value only with reduction='sum_over_batch_size' (Keras's default). Use that "
            "reduction, or Distiller(..., chunk_size=None) for the full logits."
        )


def _one_per_row(values):
    """`(batch, positions, ...)` -> `(batch * positions, 1, ...)`: each position an example."""
    return ops.reshape(values, (-1, 1, *values.shape[2:]))


def _ignore_class(loss):
    """The `ignore_class` of a compiled Keras cross-entropy (labels it skips), or None."""
    get_config = getattr(loss, "get_config", None)
    try:
        return get_config().get("ignore_class") if get_config is not None else None
    except (NotImplementedError, TypeError):
        return None


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


def _with_soft_loss_warmup(callbacks):
    """`callbacks` plus a `SoftLossWarmup` (unless one is there): `fit` always applies the warm-up."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        if not any(isinstance(c, SoftLossWarmup) for c in callbacks.callbacks):
            callbacks.append(SoftLossWarmup())
        return callbacks
    callbacks = list(callbacks or [])
    if not any(isinstance(c, SoftLossWarmup) for c in callbacks):
        callbacks.append(SoftLossWarmup())
    return callbacks
