"""Choosing the distiller's soft term: forward KL (Hinton et al.), reverse KL, a loss object, or your own.

`resolve(spec, temperature)` turns the `soft_loss` argument of `Distiller` into
`term(teacher_logits, student_logits, temperature, sample_weight) -> scalar`. The
temperature passed at each step is the distiller's variable, so schedules reach
every choice.
"""

import keras

from keras_kd import losses
from keras_kd.losses._reduction import REDUCTIONS, weighted_mean

NAMES = {"kl": "soft_target_kl", "reverse_kl": "reverse_kl"}


def resolve(spec, temperature):
    """The soft term for `spec` (see `Distiller`'s `soft_loss`); raises on anything else."""
    if isinstance(spec, str):
        if spec not in NAMES:
            raise ValueError(
                f"soft_loss={spec!r} is not known. Use 'kl' (forward KL, Hinton et al.), 'reverse_kl', a loss "
                "object from keras_kd.losses (e.g. GeneralizedJSD(beta=0.5)) or a callable "
                "(teacher_logits, student_logits, temperature, sample_weight) -> scalar."
            )
        per_position = getattr(losses, NAMES[spec])
        return lambda t, s, temp, weight: weighted_mean(per_position(t, s, temp), weight)
    if hasattr(spec, "per_position"):
        own = getattr(spec, "temperature", None)
        if own is not None and float(own) != float(temperature):
            raise ValueError(
                f"soft_loss {type(spec).__name__}(temperature={own}) and Distiller(temperature={temperature}) "
                "disagree. The distiller's temperature (the one schedulers change) is the one used: set it on "
                "the Distiller and leave the loss's at that value."
            )
        reduction = getattr(spec, "reduction", None)
        reduction = reduction if reduction in REDUCTIONS else "sum_over_batch_size"
        return lambda t, s, temp, weight: weighted_mean(spec.per_position(t, s, temp), weight, reduction)
    if isinstance(spec, keras.losses.Loss):
        raise ValueError(
            f"soft_loss {type(spec).__name__} is a Keras loss without a temperature-aware `per_position` method. "
            "Use a loss from keras_kd.losses, or a callable (teacher_logits, student_logits, temperature, "
            "sample_weight) -> scalar."
        )
    if callable(spec):
        return spec
    raise TypeError(f"soft_loss must be 'kl', 'reverse_kl', a keras_kd.losses object or a callable; got {spec!r}.")


def serialize(spec):
    return spec if isinstance(spec, str) else keras.saving.serialize_keras_object(spec)


def deserialize(config):
    return config if isinstance(config, str) else keras.saving.deserialize_keras_object(config)
