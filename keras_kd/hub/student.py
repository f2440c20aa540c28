"""DistilBERT's student initialisation: a shallower copy of a KerasHub teacher.

Sanh et al. (2019), "DistilBERT, a distilled version of BERT" (arXiv:1910.01108),
start the student from the teacher: same width, same embeddings, and every other
transformer layer. `student_from_teacher` does that for a KerasHub backbone or task.
"""

import inspect
import operator
import re
import types

try:
    import keras_hub
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("keras_kd.hub.student_from_teacher needs KerasHub: pip install 'keras-kd[hub]'.") from error

_TRANSFORMER_LAYER = re.compile(r"transformer_layer_(\d+)")
_PLAIN = (bool, int, float, str, type(None))


def default_layers(teacher_layers, num_layers):
    """The teacher layers a student of `num_layers` layers starts from: `(i * teacher_layers) // num_layers`.

    That is `num_layers` indices spread evenly over the teacher's stack, starting at 0.
    When `num_layers` divides `teacher_layers` the step is constant, `teacher_layers //
    num_layers` (DistilBERT's every other layer for 12 -> 6); otherwise the step is that
    or one more, so the picks still reach the top of the stack instead of stopping short.

    >>> default_layers(12, 6)
    [0, 2, 4, 6, 8, 10]
    >>> default_layers(12, 5)
    [0, 2, 4, 7, 9]
    >>> default_layers(4, 4)
    [0, 1, 2, 3]
    """
    return [(i * teacher_layers) // num_layers for i in range(num_layers)]


def student_from_teacher(teacher, num_layers, layers=None):
    """A KerasHub student with `num_layers` transformer layers, initialised from `teacher` as DistilBERT was.

    DistilBERT (Sanh et al., 2019, arXiv:1910.01108) keeps the teacher's width and
    initialises the student from the teacher, taking one layer out of two. Here:

    - a KerasHub `Backbone` gives a backbone of the same class, whose config is the
      teacher's with `num_layers` transformer layers. Student layer `transformer_layer_{i}`
      gets the weights of the teacher's `transformer_layer_{layers[i]}`; every other layer
      with weights (token, position and segment embeddings, embedding and final norms,
      BERT's `pooled_dense`, an untied LM head stored in the token embedding) is copied
      as it is.
    - a KerasHub `Task` (`BertTextClassifier`, `GPT2CausalLM`, `Llama3CausalLM`, ...)
      gives a task of the same class, built with the student backbone, the teacher's
      preprocessor (the same object) and the teacher's other constructor arguments
      (`num_classes`, `activation`, `dropout`, ...); the head's weights (e.g. the
      classifier's `logits` dense) are copied too. LM heads tied to the token embedding
      come with the backbone.

    The student is trainable whatever the teacher's `trainable` flag, and is named
    `"<teacher name>_student"` (a task's backbone keeps the teacher backbone's name, so
    layer paths such as `"backbone/transformer_layer_1"` read the same in both).

    Layer selection: `layers=None` picks `(i * teacher_layers) // num_layers` for
    `i = 0 .. num_layers - 1`: evenly spaced from layer 0 with step `teacher_layers //
    num_layers` when that divides (12 -> 6 gives 0, 2, 4, 6, 8, 10, as in DistilBERT);
    when it does not, the step is that or one more, so the picks spread over the whole
    stack (12 -> 5 gives 0, 2, 4, 7, 9). An explicit `layers` must hold `num_layers`
    teacher indices in strictly increasing order: the student keeps the teacher's order.

    Weights are copied layer by layer with `set_weights(get_weights())` after checking that
    their count and shapes agree; every variable of the student is copied from the teacher.

    Args:
        teacher: a KerasHub `Backbone` or `Task` whose backbone has a `num_layers` config
            and layers named `transformer_layer_{i}` (BERT, GPT-2, Llama, Llama 3, ...).
        num_layers: the student's number of transformer layers, 1 to the teacher's.
        layers: optional teacher layer indices, one per student layer, strictly increasing.

    Returns:
        A new backbone or task of the teacher's class.

    Raises:
        TypeError: for a `num_layers` or `layers` that is not an integer or a list of integers.
        ValueError: for a `num_layers` or `layers` out of range, a model that is not a
            KerasHub backbone or task, a backbone without `num_layers` or
            `transformer_layer_{i}` layers, or a class that cannot be rebuilt from its
            config.

    Example, a 4-layer BERT into a 2-layer student (teacher layers 0 and 2):

    >>> import keras_hub, numpy as np
    >>> from keras_kd.hub import student_from_teacher
    >>> teacher = keras_hub.models.BertBackbone(
    ...     vocabulary_size=60, num_layers=4, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=16)
    >>> student = student_from_teacher(teacher, num_layers=2)
    >>> type(student).__name__, student.num_layers
    ('BertBackbone', 2)
    >>> all(np.array_equal(s, t) for s, t in zip(
    ...     student.get_layer("transformer_layer_1").get_weights(),
    ...     teacher.get_layer("transformer_layer_2").get_weights()))
    True
    >>> np.array_equal(student.get_layer("token_embedding").get_weights()[0],
    ...                teacher.get_layer("token_embedding").get_weights()[0])
    True
    """
    if isinstance(teacher, keras_hub.models.Task):
        return _task_student(teacher, num_layers, layers)
    if isinstance(teacher, keras_hub.models.Backbone):
        student, copied = _backbone_student(teacher, num_layers, layers, name=f"{teacher.name}_student")
        _check_all_copied(student, copied)
        return student
    raise ValueError(
        f"student_from_teacher needs a KerasHub Backbone or Task (e.g. keras_hub.models.BertBackbone or "
        f"BertTextClassifier), got {type(teacher).__name__} {getattr(teacher, 'name', '')!r}. For other "
        "models, build the student yourself and copy weights with student.get_layer(...).set_weights(...)."
    )


def _task_student(teacher, num_layers, layers):
    backbone = getattr(teacher, "backbone", None)
    if not isinstance(backbone, keras_hub.models.Backbone):
        raise ValueError(
            f"The task {type(teacher).__name__} {teacher.name!r} has no KerasHub backbone "
            f"(its `backbone` is {type(backbone).__name__}); student_from_teacher needs one to shorten."
        )
    student_backbone, copied = _backbone_student(teacher.backbone, num_layers, layers, name=backbone.name)
    config = _complete_config(teacher, teacher.get_config())
    config.update(backbone=student_backbone, preprocessor=teacher.preprocessor, name=f"{teacher.name}_student")
    cls = type(teacher)
    try:
        student = cls.from_config(config)
    except Exception as error:
        raise ValueError(
            f"Cannot rebuild the task class {cls.__name__} from its config with the student backbone: "
            f"{type(error).__name__}: {error}. Its get_config() must return every constructor argument "
            f"(keys given: {sorted(config)}); build the task yourself around "
            "student_from_teacher(teacher.backbone, num_layers) and copy the head's weights."
        ) from error
    if student.backbone is not student_backbone:
        raise ValueError(
            f"The rebuilt {cls.__name__} does not use the student backbone it was given; "
            "build the task yourself around student_from_teacher(teacher.backbone, num_layers)."
        )
    teacher_head = _head_layers(teacher)
    student_head = _head_layers(student)
    if [type(layer) for layer in teacher_head] != [type(layer) for layer in student_head]:
        raise ValueError(
            f"The rebuilt {cls.__name__} has head layers {[layer.name for layer in student_head]}, "
            f"the teacher {[layer.name for layer in teacher_head]}: they cannot be paired to copy weights."
        )
    for source, target in zip(teacher_head, student_head):
        copied |= _copy(source, target)
    _check_all_copied(student, copied)
    return student


def _head_layers(task):
    """The task's layers with weights outside its backbone (shared backbone layers excluded), in graph order."""
    in_backbone = {id(layer) for layer in task.backbone._flatten_layers(include_self=True, recursive=True)}
    return [layer for layer in task.layers if id(layer) not in in_backbone and layer.weights]


def _backbone_student(teacher, num_layers, layers, name):
    config = _complete_config(teacher, teacher.get_config())
    teacher_layers = config.get("num_layers")
    if isinstance(teacher_layers, bool) or not isinstance(teacher_layers, int):
        raise ValueError(
            f"The backbone {type(teacher).__name__} {teacher.name!r} has no integer `num_layers` in its config "
            f"(keys: {sorted(config)}), so student_from_teacher cannot tell how many transformer layers to keep. "
            "It supports backbones such as BertBackbone, GPT2Backbone, LlamaBackbone and Llama3Backbone."
        )
    num_layers = _check_num_layers(num_layers, teacher_layers)
    layers = (
        default_layers(teacher_layers, num_layers)
        if layers is None
        else _check_layers(layers, num_layers, teacher_layers)
    )
    teacher_stack = _transformer_layers(teacher, teacher_layers, "teacher")

    config.update(num_layers=num_layers, name=name, trainable=True)
    cls = type(teacher)
    try:
        student = cls.from_config(config)
    except Exception as error:
        raise ValueError(
            f"Cannot rebuild the backbone class {cls.__name__} with num_layers={num_layers}: "
            f"{type(error).__name__}: {error}."
        ) from error
    keep_forgotten_config(student)
    student_stack = _transformer_layers(student, num_layers, "student")

    copied = set()
    for student_index, teacher_index in enumerate(layers):
        copied |= _copy(teacher_stack[teacher_index], student_stack[student_index])
    teacher_rest, student_rest = _other_layers(teacher), _other_layers(student)
    if [(type(layer), layer.name) for layer in teacher_rest] != [(type(layer), layer.name) for layer in student_rest]:
        raise ValueError(
            f"The student {cls.__name__} has non-transformer layers {[layer.name for layer in student_rest]}, "
            f"the teacher {[layer.name for layer in teacher_rest]}: they cannot be paired by name to copy weights."
        )
    for source, target in zip(teacher_rest, student_rest):
        copied |= _copy(source, target)
    return student, copied


def _check_num_layers(num_layers, teacher_layers):
    try:
        if isinstance(num_layers, bool):
            raise TypeError
        num_layers = operator.index(num_layers)
    except TypeError:
        raise TypeError(f"num_layers must be an integer, got {num_layers!r} ({type(num_layers).__name__}).") from None
    if not 1 <= num_layers <= teacher_layers:
        raise ValueError(
            f"num_layers must be between 1 and the teacher's {teacher_layers} transformer layers, got {num_layers}. "
            f"DistilBERT halves the depth: num_layers={max(1, teacher_layers // 2)}."
        )
    return num_layers


def _check_layers(layers, num_layers, teacher_layers):
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of teacher layer indices, got {layers!r}.")
    layers = list(layers)
    try:
        if any(isinstance(index, bool) for index in layers):
            raise TypeError
        indices = [operator.index(index) for index in layers]
    except TypeError:
        raise TypeError(f"layers must hold integer teacher layer indices, got {layers!r}.") from None
    example = default_layers(teacher_layers, num_layers)
    if len(indices) != num_layers:
        raise ValueError(
            f"layers must name one teacher layer per student layer: num_layers={num_layers} but "
            f"layers={indices} has {len(indices)}. Pass {num_layers} indices, e.g. layers={example}, "
            "or layers=None for that default."
        )
    out_of_range = [index for index in indices if not 0 <= index < teacher_layers]
    if out_of_range:
        raise ValueError(
            f"layers={indices} has indices {out_of_range} outside the teacher's layers 0 to {teacher_layers - 1}. "
            f"Use indices in that range, e.g. layers={example}."
        )
    if any(later <= earlier for earlier, later in zip(indices, indices[1:])):
        raise ValueError(
            f"layers={indices} must be strictly increasing (no repeats): the student keeps the teacher's layer "
            f"order, as DistilBERT does. Use e.g. layers={sorted(set(indices))} if that has {num_layers} "
            f"indices, or layers={example}."
        )
    return indices


def _transformer_layers(backbone, count, role):
    stack = []
    for index in range(count):
        try:
            stack.append(backbone.get_layer(f"transformer_layer_{index}"))
        except ValueError:
            names = [layer.name for layer in backbone.layers]
            raise ValueError(
                f"The {role} backbone {type(backbone).__name__} {backbone.name!r} has num_layers={count} but no layer "
                f"named 'transformer_layer_{index}' (its layers: {names}). student_from_teacher needs the "
                "KerasHub naming `transformer_layer_{i}`, as in BERT, GPT-2 and Llama backbones."
            ) from None
    return stack


def _other_layers(backbone):
    return [layer for layer in backbone.layers if layer.weights and not _TRANSFORMER_LAYER.fullmatch(layer.name)]


def _copy(source, target):
    """`target.set_weights(source.get_weights())` after checking the shapes; the ids of the variables set."""
    values = source.get_weights()
    shapes = [tuple(value.shape) for value in values]
    expected = [tuple(variable.shape) for variable in target.weights]
    if shapes != expected:
        raise ValueError(
            f"Cannot copy the teacher layer {source.name!r} into the student layer {target.name!r}: the weight "
            f"shapes differ, {shapes} against {expected}."
        )
    target.set_weights(values)
    return {id(variable) for variable in target.weights}


def _check_all_copied(student, copied):
    missing = [variable.path for variable in student.weights if id(variable) not in copied]
    if missing:
        raise ValueError(
            f"student_from_teacher could not find teacher weights for {missing} of {type(student).__name__} "
            f"{student.name!r}: they live outside the transformer layers and the backbone's top-level layers."
        )


def keep_forgotten_config(model):
    """Make `model.get_config()` also return the constructor arguments its class's `get_config` forgets.

    KerasHub 0.32's `LlamaBackbone.get_config` leaves out `tie_word_embeddings`: a tied Llama (SmolLM2,
    and every student of it) saved with `save_to_preset` or `save` comes back untied and cannot load
    its own weights ("Layer 'token_embedding' expected 2 variables, but received 0"). The model's own
    `get_config` adds them back; its class, and so the name the files record, stays KerasHub's, so
    KerasHub alone loads them. (A model that KerasHub then rebuilds from those files forgets them again.)

    Returns `model`.
    """
    class_get_config = type(model).get_config
    config = class_get_config(model)
    forgotten = tuple(sorted(set(_complete_config(model, config)) - set(config)))
    if forgotten:
        model.get_config = types.MethodType(_get_config_with(forgotten, class_get_config), model)
    return model


def _get_config_with(names, class_get_config):
    """A `get_config` method: the class's config plus the attributes `names` (a method, so copies rebind it)."""

    def get_config(self):
        config = class_get_config(self)
        config.update({name: getattr(self, name) for name in names if name not in config})
        return config

    return get_config


def _complete_config(model, config):
    """`config` plus plain constructor arguments that the class's get_config forgets but keeps as attributes.

    KerasHub 0.32's LlamaBackbone leaves `tie_word_embeddings` out of its config, so a
    rebuilt Llama with tied embeddings would grow an untied LM head.
    """
    config = dict(config)
    try:
        parameters = inspect.signature(type(model).__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtin or C-level constructors
        return config
    for name, parameter in parameters.items():
        if (
            name == "self"
            or name in config
            or parameter.kind
            not in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            )
        ):
            continue
        value = getattr(model, name, parameter.empty)
        if isinstance(value, _PLAIN):
            config[name] = value
    return config
