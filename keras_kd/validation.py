"""Validation of what the user passes in: each failure names the value and the fix."""

import math
import numbers

import keras
import numpy as np

from keras_kd.losses import _common
from keras_kd.losses._common import label_kind as label_kind  # the losses own the label and shape rules
from keras_kd.losses._common import require_number, shapes_match


def check_model(role, model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{role} must be a keras.Model, got {type(model).__name__}. Wrap layers or "
            "functions in keras.Sequential([...]) or a functional keras.Model(inputs, outputs)."
        )
    return model


def check_teacher_built(teacher):
    if not teacher.built:
        raise ValueError(
            f"The teacher {teacher.name!r} is not built, so it has no trained weights. "
            "Train it (or load it with keras.saving.load_model) before distilling, or "
            "call it once on a batch so that its variables exist."
        )


def check_temperature(value):
    """A distiller's temperature: a finite Python number > 0, returned as a float (the losses' own check)."""
    return _common.check_temperature(value, number=True)


def check_alpha(value):
    require_number("alpha", value, " Pass a Python float in [0, 1], e.g. alpha=0.1.")
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"alpha must lie in [0, 1], got {value}. alpha weights the hard-label loss and "
            "(1 - alpha) the soft-target loss: alpha=0 is pure distillation, alpha=1 ignores "
            "the teacher."
        )
    return float(value)


def is_integer(value):
    """Whether `value` is an integer, a Python or NumPy one; a bool is not."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _output_operation(model):
    """The layer that produces the model's output, where the model's graph says so."""
    outputs = getattr(model, "outputs", None)
    if outputs:
        history = getattr(outputs[0], "_keras_history", None)
        if history is not None:
            return history.operation
    layers = getattr(model, "layers", None)
    return layers[-1] if layers else None


def _is_softmax(layer):
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    if activation is None:
        return False
    return getattr(activation, "__name__", "") in ("softmax", "log_softmax")


def check_outputs_logits(role, model):
    """Raises when the model's output layer applies softmax: soft targets need logits."""
    layer = _output_operation(model)
    if layer is not None and _is_softmax(layer):
        raise ValueError(
            f"The {role} {model.name!r} ends in layer {layer.name!r}, which applies softmax. "
            "Distillation needs logits: rebuild that layer with activation=None (or drop the "
            "Softmax layer); keras.ops.softmax(model(x)) gives probabilities again at "
            "inference."
        )


def known_output_shape(model):
    """The shape of the model's one output where its graph tells it, else None; raises for several outputs."""
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None
    if len(outputs) != 1:
        raise ValueError(
            f"{model.name!r} has {len(outputs)} outputs; a Distiller needs one output tensor of "
            "logits per model. Build a model that returns only the logits to distill."
        )
    return tuple(outputs[0].shape)


def check_output_shapes(teacher_shape, student_shape):
    if teacher_shape is None or student_shape is None:
        return
    if not shapes_match(tuple(teacher_shape), tuple(student_shape)):
        raise ValueError(
            f"Teacher outputs shape {tuple(teacher_shape)} but student outputs shape "
            f"{tuple(student_shape)}. Soft targets compare the two position by position and "
            "class by class: give the student the teacher's number of classes (last axis) "
            "and sequence length."
        )


def check_model_pair(teacher, student):
    """Static checks at construction where the models' graphs tell their outputs."""
    for role, model in (("teacher", teacher), ("student", student)):
        check_outputs_logits(role, model)
    check_output_shapes(known_output_shape(teacher), known_output_shape(student))


# Several teachers.


def check_teacher_list(teachers):
    """Each of a list of teachers is a built keras.Model; the list is not empty."""
    teachers = list(teachers)
    if not teachers:
        raise ValueError(
            "teacher is an empty list. Give one teacher model, or a list of teacher models (multi-teacher "
            "distillation, weighted by teacher_weights)."
        )
    for index, teacher in enumerate(teachers):
        check_model(f"teacher[{index}]", teacher)
        check_teacher_built(teacher)
    return teachers


def _teacher_label(index, teacher):
    return f"teacher[{index}] {getattr(teacher, 'name', type(teacher).__name__)!r}"


def check_teacher_output_shapes(teachers, shapes):
    """The teachers' output shapes agree (None is a wildcard); raises naming two that differ."""
    known = [(index, tuple(shape)) for index, shape in enumerate(shapes) if shape is not None]
    if not known:
        return
    first, first_shape = known[0]
    for index, shape in known[1:]:
        if not shapes_match(first_shape, shape):
            raise ValueError(
                f"The teachers' outputs differ in shape: {_teacher_label(first, teachers[first])} outputs "
                f"{first_shape} but {_teacher_label(index, teachers[index])} outputs {shape}. Their tempered "
                "probabilities are averaged class by class (and position by position), so every teacher must "
                "output the student's shape: the same classes on the last axis and the same sequence length."
            )


def check_teacher_weights(weights, count, single_model=False):
    """`teacher_weights` normalized to sum 1 (uniform when None), or None for one teacher; raises on bad ones.

    `single_model`: the teacher was given as one model (not a list), where weights mean nothing.
    """
    if weights is None:
        return None if count == 1 else [1.0 / count] * count
    if single_model:
        raise ValueError(
            f"teacher_weights={weights!r} weighs several teachers, but a single teacher was given (a model, or a "
            "cache of one teacher). Pass teacher=[teacher_1, teacher_2, ...] (or a cache built from such a list) for "
            "multi-teacher distillation, or drop teacher_weights."
        )
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
        raise TypeError(
            f"teacher_weights must be a list of numbers, one per teacher; got {weights!r}. Pass e.g. "
            "teacher_weights=[2, 1] for two teachers (or None for equal weights)."
        )
    values = []
    for index, value in enumerate(weights):
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise TypeError(
                f"teacher_weights[{index}] must be a number, got {value!r} ({type(value).__name__}). Give one "
                "float >= 0 per teacher."
            )
        values.append(float(value))
    if len(values) != count:
        raise ValueError(
            f"teacher_weights has {len(values)} values {values} for {count} teachers. Give one weight per "
            "teacher, in the order of the teacher list (or None for equal weights)."
        )
    for index, value in enumerate(values):
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"teacher_weights[{index}] is {value}; weights must be finite and >= 0 (they are normalized to sum "
                "to 1: [2, 1] gives the first teacher two thirds of the mixture)."
            )
    total = sum(values)
    if not total > 0:
        raise ValueError(
            f"teacher_weights {values} sum to {total}; at least one teacher needs a weight > 0 (they are "
            "normalized to sum to 1)."
        )
    return [value / total for value in values]


# Non-finite values, checked once on the first batch of training (see `Distiller._inspect_first_batch`).


def count_non_finite(value):
    """How many entries of a floating tensor or array are NaN or +-Inf (0 for integer, bool or string data)."""
    try:
        floating = keras.backend.is_float_dtype(value.dtype)
    except (AttributeError, TypeError, ValueError):
        return 0
    if not floating:
        return 0
    if isinstance(value, np.ndarray):
        return int(value.size - np.count_nonzero(np.isfinite(value)))
    # Reduced where the tensor lives: a batch sharded over several JAX processes is not fetchable whole.
    finite = keras.ops.isfinite(keras.ops.cast(value, "float32"))
    return int(keras.ops.convert_to_numpy(keras.ops.sum(1 - keras.ops.cast(finite, "int32"))))


def check_finite_teacher_outputs(source, outputs, inputs, where, fix=None):
    """Raises when `outputs` (a tensor or a structure of them) hold NaN or Inf, saying whether `inputs` did too.

    `source` names what produced the outputs ("The teacher 'big'", "teacher[1] 'b'"), `where` the batch
    ("the first batch of fit()"); `fix`, when given, replaces the advice drawn from the inputs.
    """
    leaves = keras.tree.flatten(outputs)
    bad = sum(count_non_finite(leaf) for leaf in leaves)
    if not bad:
        return
    shapes = ", ".join(str(tuple(leaf.shape)) for leaf in leaves)
    bad_inputs = sum(count_non_finite(leaf) for leaf in keras.tree.flatten(inputs)) if inputs is not None else 0
    if fix is not None:
        cause = fix
    elif bad_inputs:
        cause = (
            f"The batch's inputs already hold {bad_inputs} non-finite values: clean the data (drop those examples, "
            "or impute them, e.g. with np.nan_to_num) before distilling."
        )
    else:
        cause = (
            "Its inputs are finite, so the teacher itself produces them: check its weights for NaN (load the "
            "trained model again) and, if it computes in float16, run it in float32 or mixed_bfloat16 (float16 "
            "overflows above 65504)."
        )
    raise ValueError(
        f"{source} gave {bad} non-finite values (NaN or Inf) among its outputs of shape {shapes} on {where}: every "
        f"soft target, and so the loss, would be NaN. {cause}"
    )
