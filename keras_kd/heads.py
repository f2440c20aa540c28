"""A language model split at its output head: `body(x)` gives the final hidden states, `head(h)` the logits.

Chunked token-level losses (`Distiller(chunk_size=...)`) never build a model's full
`(batch, positions, vocabulary)` logits: they run the body once and the head a chunk of positions at
a time. The head is the model's own graph from its final hidden states to its output, so whatever the
model applies there (tied or untied embeddings, a KerasHub model's logit soft-capping or scaling)
is applied exactly as in `model(x)`; nothing is re-implemented per model family.

Where the head starts:

- a KerasHub task (a model with a `backbone` layer, e.g. `CausalLM`, `Seq2SeqLM`): at the backbone's
  output that the logits are computed from (a `Seq2SeqLM`'s decoder sequence output);
- any other functional model: at the input of its last layer (e.g. the `Dense(vocabulary)` at the
  end of a `Sequential`).

Both halves are functional models over the same layers and variables as `model`: nothing is copied.
"""

import keras
import numpy as np

from keras_kd.token_logits import AUTO_CHUNK_BYTES, Predictions, TokenLogits, positions_per_chunk

CHUNK_ADVICE = (
    "Pass chunk_size=None to compute the full logits (the dense path), or give the model a functional "
    "graph whose last layer (or KerasHub backbone) yields (batch, positions, width) hidden states."
)


class SplitModel:
    """`model` as `body` (inputs -> final hidden states) and `head` (hidden states -> logits).

    A plain object, not a Keras layer: a distiller holding it does not track (or save) the halves,
    whose variables are the model's own.
    """

    def __init__(self, model, role):
        self.model = model
        graph = _graph(model)
        hidden, output = _head_input(graph, model, role)
        self.body = keras.Model(graph.input, hidden, name=f"{model.name}_body")
        try:
            self.head = keras.Model(hidden, output, name=f"{model.name}_head")
        except ValueError as error:
            raise ValueError(
                f"The {role} {model.name!r} has no output head that reads only its final hidden states "
                f"{_describe(hidden)}: the layers between them and the logits also read other inputs ({error}). "
                f"{CHUNK_ADVICE}"
            ) from None
        # The graph may fix the number of positions (a Sequential's Input((positions,))); chunks have fewer.
        self.head.input_spec = None
        self.vocabulary_size = output.shape[-1]

    def forward(self, x, training, chunk_size, chunk_bytes=AUTO_CHUNK_BYTES):
        """The model's logits on `x`: dense, or `TokenLogits` where `chunk_size` chunks these positions
        (`"auto"`: chunks of about `chunk_bytes` of float32 logits)."""
        hidden = self.body(x, training=training)
        chunk = self.chunk_positions(hidden, chunk_size, chunk_bytes)
        if chunk is None:
            return self.head(hidden, training=training)
        return TokenLogits(hidden, lambda h: self.head(h, training=training), chunk, training)

    def checked_outputs(self, x, chunk_size, check):
        """The frozen model's logits on `x` for a first-batch check, `check(logits)` run on each chunk's logits.

        Dense where `chunk_size` is dense here; else a `Predictions` (their arg-max), so that the full
        logits do not exist at once here either.
        """
        hidden = self.body(x, training=False)
        chunk = self.chunk_positions(hidden, chunk_size)
        if chunk is None:
            logits = self.head(hidden, training=False)
            check(logits)
            return logits
        positions, predicted = hidden.shape[1], []
        for start in range(0, positions, chunk):
            logits = self.head(hidden[:, start : start + chunk], training=False)
            check(logits)
            predicted.append(keras.ops.convert_to_numpy(keras.ops.argmax(logits, axis=-1)))
        shape = (*predicted[0].shape[:1], positions, self.vocabulary_size)
        return Predictions(np.concatenate(predicted, axis=1), shape)

    def chunk_positions(self, hidden, chunk_size, chunk_bytes=AUTO_CHUNK_BYTES):
        """Positions per chunk for hidden states `hidden`, or None for the dense path (one chunk)."""
        batch, positions = hidden.shape[0], hidden.shape[1]
        if positions is None:
            if chunk_size == "auto":
                return None
            raise ValueError(
                f"chunk_size={chunk_size} splits the positions axis, but {self.model.name!r} gets batches whose number "
                "of positions is not fixed (shape (batch, None)). Pad the sequences to one length (a KerasHub "
                "preprocessor's sequence_length), or pass chunk_size=None."
            )
        chunk = positions_per_chunk(chunk_size, batch, positions, self.vocabulary_size, chunk_bytes)
        return chunk if chunk < positions else None


def _describe(tensor):
    operation = tensor._keras_history.operation
    return f"(the output {tuple(tensor.shape)} of layer {operation.name!r})"


def _graph(model):
    """The functional graph of `model`: itself, or a built `Sequential`'s inner functional model."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None) or model
    return model


def _head_input(graph, model, role):
    """`(hidden, output)`: the tensor the output head starts from, and the model's output (KerasTensors)."""
    outputs = getattr(graph, "outputs", None)
    if not hasattr(graph, "_nodes_by_depth") or not outputs:
        raise ValueError(
            f"The {role} {model.name!r} ({type(model).__name__}) is not a functional model, so its output head "
            f"cannot be separated from the layers before it (chunking runs the head alone). {CHUNK_ADVICE}"
        )
    if len(outputs) != 1:
        raise ValueError(f"The {role} {model.name!r} has {len(outputs)} outputs; chunking needs one output of logits.")
    output = outputs[0]
    if len(output.shape) != 3 or output.shape[-1] is None:
        raise ValueError(
            f"The {role} {model.name!r} outputs shape {tuple(output.shape)}; chunking splits the positions axis of "
            f"(batch, positions, vocabulary) logits. Pass chunk_size=None for this model."
        )
    backbone = getattr(model, "backbone", None)
    hidden = _backbone_output(graph, backbone, output) if isinstance(backbone, keras.layers.Layer) else None
    if hidden is None:
        operation, node_index, _ = output._keras_history
        node = operation._inbound_nodes[node_index]
        inputs = node.arguments.keras_tensors
        expected = f"the input of its last layer {operation.name!r}"
        if len(inputs) != 1:
            raise ValueError(
                f"The {role} {model.name!r}: the output head was expected at {expected}, but that layer reads "
                f"{len(inputs)} tensors. {CHUNK_ADVICE}"
            )
        hidden = inputs[0]
    else:
        expected = f"the output of its backbone {backbone.name!r}"
    if len(hidden.shape) != 3:
        raise ValueError(
            f"The {role} {model.name!r}: the output head was expected at {expected}, which has shape "
            f"{tuple(hidden.shape)}, not (batch, positions, width). {CHUNK_ADVICE}"
        )
    return hidden, output


def _backbone_output(model, backbone, output):
    """The one output of `backbone`'s call inside `model` that `output` is computed from; None if none."""
    calls = [node for nodes in model._nodes_by_depth.values() for node in nodes if node.operation is backbone]
    candidates = [tensor for node in calls for tensor in keras.tree.flatten(node.outputs)]
    ancestors = _ancestors(output)
    found = [tensor for tensor in candidates if id(tensor) in ancestors]
    return found[0] if len(found) == 1 else None


def _ancestors(tensor):
    """The ids of every KerasTensor that `tensor` is computed from (itself included)."""
    seen, stack = set(), [tensor]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        history = getattr(current, "_keras_history", None)
        if history is None:
            continue
        node = history.operation._inbound_nodes[history.node_index]
        stack.extend(node.arguments.keras_tensors)
    return seen


_LANGUAGE_MODEL_TASKS = ("CausalLM", "MaskedLM", "Seq2SeqLM")


def is_language_model_task(model):
    """Whether `model` is a KerasHub `CausalLM`, `MaskedLM` or `Seq2SeqLM` (KerasHub need not be imported)."""
    return any(
        cls.__name__ in _LANGUAGE_MODEL_TASKS and cls.__module__.startswith("keras_hub") for cls in type(model).__mro__
    )


def chunking_split(chunk_size, source, student, pairs):
    """The student split at its head where the distiller chunks (the teacher source split too); else None.

    `chunk_size=None` is dense. `"auto"` chunks KerasHub language-model tasks (a student whose teachers
    are such tasks too, or a `TeacherCache`) and stays dense elsewhere, also where a model's head
    cannot be separated (a `MaskedLM`'s head reads the masked positions too) or a layer pair (`pairs`,
    the distiller's `BoundPairs`) reads a layer of a head; an integer chunks or raises, naming the
    model whose head was not found or the pair.
    """
    if chunk_size is None:
        return None
    if chunk_size == "auto":
        if not is_language_model_task(student) or not all(is_language_model_task(m) for m in source.models):
            return None
        try:
            split = SplitModel(student, "student")
            if _paired_head_layers(split, source, pairs):
                return None
            source.split_heads(chunk_size)
        except ValueError:
            return None
        return split
    split = SplitModel(student, "student")
    paired = _paired_head_layers(split, source, pairs)
    if paired:
        role, model, description, path = paired[0]
        raise ValueError(
            f"{description}: the {role} layer {path!r} is part of {model.name!r}'s output head, which "
            f"chunk_size={chunk_size} runs a chunk of positions at a time, so its whole output never exists. Pair "
            "a layer before the head (e.g. the layer of the final hidden states), or pass chunk_size=None."
        )
    source.split_heads(chunk_size)
    return split


def _paired_head_layers(student_split, source, pairs):
    """`[(role, model, pair description, layer path)]` of the paired layers that the models' output heads call."""
    found = [("student", student_split.model, *p) for p in pairs.paired_among("student", student_split.head.layers)]
    if pairs.teacher_layers:
        for model in source.models:
            head = SplitModel(model, "teacher").head
            found += [("teacher", model, *p) for p in pairs.paired_among("teacher", head.layers)]
    return found
