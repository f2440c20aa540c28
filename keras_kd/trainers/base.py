"""The contract between `Distiller` and the backend steps in `trainers/<backend>.py`.

Every backend's `train_step` does the same work in the same order, as Keras's own trainers do:

1. `x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)`, then (training only)
   `x = self._augment_inputs(x)`: the one augmented view both models see, outside the gradient;
2. `teacher_outputs = self._teacher_forward(x)`, outside the gradient computation
   (`stop_gradient`, `no_grad`, or before `value_and_grad`);
3. `student_outputs = self._student_forward(x, training=True)`;
4. `loss, terms = self._objective(x, y, sample_weight, teacher_outputs, student_outputs)`;
5. the gradients of `self._objective.loss_for_gradients(loss, self.optimizer)` with respect to
   `self.trainable_variables`, through `self._objective.mask_gradients(...)`, applied by the optimizer;
6. `return self._update_metrics(loss, terms, x, y, student_logits, sample_weight)`.

`test_step` is steps 1-4 and 6 with `training=False`.

`Distiller` provides (backend-agnostic): `_augment_inputs`, `_teacher_forward`, `_student_forward`, `_objective` (a
`keras_kd.objective.Objective`), `_update_metrics`, and `_inspect_first_batch(data_batch)`, which
each backend calls once per `fit` from the place where it first sees a batch eagerly.

Each backend provides `DistillationSteps`, a subclass of `StepContract` with `train_step`, `test_step`
and these hooks, which `Distiller`'s entry points call:

- `_replicas()`: how many replicas the step's loss is averaged over (1 unless `tf.distribute`);
- `_check_entry(method)`: raises when `fit`, `evaluate`, `predict` or a `*_on_batch` cannot run
  under the current distribution settings;
- `_fit_data(x, shuffle)`: the training data as this backend reads it best (`(x, shuffle)` unchanged
  by default);
- `_restoring_variables()`: a context manager around Keras's entry point, after which, should it
  raise, every variable holds a value again (JAX: Keras moves the values into its training state
  and leaves the variables empty when a step raises; a no-op elsewhere).

Chunked token-level terms (`Distiller(chunk_size=...)`, `keras_kd.chunked_terms`) also use:

- `_chunk_gradients`: `"fused"` (each chunk's gradient computed in the forward pass) or `"remat"`
  (each chunk rematerialized in the backward pass), chosen per backend by `benchmarks/lm_memory.py`;
- `_value_and_gradients(function, hidden, variables)`: for `function(hidden) -> (value, aux)`, returns
  `(value, aux, d value / d hidden, [d value / d v for v in variables])`, computed on the spot and
  outside the step's own gradient computation;
- `_frozen()`: a context in which frozen computations (a teacher's head) record nothing for gradients;
- `_with_gradients(value, tensors, gradients)`: a scalar equal to `value` whose gradients are the given
  ones (a surrogate here; a custom gradient on TensorFlow and PyTorch), and `_accumulate(total, addend)`,
  the running sum of the chunks' head gradients (in place on PyTorch); `_auto_chunk_bytes`, the logits per
  chunk that `chunk_size="auto"` takes on this backend;
- `_chunk_loop(count, body, carry)`: the loop over chunks (a Python loop; JAX: `fori_loop`, whose one
  body reuses its buffers, where XLA gives each unrolled chunk buffers of its own);
- `_in_order(previous, following)`: `following` unchanged, computed only after `previous` (JAX: an
  optimization barrier, TensorFlow: control dependencies; without them XLA and TensorFlow's graph
  executor may run every chunk at once, or merge their products with the head's kernel back into
  one, and hold all their logits).
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_kd.token_logits import AUTO_CHUNK_BYTES


def first_batch(iterator):
    """The first batch of a Keras epoch iterator, as Keras's `_symbolic_build` reads it (fit resets the iterator)."""
    for _, _, data_or_iterator in iterator:
        if isinstance(data_or_iterator, (list, tuple)):
            return data_or_iterator[0]
        return next(data_or_iterator)
    return None


def refuse_keras_distribution(method, backend, advice):
    """Raises when a `keras.distribution` is set on a backend whose Keras trainer would ignore it."""
    distribution = keras.distribution.distribution()
    if distribution is not None:
        raise ValueError(
            f"{method}() was called under keras.distribution.{type(distribution).__name__}, which Keras's "
            f"{backend} backend does not apply: the run would silently stay on one device. {advice} Or drop the "
            "distribution (leave its scope, or keras.distribution.set_distribution(None)) to train on one device."
        )


class StepContract:
    """What a backend's `DistillationSteps` implements (see the module docstring)."""

    def train_step(self, *args):
        raise NotImplementedError

    def test_step(self, *args):
        raise NotImplementedError

    def _replicas(self):
        return 1

    def _check_entry(self, method):
        """Raises when `method` cannot run here."""

    def _fit_data(self, x, shuffle):
        return x, shuffle

    def _restoring_variables(self):
        return contextlib.nullcontext()

    _chunk_gradients = "fused"
    _auto_chunk_bytes = AUTO_CHUNK_BYTES  # float32 logits per chunk where chunk_size="auto" chunks

    def _value_and_gradients(self, function, hidden, variables):
        raise NotImplementedError

    def _frozen(self):
        return contextlib.nullcontext()

    def _accumulate(self, total, addend):
        """`total + addend`, where `total` is a running sum of chunks' gradients that nothing else reads."""
        return total + addend

    def _with_gradients(self, value, tensors, gradients):
        """A scalar equal to `value` whose gradient with respect to each of `tensors` is the matching `gradients`.

        Here the surrogate `sg(value) + sum_i sum(sg(g_i) * (t_i - sg(t_i)))` (`sg`: stop-gradient); backends
        that can attach a gradient directly do, without the surrogate's temporaries the size of each tensor.
        """
        total = ops.stop_gradient(value)
        for tensor, gradient in zip(tensors, gradients):
            delta = ops.cast(tensor - ops.stop_gradient(tensor), "float32")
            total = total + ops.sum(ops.cast(ops.stop_gradient(gradient), "float32") * delta)
        return total

    def _in_order(self, previous, following):
        return following

    def _chunk_loop(self, count, body, carry):
        """`carry = body(index, carry)` for `index` in `range(count)` (JAX: one compiled loop body)."""
        for index in range(count):
            carry = body(index, carry)
        return carry

    def _symbolic_build(self, iterator=None, data_batch=None):
        # JAX and PyTorch: Keras builds the model from the first batch of fit(), evaluate() and the
        # *_on_batch methods, the one place that sees that batch eagerly (TensorFlow: see its trainer).
        if self._first_batch_pending:
            if data_batch is None and iterator is not None:
                data_batch = first_batch(iterator)
                iterator = None
            self._inspect_first_batch(data_batch)
        return super()._symbolic_build(iterator=iterator, data_batch=data_batch)


class BatchPredictor:
    """A model's `predict_on_batch` in two halves, so that one batch's forward pass overlaps the last one's fetch.

    `dispatch(x)` starts the compiled forward pass on a batch and returns its outputs as they come;
    `fetch(outputs)` returns them as NumPy (it may wait for them). Used as a context manager around
    a loop of batches (`TeacherCache.build`); the model is not to be used otherwise inside it. The
    default dispatches `predict_on_batch` whole (TensorFlow, PyTorch: it returns NumPy already).
    """

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        return False

    def dispatch(self, x):
        return self.model.predict_on_batch(x)

    @staticmethod
    def fetch(outputs):
        return keras.tree.map_structure(np.asarray, outputs)
