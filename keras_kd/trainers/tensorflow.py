"""TensorFlow steps: the teacher outside the tape, the student under `tf.GradientTape`.

Under `tf.distribute` every replica computes its loss on its own slice of the
batch and the optimizer sums the replicas' gradients, so the step divides the
loss by `num_replicas_in_sync` before differentiating. The distiller's terms are
per-replica means; Keras's compiled losses already divide by the replica count,
which `keras_kd.objective.Objective` undoes so that every term is on the same scale.

`compile`, `_maybe_symbolic_build` and `_make_function` override Keras 3.15's
TensorFlow trainer for this class only (Keras itself is not patched):

- `MultiWorkerMirroredStrategy` (keras-team/keras#20585). Keras's
  `_maybe_symbolic_build` reduces the first `PerReplica` batch across replicas
  (`strategy.reduce("MEAN", batch, axis=None)`), which fails across workers
  ("Attempt to convert a value (PerReplica:...) ... to a Tensor"); building needs
  only the batch's shapes, so `_maybe_symbolic_build` takes the first local
  replica's slice instead, under every strategy. And in multi-worker mode Keras's
  `reduce_per_replica` reduces each log with `strategy.reduce("MEAN", v, axis=0)`,
  which has no axis 0 for a scalar; `_make_function` gives the logs a leading axis
  of length 1 there, so that reduction is the mean over replicas, as under the
  other strategies.
- A `keras.distribution` (JAX's API) set under TensorFlow would be ignored by Keras's TensorFlow
  trainer; `fit`, `evaluate`, `predict` and the `*_on_batch` methods refuse it.
- Variables outside the strategy. A teacher, student or Distiller created outside
  the `strategy.scope()` it is compiled or fitted under makes Keras fail in the
  optimizer with a bare `AssertionError` (or a `TypeError`), or train silently
  undistributed; `compile`, and the build at the start of `fit`, `evaluate`,
  `train_on_batch` and `test_on_batch`, raise a `ValueError` naming the models
  and the fix instead.

Nothing here needs more than `TPUStrategy` has (`experimental_local_results`,
`extended.variable_created_in_scope`), but only the CPU strategies are tested.
"""

import functools

import keras
import tensorflow as tf
from keras.utils import unpack_x_y_sample_weight

from keras_kd.token_logits import map_tensors
from keras_kd.trainers.base import StepContract, refuse_keras_distribution


def check_no_keras_distribution(method):
    """Raises under a `keras.distribution` (a JAX API): Keras's TensorFlow trainer would ignore it."""
    refuse_keras_distribution(
        method,
        "TensorFlow",
        "On TensorFlow, create the teacher, the student and the Distiller inside "
        "`with tf.distribute.MirroredStrategy().scope():` (docs/distribution.md), or use the JAX backend for "
        "keras.distribution.",
    )


class DistillationSteps(StepContract):
    def _check_entry(self, method):
        check_no_keras_distribution(method)

    def _replicas(self):
        return self.distribute_strategy.num_replicas_in_sync

    def _in_order(self, previous, following):
        # The graph's executor runs independent ops at once: without this, every chunk's logits could be live.
        with tf.control_dependencies([leaf for leaf in tf.nest.flatten(previous) if leaf is not None]):
            return tf.nest.map_structure(lambda leaf: None if leaf is None else tf.identity(leaf), following)

    def _chunk_loop(self, count, body, carry):
        if count <= 1 or tf.executing_eagerly():
            return super()._chunk_loop(count, body, carry)
        carry = body(0, carry)  # unrolled once: the carry's structure (which gradients exist) is known after it
        # One `while_loop` body rather than a copy of the chunk's work per chunk: in an unrolled graph the
        # allocator keeps more than one chunk's buffers alive (3.1 GB vs 1.9 GB at 128,256 x 2,048).
        template = tf.nest.flatten(carry)
        present = [i for i, leaf in enumerate(template) if leaf is not None]

        def rebuilt(values):
            leaves = list(template)
            for i, value in zip(present, values):
                leaves[i] = value
            return tf.nest.pack_sequence_as(carry, leaves)

        def step(index, *values):
            leaves = tf.nest.flatten(body(index, rebuilt(values)))
            return (index + 1, *(leaves[i] for i in present))

        _, *values = tf.while_loop(
            lambda index, *_: index < count,
            step,
            (tf.constant(1), *(template[i] for i in present)),
            parallel_iterations=1,
        )
        return rebuilt(values)

    def _with_gradients(self, value, tensors, gradients):
        @tf.custom_gradient
        def attached(*tensors):
            def gradient(upstream):
                return [tf.cast(upstream, t.dtype) * tf.cast(g, t.dtype) for g, t in zip(gradients, tensors)]

            return tf.identity(tf.stop_gradient(value)), gradient

        return attached(*tensors)

    def _value_and_gradients(self, function, hidden, variables):
        hidden = tf.stop_gradient(hidden)
        with tf.GradientTape() as tape:
            tape.watch(hidden)
            value, aux = function(hidden)
        gradients = tape.gradient(value, [hidden, *variables])
        return value, aux, gradients[0], gradients[1:]

    def train_step(self, data):
        """One training step: teacher outside the tape, student loss under `GradientTape`, update, metrics."""
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        if self._augmentation is not None:
            x = map_tensors(tf.stop_gradient, self._augment_inputs(x))
        teacher_outputs = map_tensors(tf.stop_gradient, self._teacher_forward(x))
        with tf.GradientTape() as tape:
            student_logits, student_features = self._student_forward(x, training=True)
            loss, terms = self._objective(x, y, sample_weight, teacher_outputs, (student_logits, student_features))
            scaled_loss = self._objective.loss_for_gradients(loss, self.optimizer)
        variables = self.trainable_variables
        gradients = self._objective.mask_gradients(tape.gradient(scaled_loss, variables), variables)
        student_logits = self._metrics_before_update(x, y, student_logits, sample_weight)
        self.optimizer.apply_gradients(zip(gradients, variables))
        loss = self._objective.logged_loss(loss, [v.value for v in variables])
        return self._update_metrics(loss, terms, x, y, student_logits, sample_weight)

    def test_step(self, data):
        """One evaluation step: the distillation loss and metrics of `data`, no update."""
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        x = self._augment_inputs(x, training=False)
        teacher_outputs = self._teacher_forward(x)
        student_outputs = self._student_forward(x, training=False)
        loss, terms = self._objective(x, y, sample_weight, teacher_outputs, student_outputs)
        return self._update_metrics(loss, terms, x, y, student_outputs[0], sample_weight)

    def _fit_data(self, x, shuffle):
        # A TeacherCache's PyDataset costs a Python call and a conversion per batch on TensorFlow
        # (~2.7 ms against a ~4 ms student step): feed the in-memory cache through tf.data instead.
        as_tf_dataset = getattr(x, "as_tf_dataset", None)
        if as_tf_dataset is not None:
            as_tf_data = as_tf_dataset(shuffle_batches=bool(shuffle))
            if as_tf_data is not None:
                return as_tf_data, False  # shuffled above; Keras would warn that it ignores shuffle
        return x, shuffle

    # tf.distribute: see the module docstring.

    def compile(self, *args, **kwargs):
        check_strategy_owns_variables(self, self.distribute_strategy)
        return super().compile(*args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        check_strategy_owns_variables(self, strategy)
        first_batch_due = bool(self._first_batch_pending)
        compiled = (self._compile_metrics, self._compile_loss)
        compiled_unbuilt = any(part is not None and not part.built for part in compiled)
        if iterator is not None and (self._distribute_strategy is not None or first_batch_due or compiled_unbuilt):
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(functools.partial(_first_local_value, strategy), next(batches))
                break
            iterator = None
        if first_batch_due:
            self._inspect_first_batch(data_batch)
        if self._distribute_strategy is None and compiled_unbuilt and data_batch is not None:
            # Without a strategy Keras 3.15 leaves the compiled loss and metrics to be created inside the
            # first traced step. After label-free batches (which build neither) a retrace with labels would
            # then create variables inside an already traced tf.function, which TensorFlow refuses. Build here.
            return self._symbolic_build(data_batch=data_batch)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _make_function(self, step_function):
        if _logs_reduced_along_axis_0(self.distribute_strategy):
            step_function = _with_replica_axis(step_function)
        return super()._make_function(step_function)


def _first_local_value(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _logs_reduced_along_axis_0(strategy):
    """Keras 3.15's condition (`_collective_all_reduce_multi_worker`) for reducing logs along axis 0."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def _with_replica_axis(step_function):
    @functools.wraps(step_function)
    def step(data):
        return keras.tree.map_structure(lambda value: tf.expand_dims(value, 0), step_function(data))

    return step


def check_strategy_owns_variables(distiller, strategy):
    """Raises unless every variable of `distiller` (teacher and student included) was created under `strategy`.

    Keras records the strategy a model is created under and trains under it; variables
    created outside it are not distributed (`MirroredVariable`), and the optimizer then
    fails with a bare `AssertionError`, or the run trains on one device.
    """
    owners = {}
    for part, model in [*[("teacher", t) for t in distiller.teachers], ("student", distiller.student)]:
        if isinstance(model, keras.layers.Layer):
            owners.update({id(v): part for v in model.weights})
    strays = {}
    for variable in distiller.weights:
        if not strategy.extended.variable_created_in_scope(variable.value):
            strays.setdefault(owners.get(id(variable), "Distiller"), []).append(variable)
    if not strays:
        return
    distributed = distiller._distribute_strategy is not None or tf.distribute.has_strategy()
    if not distributed:
        runs_under = "without a tf.distribute strategy (the Distiller was created outside any strategy scope)"
    else:
        runs_under = f"under {type(strategy).__name__}"
    found = []
    for part, whose in [
        ("teacher", "the teacher's"),
        ("student", "the student's"),
        ("Distiller", "the Distiller's own"),
    ]:
        if part in strays:
            names = ", ".join(repr(v.path) for v in strays[part][:2])
            if len(strays[part]) > 2:
                names += f" and {len(strays[part]) - 2} more"
            found.append(f"{whose} variables ({names}) {_created_under(strays[part][0], distributed)}")
    raise ValueError(
        f"This Distiller is compiled or fitted {runs_under}, but "
        f"{'; '.join(found)}. Keras's TensorFlow trainer runs a model only under the strategy its variables were "
        "created in; otherwise its optimizer fails with a bare AssertionError, or the run trains undistributed. "
        "Create the teacher, the student and the Distiller inside `with strategy.scope():` (compile and fit may run "
        "inside it or after it)."
    )


def _created_under(variable, distributed):
    owner = getattr(variable.value, "_distribute_strategy", None)
    if owner is None:
        return "were created outside any tf.distribute strategy scope"
    return f"were created under {'another ' if distributed else ''}{type(owner).__name__}"
