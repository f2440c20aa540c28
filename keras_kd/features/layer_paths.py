"""Finding a layer by path, and the shape of its output, in any Keras model.

A path is layer names joined by `/`: `"dense_2"` is a top-level layer,
`"inner_model/dense_2"` walks into a nested model, and in a KerasHub task
`"backbone/transformer_layer_3"` starts at the task's backbone whatever its
layer name. Any layer that tracks sublayers can be walked into (Sequential,
Functional and subclassed models, and composite layers).
"""

import difflib

import keras

from keras_kd.features.capture import capture


def sublayers(layer):
    """The layers directly inside `layer`, in tracking order."""
    if hasattr(layer, "_flatten_layers"):
        return list(layer._flatten_layers(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []))


def _backbone(container):
    backbone = getattr(container, "backbone", None)
    return backbone if isinstance(backbone, keras.layers.Layer) else None


def _child(container, segment):
    if segment == "backbone" and _backbone(container) is not None:
        return _backbone(container)
    for layer in sublayers(container):
        if layer.name == segment:
            return layer
    return None


def all_paths(model, limit=5000):
    """Every path under `model`, breadth first (a KerasHub task's backbone also as `backbone/...`)."""
    paths, queue = [], [("", model)]
    while queue and len(paths) < limit:
        prefix, container = queue.pop(0)
        children = [(layer.name, layer) for layer in sublayers(container)]
        if prefix == "" and _backbone(container) is not None:
            children.append(("backbone", _backbone(container)))
        for name, layer in children:
            path = f"{prefix}{name}"
            paths.append(path)
            queue.append((path + "/", layer))
    return paths


def resolve(model, path, role):
    """The layer at `path` in `model`; `role` ("teacher"/"student") names the model in errors."""
    if not isinstance(path, str) or not path or path.startswith("/") or path.endswith("/"):
        raise ValueError(
            f"A {role} layer path must be layer names joined by '/', e.g. 'dense_2' or 'inner/dense_2'; got {path!r}."
        )
    current, reached = model, []
    for segment in path.split("/"):
        child = _child(current, segment)
        if child is None:
            raise ValueError(_unknown_path_message(model, path, role, current, reached))
        calls = _calls_in_graph(current, child)
        if calls > 1:
            raise ValueError(
                f"The {role} layer path {path!r} is ambiguous: {'/'.join([*reached, segment])!r} is a shared layer, "
                f"called {calls} times in {current.name!r}, so it has {calls} outputs per forward pass and a pair "
                "would silently read the first. Pair a layer that runs once (e.g. the layer right after the call "
                "you mean), or give each use of the shared layer its own layer."
            )
        current = child
        reached.append(segment)
    return current


def _calls_in_graph(container, layer):
    """How many times `layer` is called in the graph of `container` (Functional or Sequential); 0 without one."""
    graph = getattr(container, "_functional", None) or container
    nodes = getattr(graph, "_nodes", None)
    if not isinstance(nodes, set):
        return 0
    # Keras names the node of the i-th call of an operation f"{id(op)}_ib-{i}" (keras.src.ops.function.make_node_key).
    return sum(f"{id(layer)}_ib-{index}" in nodes for index in range(len(getattr(layer, "_inbound_nodes", []))))


def _unknown_path_message(model, path, role, container, reached):
    paths = all_paths(model)
    close = difflib.get_close_matches(path, paths, n=5, cutoff=0.3)
    if not close:
        close = [p for p in paths if "/" not in p][:20]
    message = f"The {role} model {model.name!r} has no layer {path!r}. Closest existing paths: {close}."
    if reached:
        # The path walked into a nested model (e.g. a KerasHub backbone): say what that model holds.
        names = [layer.name for layer in sublayers(container)]
        message += f" {'/'.join(reached)!r} holds the layers {names}."
    return message + (
        " Name nested layers by their path, e.g. 'inner_model/dense_2', or 'backbone/...' in a KerasHub task."
    )


def output_shapes(model, layers, role):
    """The output shape of each of `layers` (objects found by `resolve`), batch axis first.

    Read off the model's graph where the layer has one (Functional, Sequential,
    KerasHub); otherwise (subclassed models) found by running the model
    symbolically on the shape it was built with, capturing the layers' outputs.
    """
    shapes, missing = {}, []
    for layer in layers:
        shape = _graph_output_shape(layer)
        if shape is None:
            missing.append(layer)
        else:
            shapes[id(layer)] = shape
    if missing:
        shapes.update(_probe_output_shapes(model, missing, role))
    return [shapes[id(layer)] for layer in layers]


def _graph_output_shape(layer):
    nodes = getattr(layer, "_inbound_nodes", [])
    if not nodes:
        return None
    outputs = nodes[0].outputs
    if len(outputs) != 1:
        return ("multiple outputs", tuple(tuple(o.shape) for o in outputs))
    return tuple(outputs[0].shape)


def _probe_output_shapes(model, layers, role):
    build_shapes = getattr(model, "_build_shapes_dict", None)
    if not build_shapes or len(build_shapes) != 1:
        names = [layer.name for layer in layers]
        raise ValueError(
            f"Cannot find the output shapes of the {role} layers {names}: the {role} {model.name!r} has no "
            f"graph (a subclassed model) and was not built on a single input. Call the {role} once on a "
            "batch (or `model.build(input_shape)`) before creating the distiller, or build it as a "
            "Functional model with keras.Input."
        )
    input_shape = tuple(build_shapes.values())[0]
    symbolic = keras.tree.map_shape_structure(lambda s: keras.KerasTensor((None, *s[1:])), input_shape)
    with capture(layers) as outputs:
        model.compute_output_spec(symbolic)
        shapes = {}
        for layer in layers:
            value = outputs.get(id(layer))
            if value is None:
                raise ValueError(
                    f"The {role} layer {layer.name!r} did not run when the {role} was called, so it cannot "
                    "be paired. Pair a layer that the model's call() uses."
                )
            if not hasattr(value, "shape") or isinstance(value, (dict, list, tuple)):
                shapes[id(layer)] = ("multiple outputs", ())
            else:
                shapes[id(layer)] = (None, *tuple(value.shape)[1:])
    return shapes


def upstream_variables(model, path):
    """The trainable variables that the output of the layer at `path` depends on.

    Walks the graph, so every model along the path must be Functional or
    Sequential (KerasHub tasks and backbones are); a subclassed model has no
    graph to walk and is an error.
    """
    chain = [model]
    for segment in path.split("/"):
        chain.append(_child(chain[-1], segment))
    variables = []
    for depth, (container, child) in enumerate(zip(chain[:-1], chain[1:])):
        innermost = depth == len(chain) - 2
        try:
            target = child.output if innermost else child.input
            variables += keras.Model(container.inputs, target).trainable_variables
        except (AttributeError, ValueError, TypeError) as error:
            raise ValueError(
                f"Cannot tell which variables the layer {path!r} depends on: {container.name!r} has no graph "
                f"connecting its inputs to {child.name!r} ({error}). This needs Functional or Sequential models "
                "along the path."
            ) from error
    unique = {id(v): v for v in variables}
    return list(unique.values())
