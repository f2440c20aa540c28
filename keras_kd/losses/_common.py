"""What every loss shares: argument checks, label and shape rules, sample weights and the reduction.

`keras_kd.losses` is a leaf package (Keras, NumPy and its own modules only); the checks that
`keras_kd.validation` applies to a distiller's settings are built on the ones here, never the
reverse.
"""

import math
import numbers

from keras import ops

REDUCTIONS = ("sum_over_batch_size", "mean_with_sample_weight")

TEMPERATURE_ADVICE = "T = 1 is the plain softmax; Hinton et al. use 2 to 20 to soften the teacher's probabilities."


# ----------------------------------------------------------------------------- arguments


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"Unknown reduction {reduction!r}. Use one of {REDUCTIONS}: "
            "'sum_over_batch_size' divides the weighted sum by the number of values, "
            "'mean_with_sample_weight' by the sum of the weights."
        )
    return reduction


def require_number(name, value, fix=""):
    """Raises a TypeError naming `name` unless `value` is a real number (a bool is not); `fix` ends the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).{fix}")
    return value


def check_number(name, value, positive=False, advice="", fix=""):
    """`value` as a float: a finite real number `>= 0` (`> 0` when `positive`), else an error naming `name`.

    `name` labels the value in the messages (`"Hint: weight"`, `"DKD's alpha"`); `advice` ends the
    message of a bad value, `fix` the one of a value that is no number.
    """
    require_number(name, value, fix)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value}.{advice}")
    return float(value)


def check_temperature(temperature, advice=TEMPERATURE_ADVICE, number=False):
    """Raises for a temperature `T` that is not > 0; returns it.

    A loss (`number=False`) takes a Python number or a scalar tensor/variable (a distiller's
    schedulable `T`, checked where it is set): a number must be > 0, a tensor passes. A
    distiller's own setting (`number=True`) must be a finite Python number > 0, returned as a
    float. `advice` ends the message.
    """
    if number:
        fix = " Pass a Python float, e.g. temperature=4.0."
        return check_number("temperature", temperature, positive=True, advice=f" {advice}", fix=fix)
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}. {advice}")
    return temperature


# ----------------------------------------------------------------------------- shapes and labels


def shapes_match(a, b):
    """Equal rank and equal sizes where both are known (None is a wildcard)."""
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def label_kind(y_shape, logits_shape):
    """`"sparse"` or `"categorical"` for labels of `y_shape` against logits; else ValueError."""
    y_shape, logits_shape = tuple(y_shape), tuple(logits_shape)
    sparse = logits_shape[:-1]
    if shapes_match(y_shape, sparse) or shapes_match(y_shape, sparse + (1,)):
        return "sparse"
    if shapes_match(y_shape, logits_shape):
        return "categorical"
    raise ValueError(
        f"Labels of shape {y_shape} fit neither sparse integer labels {sparse} (or "
        f"{sparse + (1,)}) nor one-hot labels {logits_shape} for student logits of shape "
        f"{logits_shape}. Pass class indices or one-hot vectors, or give compile() a loss "
        "that fits your labels."
    )


def flatten_examples(x):
    """`(batch, ...)` -> `(batch, features)`, with a dynamic batch size if need be; rank 2 is returned as is."""
    rest = tuple(x.shape[1:])
    if len(rest) == 1:
        return x
    if all(d is not None for d in rest):
        return ops.reshape(x, (-1, math.prod(rest)))
    batch = x.shape[0] if x.shape[0] is not None else ops.shape(x)[0]
    return ops.reshape(x, (batch, -1))


# ----------------------------------------------------------------------------- weights and reduction


def align_weights(sample_weight, values):
    """Casts `sample_weight` to float32 and gives it the rank of `values`.

    Per-example weights `(batch,)` broadcast over positions `(batch, seq)`;
    a trailing axis of size 1, `(batch, 1)`, is dropped when `values` has none.
    """
    weight = ops.cast(sample_weight, "float32")
    while len(weight.shape) > len(values.shape) and weight.shape[-1] == 1:
        weight = ops.squeeze(weight, axis=-1)
    while len(weight.shape) < len(values.shape):
        weight = ops.expand_dims(weight, axis=-1)
    if len(weight.shape) != len(values.shape):
        raise ValueError(
            f"sample_weight of shape {tuple(sample_weight.shape)} does not fit per-example "
            f"or per-position loss values of shape {tuple(values.shape)}. Pass one weight per "
            "example (batch,) or per position (batch, ...)."
        )
    return weight


def weighted_mean(values, sample_weight=None, reduction="sum_over_batch_size"):
    """Reduces per-example/per-position `values` to a float32 scalar.

    `sum_over_batch_size`: `sum(w * v) / count(v)` (Keras's default, so that terms
    computed with and without weights mix on one scale);
    `mean_with_sample_weight`: `sum(w * v) / sum(w)`.
    """
    values = ops.cast(values, "float32")
    if sample_weight is None:
        return ops.mean(values)
    weight = ops.broadcast_to(align_weights(sample_weight, values), ops.shape(values))
    total = ops.sum(values * weight)
    if reduction == "mean_with_sample_weight":
        return ops.divide_no_nan(total, ops.sum(weight))
    return total / ops.cast(ops.size(values), "float32")
