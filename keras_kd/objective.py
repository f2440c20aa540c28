"""The loss of one batch, read top to bottom in `Objective.__call__`.

For a labelled batch,

    L = alpha * L_hard(y, s) + (1 - alpha) * w_soft * T**2 * D(t, s) + sum_pairs L_pair + R(student)

where `D` is the soft loss (forward KL by default; its `T**2` is applied by the loss itself), `w_soft`
the soft loss's warm-up weight (1 without one), `L_pair` each layer pair's weighted term and `R` the
student's regularization losses. A batch without labels trains on `w_soft * T**2 * D + pairs + R`.
With `soft_loss=None` (feature-only, general distillation) there is no soft or hard term: the loss
is `pairs + R`, and a batch with labels is refused.
While FitNets' hint warm-up is on, the loss is the hint terms alone, and `mask_gradients` zeroes the
gradients of the variables past the hinted layers.

Binary heads: when both models give one logit per example (`Dense(1)`), the soft loss receives the
two-class logits `[0, z]` (Bernoulli distributions, `keras_kd.losses.two_class_logits`) and the default
hard loss is binary cross-entropy from logits with 0/1 labels.

Per-replica scaling: under `tf.distribute` each replica averages over its own slice of the batch and
the optimizer sums the replicas' gradients, so `loss_for_gradients` divides by the replica count once.
Keras's own loss objects (a compiled `loss`, a pair whose loss is a `keras.losses.Loss`) already divide
by it, which `Objective` multiplies back out so that every term is on one scale.
"""

import keras
from keras import ops

from keras_kd import validation
from keras_kd.data.batch_keys import student_padding_mask, teacher_padding_mask
from keras_kd.features.pairs import Hint
from keras_kd.features.pooling import pool
from keras_kd.losses._common import weighted_mean
from keras_kd.losses.logits import two_class_logits
from keras_kd.token_logits import TokenLogits


class Objective:
    """The distillation loss of one batch and the gradient masks of the hint warm-up.

    Args:
        source: the distiller's teacher source (`keras_kd.teachers`), which turns its logits into
            soft targets (mixing several teachers).
        soft_term: the resolved soft loss (`keras_kd.soft_loss.SoftTerm`).
        pairs: the bound layer pairs (`keras_kd.features.binding.BoundPairs`).
        student: the student model, whose regularization losses are added.
        variables: the distiller's scalar variables `temperature`, `alpha` and, where they exist,
            `soft_loss_warmup` and `hint_warmup` (None otherwise).
        compiled_loss: returns the loss given to `compile()`, or None for the default cross-entropy.
        replicas: returns the number of replicas the step runs on.
    """

    def __init__(self, source, soft_term, pairs, student, variables, compiled_loss, replicas):
        self.source = source
        self.soft_term = soft_term
        self.pairs = pairs
        self.student = student
        self.variables = variables
        self.compiled_loss = compiled_loss
        self.replicas = replicas
        self.warmup_variable_ids = None  # set by the hint warm-up (see `Distiller`)
        self.chunked_terms = None  # a `keras_kd.chunked_terms.ChunkedTerms` where the distiller chunks

    def __call__(self, x, y, sample_weight, teacher_outputs, student_outputs):
        """`(loss, terms)` of one batch; `terms` holds the logged parts (`hard_loss`, `soft_loss`, pairs)."""
        v = self.variables
        (teacher_logits, teacher_features), (student_logits, student_features) = teacher_outputs, student_outputs
        if self.soft_term is None:  # feature-only (general) distillation: the pair terms alone
            self._refuse_labels(y)
            loss, terms = ops.zeros((), dtype="float32"), {}
        elif isinstance(student_logits, TokenLogits):
            self._check_labels_available(y)
            loss, soft, hard = self.chunked_terms(teacher_logits, student_logits, y, sample_weight)
            terms = {"soft_loss": soft} if hard is None else {"soft_loss": soft, "hard_loss": hard}
        else:
            loss, terms = self._dense_terms(teacher_logits, student_logits, y, sample_weight)
        pair_terms = self._pair_terms(x, sample_weight, teacher_features, student_features)
        terms.update(pair_terms)
        for value in pair_terms.values():
            loss = loss + value
        regularization = self.student.losses
        if regularization:
            loss = loss + ops.sum([ops.cast(ops.sum(r), "float32") for r in regularization])
        if v.hint_warmup is not None:
            # FitNets stage 1: the hint terms alone while the warm-up flag is 1.
            hints = [value for pair, value in zip(self.pairs.pairs, pair_terms.values()) if isinstance(pair, Hint)]
            loss = v.hint_warmup * sum(hints) + (1.0 - v.hint_warmup) * loss
        return loss, terms

    def _dense_terms(self, teacher_logits, student_logits, y, sample_weight):
        v = self.variables
        if isinstance(teacher_logits, TokenLogits):  # a teacher split at its head, a student that is not
            teacher_logits = teacher_logits.dense()
        # Binary heads (one logit): the soft loss compares Bernoulli distributions, as softmaxes of [0, z].
        teacher_logits, soft_logits = _two_classes_if_binary(teacher_logits, student_logits)
        teacher_logits = self.source.targets(teacher_logits, v.temperature)
        validation.check_output_shapes(_logits_shape(teacher_logits, soft_logits), soft_logits.shape)
        soft = self._soft(teacher_logits, soft_logits, sample_weight, y)
        terms = {"soft_loss": soft}
        if y is None:
            return soft, terms
        terms["hard_loss"] = self._hard(y, student_logits, sample_weight)
        return v.alpha * terms["hard_loss"] + (1.0 - v.alpha) * soft, terms

    def hard_numerator(self, y, logits, weight, count):
        """One chunk's part of the hard term's numerator: `sum_p w_p * CE_p` (see `keras_kd.chunked_terms`).

        A compiled loss gives a mean over the chunk (Keras's `"sum_over_batch_size"`), which counts `count` times.
        """
        compiled = self.compiled_loss()
        if compiled is not None:
            return ops.cast(compiled(y, logits, weight), "float32") * self.replicas() * count
        logits = ops.cast(logits, "float32")
        if validation.label_kind(y.shape, logits.shape) == "sparse":
            if len(y.shape) == len(logits.shape):
                y = ops.squeeze(y, axis=-1)
            values = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        else:
            values = keras.losses.categorical_crossentropy(ops.cast(y, "float32"), logits, from_logits=True)
        return ops.sum(values if weight is None else values * weight)

    def loss_for_gradients(self, loss, optimizer):
        """What a step differentiates: the loss over the replica count, scaled by the optimizer (float16)."""
        replicas = self.replicas()
        return optimizer.scale_loss(loss / replicas if replicas != 1 else loss)

    def logged_loss(self, loss, trainable_values):
        """The loss a training step logs: `loss`, or NaN once a trainable weight is NaN or Inf after the update.

        `trainable_values` are the distiller's trainable weights (the student's and the regressors')
        after the optimizer's update. A NaN input row, or a gradient that overflows, turns weights
        NaN while the loss can stay finite (TensorFlow's compiled ReLU maps NaN to 0); the logged
        `loss` then says so, and `keras.callbacks.TerminateOnNaN` stops the run. One sum per weight
        inside the compiled step, no host synchronization. Under a `LossScaleOptimizer` (float16)
        a step with non-finite gradients is skipped by the optimizer and leaves the weights finite.
        """
        if not trainable_values:
            return loss
        total = ops.sum(ops.stack([ops.sum(ops.cast(value, "float32")) for value in trainable_values]))
        return ops.where(ops.isfinite(total), loss, ops.cast(float("nan"), loss.dtype))

    def mask_gradients(self, gradients, variables):
        """During a hint warm-up, zeroes the gradients of variables past the hinted layers."""
        if self.warmup_variable_ids is None:
            return gradients
        keep = 1.0 - self.variables.hint_warmup
        return [
            g if g is None or id(v) in self.warmup_variable_ids else g * ops.cast(keep, g.dtype)
            for g, v in zip(gradients, variables)
        ]

    # The terms.

    def _refuse_labels(self, y):
        if y is not None:
            raise ValueError(
                "This distiller has soft_loss=None (feature-only distillation: the pair terms alone, no hard or soft "
                f"term), but the batch has labels of shape {tuple(y.shape)}, which it would not use. Feed inputs only "
                "(fit(x), or a dataset yielding x alone, e.g. dataset.map(lambda x, y: x)); to learn from the labels "
                "distil the task afterwards with a soft loss (see docs/general-distillation.md)."
            )

    def _check_labels_available(self, y):
        term = self.soft_term
        if term.needs_labels and y is None:
            raise ValueError(
                f"soft_loss {term.describe()} needs the labels of every batch (it splits the soft targets at the "
                "true class), but this batch has none. Pass labels (fit(x, y), or a dataset yielding (x, y)), or use "
                "another soft_loss ('kl', 'reverse_kl', GeneralizedJSD) for unlabelled data."
            )

    def _soft(self, teacher_logits, student_logits, sample_weight, y):
        term = self.soft_term
        self._check_labels_available(y)
        soft = ops.cast(term(teacher_logits, student_logits, self.variables.temperature, sample_weight, y), "float32")
        if len(soft.shape):
            raise ValueError(
                f"soft_loss {term.spec!r} returned a value of shape {tuple(soft.shape)}; it must return a "
                "scalar (average over examples and positions, using sample_weight)."
            )
        if self.variables.soft_loss_warmup is not None:
            soft = self.variables.soft_loss_warmup * soft
        return soft

    def _hard(self, y, logits, sample_weight):
        compiled = self.compiled_loss()
        if compiled is not None:
            return ops.cast(compiled(y, logits, sample_weight), "float32") * self.replicas()
        logits = ops.cast(logits, "float32")
        kind = validation.label_kind(y.shape, logits.shape)
        if logits.shape[-1] == 1:
            # One logit: binary cross-entropy from logits with 0/1 labels (or probabilities of class 1).
            y = ops.cast(y, "float32")
            if len(y.shape) < len(logits.shape):
                y = ops.expand_dims(y, axis=-1)
            return weighted_mean(keras.losses.binary_crossentropy(y, logits, from_logits=True), sample_weight)
        if kind == "sparse":
            if len(y.shape) == len(logits.shape):
                y = ops.squeeze(y, axis=-1)
            values = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        else:
            values = keras.losses.categorical_crossentropy(ops.cast(y, "float32"), logits, from_logits=True)
        return weighted_mean(values, sample_weight)

    def _pair_terms(self, x, sample_weight, teacher_features, student_features):
        if not self.pairs.pairs:
            return {}
        padding_mask = student_padding_mask(x)
        teacher_mask = teacher_padding_mask(x)
        terms = {}
        for pair, name, t_features, s_features in zip(
            self.pairs.pairs, self.pairs.log_names, teacher_features, student_features
        ):
            if pair.pooling is not None:
                t_features = [pool(f, teacher_mask, pair.pooling) for f in t_features]
                s_features = [pool(f, padding_mask, pair.pooling) for f in s_features]
            weight = _pair_sample_weight(pair, sample_weight, padding_mask, s_features)
            value = pair.compute(t_features, s_features, weight)
            if pair.scaled_for_distribution:
                value = value * self.replicas()
            terms[name] = value
        return terms


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


def _two_classes_if_binary(teacher_logits, student_logits):
    """Both models' logits as two-class logits `[0, z]` when each gives one logit per example; else unchanged.

    `softmax([0, z] / T)` is `(1 - sigmoid(z / T), sigmoid(z / T))`, so every soft loss (forward or
    reverse KL, generalized JSD, DKD, a callable) receives the Bernoulli distributions of the two
    binary classifiers, where a softmax over the single logit would be 1 and the loss always 0.
    """
    if isinstance(teacher_logits, tuple) or student_logits.shape[-1] != 1 or teacher_logits.shape[-1] != 1:
        return teacher_logits, student_logits
    return two_class_logits(teacher_logits), two_class_logits(student_logits)


def _logits_shape(teacher_logits, student_logits):
    """The teacher's logits shape; for a top-k cache's `(values, indices, tail)`, as if dense."""
    if isinstance(teacher_logits, tuple):
        return (*teacher_logits[0].shape[:-1], student_logits.shape[-1])
    return teacher_logits.shape
