"""Capturing inner layers' outputs during a model's own forward pass.

`with capture(layers) as outputs:` replaces each given layer instance's `call` with a wrapper
that runs the original and records its output in `outputs` (keyed by `id(layer)`), and puts the
layer's own `call` back when the block ends: outside a capture the user's models are exactly as
they were. The model itself runs once, as it always does, and the distiller reads the paired
layers' outputs off the capture afterwards. This works for layers inside nested models and
KerasHub backbones, in eager, traced and jitted steps alike, because it only needs the layer's
`__call__`; a traced step keeps what it traced, so the wrapper's cost is paid at trace time (and
per step on PyTorch, which runs eagerly: a few attribute assignments).

Captures are thread-local because `tf.distribute.MirroredStrategy` traces each replica in its own
thread; the wrappers are counted, so a layer keeps its wrapper while any thread's capture is open.
A capture only lives for one forward pass, so no traced tensor outlives the trace that made it.
"""

import functools
import threading

import keras

_state = threading.local()
_lock = threading.Lock()
_wrapped = {}  # id(layer) -> [layer, its own `call` attribute or _ABSENT, open captures using it]
_ABSENT = object()


def _open_capture():
    return getattr(_state, "capture", None)


def _wrap(layer):
    with _lock:
        entry = _wrapped.get(id(layer))
        if entry is not None:
            entry[2] += 1
            return
        own_call = layer.__dict__.get("call", _ABSENT)
        original_call = layer.call
        key = id(layer)

        @functools.wraps(original_call)
        def capturing_call(*args, **kwargs):
            outputs = original_call(*args, **kwargs)
            captured = _open_capture()
            if captured is not None and key not in captured:
                captured[key] = outputs
            return outputs

        object.__setattr__(layer, "call", capturing_call)
        _wrapped[key] = [layer, own_call, 1]


def _unwrap(layer):
    with _lock:
        entry = _wrapped[id(layer)]
        entry[2] -= 1
        if entry[2]:
            return
        del _wrapped[id(layer)]
        if entry[1] is _ABSENT:
            object.__delattr__(layer, "call")
        else:
            object.__setattr__(layer, "call", entry[1])


class capture:
    """Context manager: `with capture(layers) as outputs:` maps `id(layer)` to the output of each layer that runs.

    A layer that runs more than once in the block (a tied embedding, a shared
    layer) keeps the output of its first run. The layers carry no wrapper before
    or after the block.
    """

    def __init__(self, layers=()):
        unique = {id(layer): layer for layer in layers}
        self.layers = list(unique.values())

    def __enter__(self):
        self._outer = _open_capture()
        self.outputs = {}
        _state.capture = self.outputs
        for index, layer in enumerate(self.layers):
            try:
                _wrap(layer)
            except BaseException:
                for wrapped in self.layers[:index]:
                    _unwrap(wrapped)
                _state.capture = self._outer
                raise
        return self.outputs

    def __exit__(self, *exc_info):
        for layer in self.layers:
            _unwrap(layer)
        _state.capture = self._outer
        return False


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
