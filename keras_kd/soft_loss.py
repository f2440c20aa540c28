"""Choosing the distiller's soft term: forward KL (Hinton et al.), reverse KL, a loss object, or your own.

`resolve(spec, temperature)` turns the `soft_loss` argument of `Distiller` into
`term(teacher_logits, student_logits, temperature, sample_weight, labels) -> scalar`. The
temperature passed at each step is the distiller's variable, so schedules reach
every choice. `labels` is the batch's `y`: only a soft loss that declares
`needs_labels = True` (`keras_kd.losses.DKD`, or a callable with that attribute)
reads it, and then a batch without labels is an error.

A soft loss with `warmup_epochs = N > 0` (`DKD(warmup_epochs=N)`) has its term multiplied
by a weight that `Distiller.fit` sets at the start of every epoch (`SoftLossWarmup`).
"""

import keras

from keras_kd import losses
from keras_kd.losses._reduction import REDUCTIONS, weighted_mean

NAMES = {"kl": "soft_target_kl", "reverse_kl": "reverse_kl"}


def needs_labels(spec):
    """Whether the soft loss `spec` reads the batch's labels (`DKD` does)."""
    return not isinstance(spec, str) and bool(getattr(spec, "needs_labels", False))


def describe(spec):
    """A short name of the soft loss for messages: `'kl'`, `DKD(alpha=1.0, beta=8.0)`, a function's name."""
    if isinstance(spec, str):
        return repr(spec)
    if isinstance(spec, losses.DKD):
        return f"DKD(alpha={spec.alpha}, beta={spec.beta})"
    return getattr(spec, "__name__", type(spec).__name__)


def warmup_epochs(spec):
    """The warm-up length of a soft loss object (`DKD(warmup_epochs=N)`), 0 when it has none."""
    return 0 if isinstance(spec, str) else int(getattr(spec, "warmup_epochs", 0) or 0)


def warmup_weight(spec, epoch):
    """The soft term's weight in epoch `epoch` (from 0): the loss's own `warmup_weight`, else `min((e + 1) / N, 1)`."""
    own = getattr(spec, "warmup_weight", None)
    if own is not None:
        return float(own(epoch))
    epochs = warmup_epochs(spec)
    return 1.0 if not epochs else min((int(epoch) + 1) / epochs, 1.0)


def resolve(spec, temperature):
    """The soft term for `spec` (see `Distiller`'s `soft_loss`); raises on anything else."""
    if isinstance(spec, str):
        if spec not in NAMES:
            raise ValueError(
                f"soft_loss={spec!r} is not known. Use 'kl' (forward KL, Hinton et al.), 'reverse_kl', a loss "
                "object from keras_kd.losses (e.g. GeneralizedJSD(beta=0.5) or DKD()) or a callable "
                "(teacher_logits, student_logits, temperature, sample_weight) -> scalar."
            )
        per_position = getattr(losses, NAMES[spec])
        return lambda t, s, temp, weight, labels=None: weighted_mean(per_position(t, s, temp), weight)
    if hasattr(spec, "per_position"):
        own = getattr(spec, "temperature", None)
        if own is not None and float(own) != float(temperature):
            raise ValueError(
                f"soft_loss {type(spec).__name__}(temperature={own}) and Distiller(temperature={temperature}) "
                "disagree. The distiller's temperature (the one schedulers change) is the one used: set it on "
                "the Distiller and leave the loss's at that value."
            )
        dtype = getattr(spec, "dtype", None)
        if isinstance(spec, keras.losses.Loss) and dtype != keras.config.floatx():
            raise ValueError(
                f"soft_loss {type(spec).__name__}(dtype={dtype!r}): the distiller computes the soft term in float32 "
                "from log-softmax whatever the dtypes of the models, so the loss's dtype would not be applied. "
                "Drop dtype= from the loss (the models' dtype policies set their compute dtype)."
            )
        reduction = getattr(spec, "reduction", None)
        reduction = reduction if reduction in REDUCTIONS else "sum_over_batch_size"
        if needs_labels(spec):
            return lambda t, s, temp, weight, labels: weighted_mean(
                spec.per_position(t, s, temp, labels=labels), weight, reduction
            )
        return lambda t, s, temp, weight, labels=None: weighted_mean(spec.per_position(t, s, temp), weight, reduction)
    if isinstance(spec, keras.losses.Loss):
        raise ValueError(
            f"soft_loss {type(spec).__name__} is a Keras loss without a temperature-aware `per_position` method. "
            "Use a loss from keras_kd.losses, or a callable (teacher_logits, student_logits, temperature, "
            "sample_weight) -> scalar."
        )
    if callable(spec):
        if needs_labels(spec):
            return spec
        return lambda t, s, temp, weight, labels=None: spec(t, s, temp, weight)
    raise TypeError(
        f"soft_loss must be 'kl', 'reverse_kl', a keras_kd.losses object (GeneralizedJSD, DKD, ...) or a callable; "
        f"got {spec!r}."
    )


def serialize(spec):
    return spec if isinstance(spec, str) else keras.saving.serialize_keras_object(spec)


def deserialize(config):
    return config if isinstance(config, str) else keras.saving.deserialize_keras_object(config)


class SoftLossWarmup(keras.callbacks.Callback):
    """Sets a distiller's soft-loss warm-up weight at the start of every epoch.

    `Distiller.fit` adds one by itself when its soft loss has `warmup_epochs > 0` (e.g.
    `keras_kd.losses.DKD(warmup_epochs=20)`); the weight of epoch `e` (from 0, counting
    `initial_epoch`) is `soft_loss.warmup_weight(e)`. The weight is logged as
    `soft_loss_warmup` at the end of every epoch.
    """

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        self.model.soft_loss_warmup = self.schedule(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["soft_loss_warmup"] = self.model.soft_loss_warmup
