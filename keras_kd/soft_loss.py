"""Resolving the distiller's `soft_loss` argument into one `SoftTerm`.

`Distiller(soft_loss=...)` takes `"kl"` (Hinton et al.), `"reverse_kl"`, a `keras_kd.losses.SoftLoss`
object (`GeneralizedJSD`, `DKD`, one of your own) or a callable
`(teacher_logits, student_logits, temperature, sample_weight) -> scalar` (one with an attribute
`needs_labels = True` also receives the labels). `resolve` checks it once, at construction, and
returns a `SoftTerm` with the same call for all of them,
`term(teacher_logits, student_logits, temperature, sample_weight, labels) -> scalar`, and the
properties the distiller reads: `needs_labels`, `warmup_epochs` and `warmup_weight(epoch)`.
"""

import inspect
import warnings

import keras
from keras import ops

from keras_kd import losses
from keras_kd.losses._common import REDUCTIONS, weighted_mean

BUILT_IN = {"kl": losses.soft_target_kl, "reverse_kl": losses.reverse_kl}


class SoftTerm:
    """A resolved soft loss: `term(t, s, temperature, sample_weight, labels)` and what the distiller reads."""

    def __init__(self, spec, function, needs_labels=False, warmup_epochs=0, per_position=None, reduction=None):
        self.spec = spec
        self.function = function
        self.needs_labels = needs_labels
        self.warmup_epochs = warmup_epochs
        # `(t, s, temperature, labels) -> (batch, positions)` values and their reduction; None for a callable.
        self.per_position = per_position
        self.reduction = reduction or "sum_over_batch_size"

    def __call__(self, teacher_logits, student_logits, temperature, sample_weight, labels=None):
        return self.function(teacher_logits, student_logits, temperature, sample_weight, labels)

    def warmup_weight(self, epoch):
        """The soft term's weight in epoch `epoch` (from 0); 1.0 without a warm-up."""
        if isinstance(self.spec, losses.SoftLoss):
            return float(self.spec.warmup_weight(epoch))
        return 1.0

    def replaced(self, function, per_position=None):
        """The same soft loss computed by `function` (a source that stores the teacher differently)."""
        return SoftTerm(self.spec, function, self.needs_labels, self.warmup_epochs, per_position, self.reduction)

    def chunk_numerator(self, teacher_logits, student_logits, temperature, weight, labels, count):
        """This chunk's part of the numerator of the term (see `keras_kd.chunked_terms`).

        `weight` is the chunk's `(batch, positions)` float32 weights (None without `sample_weight`) and
        `count` its number of positions. A callable's value (a mean) counts `count` times.
        """
        if self.per_position is None:
            return ops.cast(self(teacher_logits, student_logits, temperature, weight, labels), "float32") * count
        values = ops.cast(self.per_position(teacher_logits, student_logits, temperature, labels), "float32")
        return ops.sum(values if weight is None else values * weight)

    def denominator(self, weight, count):
        """What the numerators' sum is divided by: the positions, or the weights' sum (`mean_with_sample_weight`)."""
        if weight is not None and self.per_position is not None and self.reduction == "mean_with_sample_weight":
            # All weights 0: the sum of the numerators is 0 too, and the term 0 (as `divide_no_nan` gives).
            total = ops.sum(weight)
            return ops.where(ops.equal(total, 0.0), ops.ones_like(total), total)
        return count

    def describe(self):
        """A short name for messages: `'kl'`, `DKD(alpha=1.0, beta=8.0)`, a function's name."""
        spec = self.spec
        if isinstance(spec, str):
            return repr(spec)
        if isinstance(spec, losses.DKD):
            return f"DKD(alpha={spec.alpha}, beta={spec.beta})"
        return getattr(spec, "__name__", type(spec).__name__)


def resolve(spec, temperature):
    """The `SoftTerm` of `spec` (see `Distiller`'s `soft_loss`); raises on anything else."""
    if isinstance(spec, str):
        if spec not in BUILT_IN:
            raise ValueError(
                f"soft_loss={spec!r} is not known. Use 'kl' (forward KL, Hinton et al.), 'reverse_kl', a loss "
                "object from keras_kd.losses (e.g. GeneralizedJSD(beta=0.5) or DKD()) or a callable "
                "(teacher_logits, student_logits, temperature, sample_weight) -> scalar."
            )
        function = BUILT_IN[spec]
        return SoftTerm(
            spec,
            lambda t, s, temp, weight, labels=None: weighted_mean(function(t, s, temp), weight),
            per_position=lambda t, s, temp, labels=None: function(t, s, temp),
        )
    if isinstance(spec, losses.SoftLoss):
        return _resolve_loss_object(spec, temperature)
    if isinstance(spec, keras.losses.Loss):
        raise ValueError(
            f"soft_loss {type(spec).__name__} is a Keras loss without a temperature-aware `per_position` method. "
            "Use a loss from keras_kd.losses (or subclass keras_kd.losses.SoftLoss), or a callable "
            "(teacher_logits, student_logits, temperature, sample_weight) -> scalar."
        )
    if callable(spec):
        if getattr(spec, "needs_labels", False) is True:
            return SoftTerm(spec, spec, needs_labels=True)
        return SoftTerm(spec, lambda t, s, temp, weight, labels=None: spec(t, s, temp, weight))
    raise TypeError(
        f"soft_loss must be 'kl', 'reverse_kl', a keras_kd.losses object (GeneralizedJSD, DKD, ...) or a callable; "
        f"got {spec!r}."
    )


def _resolve_loss_object(spec, temperature):
    own = spec.temperature
    if own is not None and float(own) != float(temperature):
        raise ValueError(
            f"soft_loss {type(spec).__name__}(temperature={own}) and Distiller(temperature={temperature}) "
            "disagree. The distiller's temperature (the one schedulers change) is the one used: set it on "
            "the Distiller and leave the loss's at that value."
        )
    if spec.dtype != keras.config.floatx():
        raise ValueError(
            f"soft_loss {type(spec).__name__}(dtype={spec.dtype!r}): the distiller computes the soft term in float32 "
            "from log-softmax whatever the dtypes of the models, so the loss's dtype would not be applied. "
            "Drop dtype= from the loss (the models' dtype policies set their compute dtype)."
        )
    reduction = spec.reduction if spec.reduction in REDUCTIONS else "sum_over_batch_size"
    if spec.needs_labels:

        def per_position(t, s, temp, labels):
            return spec.per_position(t, s, temp, labels=labels)

    else:

        def per_position(t, s, temp, labels=None):
            return spec.per_position(t, s, temp)

    def term(t, s, temp, weight, labels=None):
        return weighted_mean(per_position(t, s, temp, labels), weight, reduction)

    return SoftTerm(
        spec,
        term,
        needs_labels=spec.needs_labels,
        warmup_epochs=int(spec.warmup_epochs or 0),
        per_position=per_position,
        reduction=reduction,
    )


def serialize(spec):
    """The soft loss as a config; warns when a file saved with it could not be loaded as it is.

    Keras records a plain function by its name only (a lambda by its bytecode): loading needs it
    registered, or passed in `custom_objects` (a lambda, `safe_mode=False`).
    """
    if isinstance(spec, str):
        return spec
    if (
        inspect.isfunction(spec)
        and keras.saving.get_registered_object(keras.saving.get_registered_name(spec)) is not spec
    ):
        name = spec.__name__
        fix = (
            "keras.saving.load_model(path, safe_mode=False) after defining it (better: a named function)"
            if name == "<lambda>"
            else f"keras.saving.load_model(path, custom_objects={{{name!r}: {name}}}), or decorate it with "
            "@keras.saving.register_keras_serializable() so that it loads wherever it is defined or imported"
        )
        warnings.warn(
            f"soft_loss {name} is a plain function: a saved distiller records only its "
            f"{'bytecode' if name == '<lambda>' else 'name'}, so keras.saving.load_model cannot find it on its "
            f"own. Load the file with {fix}.",
            UserWarning,
            stacklevel=2,
        )
    return keras.saving.serialize_keras_object(spec)


def deserialize(config):
    return config if isinstance(config, str) else keras.saving.deserialize_keras_object(config)
