"""Pairing a model's named outputs: `"sequence_output"` of a KerasHub backbone, any key of a dict output.

A pair's path names a layer (`keras_kd.features.layer_paths`) or, for a model that returns a dict,
one of its keys. The key wins where a layer has the same name: the output is what the model
serves (a backbone's `"pooled_output"` is computed after the layer of that name would be). The
value is read off the model's own return value in the step, so pairing an output costs no capture
and no second forward pass.
"""

import keras


class ModelOutput:
    """The output of `model` under `key`, standing where a pair would otherwise name a layer."""

    def __init__(self, model, key):
        self.model = model
        self.key = key
        self.name = key


def output_structure(model):
    """The model's outputs as the model returns them (a dict, a list or one tensor) where known, else None.

    Functional models (KerasHub backbones and tasks) tell it from their graph; a subclassed model
    that was built on one input is run symbolically on that input's shape.
    """
    try:
        return model.output
    except (AttributeError, ValueError):
        pass
    build_shapes = getattr(model, "_build_shapes_dict", None)
    if not build_shapes or len(build_shapes) != 1:
        return None
    input_shape = tuple(build_shapes.values())[0]
    symbolic = keras.tree.map_shape_structure(lambda s: keras.KerasTensor((None, *s[1:])), input_shape)
    try:
        return model.compute_output_spec(symbolic)
    except Exception:  # a model that cannot be traced symbolically: its layers are still pairable
        return None


def output_keys(model):
    """The keys of the dict the model returns; [] for a model that returns a tensor or a list."""
    structure = output_structure(model)
    return sorted(structure) if isinstance(structure, dict) else []


def find_output(model, path):
    """A `ModelOutput` when `path` is a key of the model's dict output, else None."""
    if "/" in path or path not in output_keys(model):
        return None
    return ModelOutput(model, path)


def output_shape(reference):
    """The shape of a `ModelOutput`, batch axis first."""
    return tuple(output_structure(reference.model)[reference.key].shape)


def upstream_variables(reference):
    """The trainable variables that the output depends on (a Functional model's graph)."""
    model = reference.model
    try:
        return keras.Model(model.inputs, model.output[reference.key]).trainable_variables
    except (AttributeError, ValueError, TypeError) as error:
        raise ValueError(
            f"Cannot tell which variables the output {reference.key!r} of {model.name!r} depends on ({error}): "
            "this needs a Functional model (KerasHub backbones are)."
        ) from error


def read_output(outputs, reference, role):
    """The value of `reference` in what the model returned (`outputs`) in this step."""
    if not isinstance(outputs, dict) or reference.key not in outputs:
        keys = sorted(outputs) if isinstance(outputs, dict) else "a single tensor"
        raise ValueError(
            f"The {role} returned {keys}, not an output {reference.key!r}: a pair on a model's output reads the "
            "dict the model returns in the step. Pair a layer instead, or a key the model returns."
        )
    return outputs[reference.key]
