"""Validation of what the user passes in: each failure names the value and the fix."""

import inspect
import math
import numbers
import warnings

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


# The temperatures a distiller accepts. Measured on the soft loss in float32 against a float64 reference
# (logits of scale 1, 10 and 1000 classes): relative error <= 5e-4 up to T = 100, 3 % at T = 1000, above
# 100 % at T = 1e4 (the tempered probabilities come within float32 rounding of uniform); T**2 overflows
# float32 (NaN) beyond ~1.8e19 and underflows (a zero soft loss) below ~1e-19. Below 0.01 the soft targets
# are one-hot to float32 and the T**2-scaled term and its gradient (at most 2 T per logit) vanish.
TEMPERATURE_RANGE = (0.01, 100.0)


def check_temperature(value):
    """A distiller's temperature: a Python number in `TEMPERATURE_RANGE`, returned as a float."""
    value = _common.check_temperature(value, number=True)  # the losses' own check: finite and > 0
    low, high = TEMPERATURE_RANGE
    if not low <= value <= high:
        raise ValueError(
            f"temperature must lie in [{low:g}, {high:g}], got {value:g}: that is where float32, in which the soft "
            "loss is computed, holds it. Above 100 the tempered probabilities come within float32 rounding of "
            "uniform (the soft loss is off by 3 % at T = 1000, and T**2 overflows to NaN past ~1e19); below 0.01 "
            "the soft targets are one-hot and the T**2-scaled term vanishes (T**2 underflows to a zero loss below "
            "~1e-19). Hinton et al. use 2 to 20; pass e.g. temperature=4.0."
        )
    return value


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


# Activations whose outputs are probabilities (or their logarithms), not logits.
_PROBABILITY_ACTIVATIONS = ("softmax", "log_softmax", "sigmoid", "hard_sigmoid")
# Layers that pass values on unchanged (up to their shape, or noise in training only): a softmax before them
# still makes the model's outputs probabilities.
_VALUE_PRESERVING = tuple(
    getattr(keras.layers, name)
    for name in (
        "Identity",
        "Dropout",
        "GaussianDropout",
        "GaussianNoise",
        "AlphaDropout",
        "ActivityRegularization",
        "Reshape",
        "Flatten",
        "Permute",
    )
    if hasattr(keras.layers, name)
)


def _probability_activation(layer):
    """The name of the probability activation that `layer` applies last, or None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    return name if name in _PROBABILITY_ACTIVATIONS else None


def _passes_values_on(layer):
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") == "linear"
    return isinstance(layer, _VALUE_PRESERVING)


def _probability_output(model):
    """`(layer, after)` when the model's output is probabilities, else None.

    `layer` applies the softmax (or sigmoid, ...); `after` are the value-preserving layers between it
    and the output (a linear `Activation`, `Dropout`, `Reshape`, ...). Walks the model's graph back from
    its output, into nested models; a model without a graph (subclassed) is judged by its last layer.
    """
    outputs = getattr(model, "outputs", None)
    if not outputs:
        layers = getattr(model, "layers", None)
        layer = layers[-1] if layers else None
        return (layer, []) if layer is not None and _probability_activation(layer) else None
    tensor, after = outputs[0], []
    while True:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer = history.operation
        if isinstance(layer, keras.Model):  # a nested model: follow its own output
            nested = getattr(layer, "outputs", None)
            if not nested:
                return _probability_output(layer)
            tensor = nested[history.tensor_index]
            continue
        if _probability_activation(layer):
            return layer, after
        if not _passes_values_on(layer):
            return None
        after.append(layer)
        inputs = layer._inbound_nodes[history.node_index].input_tensors
        if len(inputs) != 1:
            return None
        tensor = inputs[0]


def check_outputs_logits(role, model):
    """Raises when the model's outputs are probabilities (softmax, sigmoid, ...): soft targets need logits.

    Looks through layers that pass values on unchanged, so a softmax followed by a linear `Activation`
    or a `Dropout` is found too.
    """
    found = _probability_output(model)
    if found is None:
        return
    layer, after = found
    name = _probability_activation(layer)
    then = f" (followed by {', '.join(repr(a.name) for a in reversed(after))}, which keep its values)" if after else ""
    raise ValueError(
        f"The {role} {model.name!r} ends in layer {layer.name!r}{then}, which applies {name}. Distillation needs "
        f"logits: rebuild that layer with activation=None (or drop the Softmax or Activation layer); "
        f"keras.ops.{name}(model(x)) gives probabilities again at inference."
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


def _layer_paths(model, variable_ids):
    """The paths (`"outer/inner"`) of the layers of `model` that own a variable of `variable_ids`, outermost first."""
    paths = []

    def visit(layer, prefix):
        for child in getattr(layer, "_layers", []):
            path = f"{prefix}{child.name}"
            weights = child.weights
            if getattr(child, "_layers", None) and weights and all(id(v) in variable_ids for v in weights):
                paths.append(path)  # a whole shared sub-model: the teacher inside the student
                continue
            if any(id(v) in variable_ids for v in child._trainable_variables + child._non_trainable_variables):
                paths.append(path)
            visit(child, f"{path}/")

    visit(model, "")
    return paths


def _layers_word(names):
    return "layer" if len(names) == 1 else "layers"


def _listed(names, limit=4):
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_separate_models(teacher, student, role="teacher"):
    """Raises when `student` is `teacher`, or shares variables with it.

    A distiller never trains the teacher: shared variables would stay frozen in the student (or, were
    they trained, the teacher would move under its own distillation). `role` names the teacher in the
    message (`"teacher"`, `"teacher[1]"`).
    """
    if teacher is student:
        raise ValueError(
            f"The {role} and the student are the same model, {student.name!r}. A Distiller trains the student "
            "towards the teacher's outputs and never trains the teacher, so one model cannot be both (JAX would "
            "train nothing, TensorFlow and PyTorch fail inside the step). Distil into a separate student: "
            f"keras.models.clone_model({student.name}) copies the architecture with new variables (then "
            "student.set_weights(teacher.get_weights()) to start from the teacher's weights), or build a smaller model."
        )
    teacher_ids = {id(v) for v in teacher.weights}
    shared = [v for v in student.weights if id(v) in teacher_ids]
    if not shared:
        return
    shared_ids = {id(v) for v in shared}
    student_layers = _layer_paths(student, shared_ids) or [v.path for v in shared]
    teacher_layers = _layer_paths(teacher, shared_ids) or [v.path for v in shared]
    raise ValueError(
        f"The student {student.name!r} shares {len(shared)} variable{'s' if len(shared) != 1 else ''} with the "
        f"{role} {teacher.name!r}, in its {_layers_word(student_layers)} {_listed(student_layers)} (the {role}'s "
        f"{_layers_word(teacher_layers)} {_listed(teacher_layers)}). A Distiller never trains the teacher, so "
        "these would stay frozen inside the "
        "student (and training them would change the teacher under its own distillation). Give the student layers "
        "of its own: build them anew (keras.models.clone_model(model) copies a model with new variables) and copy "
        "the teacher's weights in with set_weights if you want to start from them."
    )


def warn_if_student_is_larger(teachers, student):
    """Warns when the student has more parameters than every teacher: were teacher and student swapped?"""
    if not student.built or not teachers:
        return
    try:
        student_params = student.count_params()
        sizes = [(teacher.count_params(), teacher) for teacher in teachers]
    except ValueError:  # a model that is not built
        return
    teacher_params, largest = max(sizes, key=lambda size: size[0])
    if student_params <= teacher_params:
        return
    which = "teacher" if len(teachers) == 1 else "largest teacher"
    warnings.warn(
        f"The student {student.name!r} has more parameters ({student_params:,}) than the {which} "
        f"{largest.name!r} ({teacher_params:,}): are teacher and student swapped? Distiller(teacher, student) "
        "trains the second model towards the first, so swapped it trains your trained model towards an untrained "
        "one. If a larger student is what you mean (noisy student, knowledge expansion), ignore this warning.",
        UserWarning,
        stacklevel=4,
    )


# The hard-label loss given to `Distiller.compile`: the student outputs logits.

# Keras's probabilistic losses, by their function's name: each takes `from_logits`.
_FROM_LOGITS_LOSSES = {
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "binary_crossentropy": "BinaryCrossentropy",
    "categorical_focal_crossentropy": "CategoricalFocalCrossentropy",
    "binary_focal_crossentropy": "BinaryFocalCrossentropy",
}


def _takes_probabilities(function):
    """Whether `function` is a loss with a `from_logits` argument that defaults to False."""
    try:
        parameter = inspect.signature(function).parameters.get("from_logits")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is False


def resolve_hard_loss(loss):
    """`compile`'s `loss` for a student that outputs logits.

    A string naming a Keras cross-entropy (`"sparse_categorical_crossentropy"`, `"categorical_crossentropy"`,
    `"binary_crossentropy"`, their focal forms, or class names) becomes that loss with `from_logits=True`.
    A loss object or function that reads probabilities (`from_logits=False`) is refused: it would treat the
    student's logits as probabilities without an error. Lists and dicts are resolved item by item.
    """
    if isinstance(loss, (list, tuple)):
        return type(loss)(resolve_hard_loss(item) for item in loss)
    if isinstance(loss, dict):
        return {key: resolve_hard_loss(item) for key, item in loss.items()}
    if isinstance(loss, str):
        try:
            resolved = keras.losses.get(loss)
        except (ValueError, TypeError):
            return loss  # Keras's compile names the unknown loss
        if isinstance(resolved, keras.losses.Loss):
            config = resolved.get_config()
            if config.get("from_logits") is False:
                return type(resolved).from_config({**config, "from_logits": True})
            return loss
        name = getattr(resolved, "__name__", "")
        if name in _FROM_LOGITS_LOSSES:
            return getattr(keras.losses, _FROM_LOGITS_LOSSES[name])(from_logits=True)
        return loss
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        if config.get("from_logits") is False:
            raise ValueError(
                f"compile(loss={type(loss).__name__}(from_logits=False)) reads the student's outputs as probabilities, "
                "but a Distiller's student outputs logits, so the hard-label term would be wrong without an error "
                f"(MNIST: 74 % instead of 96 %). Pass keras.losses.{type(loss).__name__}(from_logits=True), or "
                "loss=None for cross-entropy from logits."
            )
        return loss
    if callable(loss) and _takes_probabilities(loss):
        name = getattr(loss, "__name__", type(loss).__name__)
        fix = _FROM_LOGITS_LOSSES.get(name)
        fix = f"keras.losses.{fix}(from_logits=True)" if fix else "a loss that reads logits (from_logits=True)"
        raise ValueError(
            f"compile(loss={name}) reads the student's outputs as probabilities (its from_logits defaults to False), "
            f"but a Distiller's student outputs logits, so the hard-label term would be wrong without an error. Pass "
            f"{fix}, or loss=None for cross-entropy from logits."
        )
    return loss


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


# The first batch of training: its inputs, its labels, the teacher's accuracy on it (see
# `Distiller._inspect_first_batch`).


def _input_tensors(model):
    """The model's input tensors (KerasTensors) where its graph declares them, else None (a subclassed model)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(inputs) if inputs else None


def _input_names(model):
    """The names a dict batch must hold to feed `model`, or None when its graph does not tell."""
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        return sorted(struct)
    inputs = _input_tensors(model)
    return None if inputs is None else [tensor.name for tensor in inputs]


def _shapes_text(shapes):
    return ", ".join(str(tuple(shape)) for shape in shapes)


def check_first_batch_inputs(x, y, models):
    """Raises when the first batch's inputs cannot feed the models, naming each model's inputs and the fix.

    `models` lists `(role, model, inputs)`: what each model reads of the batch (`inputs` is None for a teacher
    whose outputs come from a cache). A dict that holds no model's input names is a dict dataset read whole as
    `x` (Keras reads a batch as `x`, `(x, y)` or `(x, y, sample_weight)`); inputs whose shape a model does not
    take otherwise fail inside Keras with a raw error. Models without a graph (subclassed) are not checked.
    """
    for role, model, inputs in models:
        if inputs is None:
            continue
        names = _input_names(model)
        if names is None:
            continue
        if isinstance(inputs, dict):
            if not set(names) <= set(inputs):
                keys = sorted(inputs)
                no_labels = " and no labels" if y is None else ""
                example = f"lambda d: (d[{keys[0]!r}], d[{keys[-1]!r}])" if len(keys) > 1 else "lambda d: (d[...], y)"
                raise ValueError(
                    f"The first batch's x is a dict with keys {keys}{no_labels}, but the {role} {model.name!r} takes "
                    f"the inputs {names}. Keras's fit() reads a batch as x, (x, y) or (x, y, sample_weight), so a "
                    "dataset of dicts gives the whole dict as x. Yield (x, y) tuples instead: map the dataset first, "
                    f"e.g. dataset.map({example}) (TensorFlow Datasets: as_supervised=True), or pass a dict keyed by "
                    "the model's input names as x."
                )
            continue
        expected = _input_tensors(model)
        leaves = keras.tree.flatten(inputs)
        if len(leaves) != len(expected):
            continue
        for leaf, tensor in zip(leaves, expected):
            given, wanted = tuple(getattr(leaf, "shape", ())), tuple(tensor.shape)
            if len(given) == len(wanted) and not shapes_match(given[1:], wanted[1:]):
                _refuse_input_shapes(role, given, models)


def _refuse_input_shapes(role, given, models):
    takes = "; ".join(
        f"the {other} {model.name!r} takes {_shapes_text(t.shape for t in _input_tensors(model) or [])}"
        for other, model, inputs in models
        if inputs is not None and _input_tensors(model)
    )
    raise ValueError(
        f"The first batch's inputs of shape {given} do not fit the {role}: {takes}. Each model reads the batch's x "
        "unless the two read different inputs of the same examples (another image size, another tokenizer): then "
        "pass x=keras_kd.paired_inputs(teacher_x, student_x) (each model gets its own). Otherwise give the models "
        "inputs of one shape."
    )


def _integer_valued(values):
    if np.issubdtype(values.dtype, np.integer):
        return True
    return np.issubdtype(values.dtype, np.floating) and bool(np.all(np.isfinite(values) & (values == np.round(values))))


def local_numpy(value):
    """`value` as a NumPy array; for an array spread over several processes (JAX multi-host), this process's part.

    Such an array cannot be fetched whole: its addressable shards are concatenated along the batch
    axis (a replicated shard repeats rows, which the first-batch checks tolerate).
    """
    if getattr(value, "is_fully_addressable", True) is False:
        return np.concatenate([np.asarray(shard.data) for shard in value.addressable_shards])
    return np.asarray(keras.ops.convert_to_numpy(value))


def check_class_labels(y, classes, ignore_class=None):
    """Raises when class-id labels (integers of the logits' shape without the class axis) lie outside `[0, classes)`.

    Out of range, JAX's cross-entropy gives 0 for them without an error, and TensorFlow and PyTorch fail
    inside the step with their own errors. Labels equal to `ignore_class` (the compiled loss's) are skipped.
    """
    if y is None or classes is None or classes < 2 or not hasattr(y, "shape"):
        return
    values = local_numpy(y)
    if values.size == 0 or values.dtype == bool or not _integer_valued(values):
        return
    if ignore_class is not None:
        values = values[values != ignore_class]
    outside = values[(values < 0) | (values >= classes)]
    if not outside.size:
        return
    shown = _listed(sorted({v.item() for v in np.unique(outside)}))
    ignore = f" (the compiled loss skips {ignore_class})" if ignore_class is not None else ""
    raise ValueError(
        f"The first batch's labels hold {outside.size} class id{'s' if outside.size != 1 else ''} outside [0, "
        f"{classes - 1}] ({shown}){ignore}, but the student outputs {classes} classes, so class ids must lie in [0, "
        f"{classes - 1}]. Out of range, JAX's cross-entropy gives 0 for them without an error and TensorFlow and "
        f"PyTorch fail inside the step. Map the labels to 0..{classes - 1} (e.g. y - 1 for labels counted from 1), "
        "give the models as many classes as there are labels, or, for positions to skip (-1, -100), compile with "
        "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)."
    )


def sparse_labels_like(y, logits_shape):
    """`y` as class ids of `logits_shape[:-1]` (NumPy), from class ids or one-hot rows; None for other labels."""
    if y is None or not hasattr(y, "shape"):
        return None
    try:
        kind = label_kind(tuple(y.shape), tuple(logits_shape))
    except ValueError:
        return None
    if kind == "categorical":
        return local_numpy(keras.ops.argmax(y, axis=-1))
    values = local_numpy(y)
    if not _integer_valued(values):
        return None
    return values[..., 0] if values.ndim == len(logits_shape) else values  # (batch, 1) -> (batch,)


def warn_if_near_chance(source, logits, y, sample_weight=None):
    """Warns when `source`'s accuracy on the first labelled batch is near chance: an untrained (or swapped) teacher.

    Near chance: below `1 / classes` plus two standard errors of a guesser's accuracy on the batch's
    `n` labels, `2 * sqrt(p (1 - p) / n)`. Labels outside `[0, classes)` (ignored positions) and positions
    of sample weight 0 do not count. Reads only the arg-max of `logits`, computed where they live.
    """
    classes = logits.shape[-1]
    if y is None or classes is None or classes < 2:
        return
    labels = sparse_labels_like(y, tuple(logits.shape))
    if labels is None:
        return
    predicted = getattr(logits, "predicted", None)  # a chunked model's `Predictions`: the arg-max only
    if predicted is None:
        predicted = local_numpy(keras.ops.argmax(logits, axis=-1))
    if labels.shape != predicted.shape:
        return
    counted = (labels >= 0) & (labels < classes)
    if sample_weight is not None:
        weight = local_numpy(sample_weight)
        while weight.ndim > predicted.ndim and weight.shape[-1] == 1:
            weight = weight[..., 0]
        weight = weight.reshape(weight.shape + (1,) * (predicted.ndim - weight.ndim))
        counted &= np.broadcast_to(weight > 0, predicted.shape)
    n = int(counted.sum())
    if n < 2:
        return
    right = int((predicted == labels)[counted].sum())
    accuracy, chance = right / n, 1.0 / classes
    if accuracy >= chance + 2.0 * math.sqrt(chance * (1.0 - chance) / n):
        return
    warnings.warn(
        f"{source} predicts {right} of the first batch's {n} labels ({accuracy:.0%}), about chance for {classes} "
        f"classes ({chance:.0%}): is it trained? An untrained teacher, or teacher and student swapped in "
        "Distiller(teacher, student), trains the student towards noise (and a swapped trained model away from what "
        "it knows). Train or load the teacher first; if it is trained and this batch is merely hard, ignore this "
        "warning.",
        UserWarning,
        stacklevel=2,
    )


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


def check_finite_inputs(inputs, what, first=0):
    """Raises when a batch of NumPy `inputs` (an array or a structure of them) holds NaN or Inf.

    `what` names whose data it is (`"TeacherCache.build's data"`) and `first` the position of the
    batch's first example, so that the message names the example. Integer, bool and string inputs
    (token ids, text) pass. A teacher can map NaN to finite outputs (TensorFlow's compiled ReLU maps
    NaN to 0), so its outputs being finite does not clear the inputs.
    """
    bad_examples = set()
    bad = 0
    for leaf in keras.tree.flatten(inputs):
        count = count_non_finite(leaf)
        if not count:
            continue
        bad += count
        rows = np.asarray(leaf).reshape(len(leaf), -1)
        bad_examples.update(int(i) for i in np.flatnonzero(~np.isfinite(rows).all(axis=1)))
    if not bad:
        return
    examples = sorted(first + i for i in bad_examples)
    more = f" (and {len(examples) - 1} more in this batch)" if len(examples) > 1 else ""
    values = f"{bad} non-finite input value{'s' if bad != 1 else ''} (NaN or Inf)"
    raise ValueError(
        f"{what} holds {values} at example {examples[0]}{more}. The teacher's outputs on such inputs cannot be "
        "trusted (they may even look finite: TensorFlow's compiled ReLU maps NaN to 0), and training on them turns "
        "the student's weights NaN. Clean the data first: drop those examples, or impute them (e.g. "
        "np.nan_to_num(x)); a build then resumes after the examples already stored."
    )


def _first_inputs(data):
    """The inputs `x` of `data`'s first batch where that is cheap to tell (arrays, a PyDataset, tf.data); else None."""
    from keras_kd.data.arrays import is_in_memory

    if isinstance(data, tuple) and data and is_in_memory(data[0]):
        return data[0]
    if is_in_memory(data):
        return data
    spec = getattr(data, "element_spec", None)  # a tf.data.Dataset tells what it yields
    if spec is not None:
        return spec[0] if isinstance(spec, tuple) else spec
    if isinstance(data, keras.utils.PyDataset) and len(data):
        batch = data[0]
        return batch[0] if isinstance(batch, tuple) else batch
    return None


def check_data_reaches_teacher(data, cache, what):
    """Raises when `data` (`fit`'s `validation_data`, `evaluate`'s `x`) cannot give the distiller's teacher its input.

    `cache` is the distiller's `TeacherCache`, or None for a teacher model: a cache distiller has no
    model to run on plain inputs, and a model distiller reads no cached batches. Checked when
    `fit` (or `evaluate`) starts, where the batch would otherwise fail after an epoch of training.
    Data whose first batch is not cheap to read (a generator) is left to the step's own error.
    """
    from keras_kd.data.batch_keys import is_cached

    if data is None:
        return
    x = _first_inputs(data)
    if x is None:
        return
    if cache is not None and not is_cached(x):
        raise ValueError(
            f"{what} holds plain inputs, but this Distiller reads the teacher's outputs from the cache in "
            f"{cache.directory} and has no teacher model to run on them. Build a cache of the validation data with "
            "the same teacher, val_cache = keras_kd.TeacherCache.build(teacher, (x_val, y_val), directory), and pass "
            "val_cache.dataset(batch_size, shuffle=False) (docs/cache.md); or distil online, "
            "keras_kd.Distiller(teacher, student), to validate on plain (x, y)."
        )
    if cache is None and is_cached(x):
        raise ValueError(
            f"{what} holds cached teacher outputs (from a TeacherCache), but this Distiller runs a teacher model. "
            "Pass plain inputs, (x_val, y_val), or build the Distiller on the cache, "
            "keras_kd.Distiller(cache, student)."
        )
