"""Capturing inner layers' outputs during a model's own forward pass.

A tap replaces one layer instance's `call` with a wrapper that runs the
original and, while a `capture()` block is open in the same thread, records the
output. The model itself is unchanged: it runs once, as it always does, and the
distiller reads the paired layers' outputs off the capture afterwards. This
works for layers inside nested models and KerasHub backbones, in eager, traced
and jitted steps alike, because it only needs the layer's `__call__`.

Captures are thread-local because `tf.distribute.MirroredStrategy` traces each
replica in its own thread. A capture only lives for one forward pass, so no
traced tensor outlives the trace that made it.
"""

import functools
import threading

import keras

_state = threading.local()


def _open_capture():
    return getattr(_state, "capture", None)


class capture:
    """Context manager: `with capture() as outputs:` maps `id(layer)` to the output of each tapped layer.

    A layer that runs more than once in the block (a tied embedding, a shared
    layer) keeps the output of its first run.
    """

    def __enter__(self):
        self._outer = _open_capture()
        self.outputs = {}
        _state.capture = self.outputs
        return self.outputs

    def __exit__(self, *exc_info):
        _state.capture = self._outer
        return False


def install_tap(layer):
    """Wraps `layer.call` once so that open captures record its output; returns the layer."""
    if getattr(layer, "_keras_kd_tapped", False):
        return layer
    original_call = layer.call
    key = id(layer)

    @functools.wraps(original_call)
    def tapped_call(*args, **kwargs):
        outputs = original_call(*args, **kwargs)
        captured = _open_capture()
        if captured is not None and key not in captured:
            captured[key] = outputs
        return outputs

    layer.call = tapped_call
    layer._keras_kd_tapped = True
    return layer


def captured_output(outputs, layer, path, role):
    """The single tensor that `layer` produced in a capture, or a clear error."""
    if id(layer) not in outputs:
        raise RuntimeError(
            f"The {role} layer {path!r} did not run during the {role}'s forward pass, so its output "
            "cannot be paired. Pair a layer that the model calls on every batch."
        )
    value = outputs[id(layer)]
    if not _is_tensor(value):
        raise ValueError(
            f"The {role} layer {path!r} returns {type(value).__name__} ({_describe(value)}), not one "
            "tensor. Pair a layer with a single tensor output (e.g. the next layer that consumes it)."
        )
    return value


def _is_tensor(value):
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (dict, list, tuple))


def _describe(value):
    return str(keras.tree.map_structure(lambda t: tuple(getattr(t, "shape", ())), value))
