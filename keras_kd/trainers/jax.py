"""JAX steps: stateless, `train_step(state, data) -> (logs, state)`, so Keras can jit them.

Model code reads variables through a `StatelessScope` that maps each Keras
variable to its value in `state`; the teacher's forward pass happens before
`jax.value_and_grad` and under `stop_gradient`.

Under `keras.distribution` (`DataParallel`, `ModelParallel`) Keras jits these steps
with the variables' shardings; every variable must then live on the
distribution's device mesh, which holds when teacher, student and distiller are
made inside `distribution.scope()`. `fit`, `evaluate`, `predict` and the
`*_on_batch` methods check that first, since Keras otherwise fails inside
`jax.jit` (and `fit`, `evaluate`, `predict` after dropping the variables' values).

Keras's `fit`, `evaluate` and `predict` move the variables' values into the training state
(`_get_jax_state(purge_model_variables=True)`) and put them back at the end of the epoch; an
exception inside a step (a bad batch, a layer that raises) leaves every variable empty, and each
later call fails deep inside a layer ("'NoneType' object is not callable"). `_restoring_variables`,
around each entry point, puts the last values back after any exception: the values the state was
taken from, or those of the last step that ran (`_jax_state`) where the step consumed them.
"""

import contextlib

import jax
import keras
from keras import StatelessScope
from keras.utils import unpack_x_y_sample_weight

from keras_kd.token_logits import TokenLogits
from keras_kd.trainers.base import BatchPredictor as _BatchPredictor
from keras_kd.trainers.base import StepContract


def _current_values(scope, variables, values):
    updated = []
    for variable, value in zip(variables, values):
        new_value = scope.get_current_value(variable)
        updated.append(value if new_value is None else new_value)
    return updated


def _device_names(devices):
    return ", ".join(sorted(f"{device.platform}:{device.id}" for device in devices))


def _owner(model, variable):
    """Which part of the distiller a variable belongs to, for error messages."""
    key = id(variable)
    parts = [("the teacher", [v for teacher in model.teachers for v in teacher.variables])]
    parts += [("the student", model.student.variables)]
    parts += [(f"the pair {pair.describe()}", pair.variables) for pair in model.pairs]
    parts += [("the optimizer", getattr(getattr(model, "optimizer", None), "variables", []))]
    for name, variables in parts:
        if any(id(v) == key for v in variables):
            return name
    return "the distiller"


def check_distribution_placement(model, method):
    """Raises when a variable lives off the current `keras.distribution`'s device mesh.

    Variables are placed when they are created: a model made outside a distribution keeps its
    variables on one device, and a step jitted over the mesh cannot take them. Keras 3.15 fails
    inside `jax.jit` ("Received incompatible devices for jitted computation") after it has
    already dropped every variable's value, which leaves the models unusable.
    """
    distribution = keras.distribution.distribution()
    if distribution is None:
        return
    mesh_devices = set(distribution.device_mesh.backend_mesh.devices.flat)
    optimizer = getattr(model, "optimizer", None)
    variables = model.trainable_variables + model.non_trainable_variables + model.metrics_variables
    variables += list(getattr(optimizer, "variables", []))
    misplaced = []
    for variable in variables:
        sharding = getattr(getattr(variable, "_value", None), "sharding", None)
        if sharding is not None and set(sharding.device_set) != mesh_devices:
            misplaced.append((variable, sharding))
    if not misplaced:
        return
    variable, sharding = misplaced[0]
    raise ValueError(
        f"{method}() runs under {type(distribution).__name__} over devices [{_device_names(mesh_devices)}], but "
        f"{len(misplaced)} of the distiller's {len(variables)} variables live elsewhere, e.g. {variable.path!r} "
        f"({_owner(model, variable)}) on [{_device_names(sharding.device_set)}]. Variables are placed when they "
        "are created, so models made outside the distribution cannot run under it. Create (or load) the "
        "teacher and the student, then build and compile the Distiller, inside `with distribution.scope():` "
        f"(or after `keras.distribution.set_distribution(distribution)`), and call {method}() there."
    )


def _usable(value):
    return value is not None and not getattr(value, "is_deleted", lambda: False)()


class _TakenValues:
    """The values Keras's JAX trainer took out of the distiller's variables during one entry point, by reference."""

    def __init__(self):
        self.depth = 0
        self.values = {}  # id(variable) -> (variable, value)

    def record(self, variables):
        for variable in variables:
            if variable._value is not None:
                self.values[id(variable)] = (variable, variable._value)

    def restore(self, model):
        """Gives every emptied variable its last value: the one taken, or the last step's where that was consumed."""
        for variable, value in self.values.values():
            if variable._value is None and _usable(value):
                variable._value = value
        state = getattr(model, "_jax_state", None) or {}
        optimizer = getattr(model, "optimizer", None)
        for key, variables in [
            ("trainable_variables", model.trainable_variables),
            ("non_trainable_variables", model.non_trainable_variables),
            ("optimizer_variables", getattr(optimizer, "variables", [])),
            ("metrics_variables", model.metrics_variables),
        ]:
            for variable, value in zip(variables, state.get(key) or []):
                if variable._value is None and _usable(value):
                    variable._value = value
        model._jax_state = None
        model._jax_state_synced = True


def _token_logits_children(logits):
    return (logits.parts,), (logits.head, logits.chunk_positions, logits.training)


# The student's `TokenLogits` leave the gradient computation as auxiliary outputs, which JAX takes as pytrees.
jax.tree_util.register_pytree_node(
    TokenLogits, _token_logits_children, lambda static, children: TokenLogits(children[0], *static)
)


class DistillationSteps(StepContract):
    def _check_entry(self, method):
        check_distribution_placement(self, method)

    def _chunk_loop(self, count, body, carry):
        if count == 0:
            return carry
        carry = body(0, carry)  # unrolled once: the carry's structure (which gradients exist) is known after it
        if count == 1:
            return carry
        # The loop reads every variable as a constant, so that the step's own differentiation does not trace
        # through it (a loop with differentiated inputs would keep every iteration's values for the backward pass).
        constants = [
            (v, jax.lax.stop_gradient(v.value)) for v in self.trainable_variables + self.non_trainable_variables
        ]
        with StatelessScope(state_mapping=constants):
            return jax.lax.fori_loop(1, count, body, carry)

    def _in_order(self, previous, following):
        _, following = jax.lax.optimization_barrier((previous, following))
        return following

    def _value_and_gradients(self, function, hidden, variables):
        # The step's own scope maps every variable to its value in the step; here the head's variables map
        # to the arguments being differentiated, outside the step's gradient (stop_gradient).
        step_values = [(v, v.value) for v in self.trainable_variables + self.non_trainable_variables]
        values = [jax.lax.stop_gradient(v.value) for v in variables]

        def chunk(hidden, values):
            with StatelessScope(state_mapping=step_values + list(zip(variables, values))):
                return function(hidden)

        (value, aux), (hidden_gradient, gradients) = jax.value_and_grad(chunk, argnums=(0, 1), has_aux=True)(
            jax.lax.stop_gradient(hidden), values
        )
        return value, aux, hidden_gradient, gradients

    @contextlib.contextmanager
    def _restoring_variables(self):
        taken = self.__dict__.get("_taken_values")
        if taken is None:
            taken = _TakenValues()
            object.__setattr__(self, "_taken_values", taken)  # plain state: not tracked by Keras
        taken.depth += 1
        try:
            yield
        except BaseException:
            taken.restore(self)
            raise
        finally:
            taken.depth -= 1
            if not taken.depth:
                taken.values = {}

    def _get_jax_state(self, **kwargs):
        # Keras empties the variables it takes here (purge_model_variables): remember their values.
        taken = self.__dict__.get("_taken_values")
        if kwargs.get("purge_model_variables") and taken is not None and taken.depth:
            if kwargs.get("trainable_variables"):
                taken.record(self.trainable_variables)
            if kwargs.get("non_trainable_variables"):
                taken.record(self.non_trainable_variables)
            if kwargs.get("optimizer_variables"):
                taken.record(self.optimizer.variables)
            if kwargs.get("metrics_variables"):
                taken.record(self.metrics_variables)
        return super()._get_jax_state(**kwargs)

    def _model_scope(self, trainable_values, non_trainable_values):
        mapping = list(zip(self.trainable_variables, trainable_values))
        mapping += zip(self.non_trainable_variables, non_trainable_values)
        return StatelessScope(state_mapping=mapping, collect_losses=True)

    def _augmented(self, trainable_values, non_trainable_values, x, training=True):
        """The batch's one augmented view (`Distiller(augment=...)`), and the seed states it advanced."""
        if self._augmentation is None:
            return x, non_trainable_values
        with self._model_scope(trainable_values, non_trainable_values) as scope:
            x = jax.lax.stop_gradient(self._augment_inputs(x, training=training))
        return x, _current_values(scope, self.non_trainable_variables, non_trainable_values)

    def _teacher_outputs(self, trainable_values, non_trainable_values, x):
        with self._model_scope(trainable_values, non_trainable_values) as scope:
            outputs = jax.lax.stop_gradient(self._teacher_forward(x))
        return outputs, _current_values(scope, self.non_trainable_variables, non_trainable_values)

    def _student_loss(self, trainable_values, non_trainable_values, x, y, sample_weight, teacher_outputs, training):
        with self._model_scope(trainable_values, non_trainable_values) as scope:
            student_outputs = self._student_forward(x, training=training)
            loss, terms = self._objective(x, y, sample_weight, teacher_outputs, student_outputs)
        non_trainable_values = _current_values(scope, self.non_trainable_variables, non_trainable_values)
        return loss, (terms, student_outputs[0], non_trainable_values)

    def _scaled_student_loss(self, trainable_values, non_trainable_values, optimizer_values, *args):
        loss, aux = self._student_loss(trainable_values, non_trainable_values, *args, training=True)
        with StatelessScope(state_mapping=list(zip(self.optimizer.variables, optimizer_values))):
            scaled_loss = self._objective.loss_for_gradients(loss, self.optimizer)
        return scaled_loss, (loss, aux)

    def _metrics_update(self, metrics_values, loss, terms, x, y, student_logits, sample_weight, model_values):
        # The model's variables too: chunked logits (`TokenLogits`) run the student's head for the metrics.
        mapping = list(zip(self.trainable_variables, model_values[0]))
        mapping += zip(self.non_trainable_variables, model_values[1])
        mapping += zip(self.metrics_variables, metrics_values)
        with StatelessScope(state_mapping=mapping) as scope:
            logs = self._update_metrics(loss, terms, x, y, student_logits, sample_weight)
        return logs, _current_values(scope, self.metrics_variables, metrics_values)

    def train_step(self, state, data):
        """One stateless, jit-compilable training step: frozen teacher, student loss, gradients, update, metrics.

        `state` is `(trainable, non_trainable, optimizer, metrics)` variable values; returns the logs
        and the new state, as Keras's JAX trainer expects.
        """
        trainable_values, non_trainable_values, optimizer_values, metrics_values = state
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        x, non_trainable_values = self._augmented(trainable_values, non_trainable_values, x)
        teacher_outputs, non_trainable_values = self._teacher_outputs(trainable_values, non_trainable_values, x)
        grad_fn = jax.value_and_grad(self._scaled_student_loss, has_aux=True)
        (_, (loss, (terms, student_logits, non_trainable_values))), gradients = grad_fn(
            trainable_values, non_trainable_values, optimizer_values, x, y, sample_weight, teacher_outputs
        )
        with self._model_scope(trainable_values, non_trainable_values):
            gradients = self._objective.mask_gradients(gradients, self.trainable_variables)
        step_values = (trainable_values, non_trainable_values)
        trainable_values, optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, gradients, trainable_values
        )
        loss = self._objective.logged_loss(loss, trainable_values)
        logs, metrics_values = self._metrics_update(
            metrics_values, loss, terms, x, y, student_logits, sample_weight, step_values
        )
        return logs, (trainable_values, non_trainable_values, optimizer_values, metrics_values)

    def test_step(self, state, data):
        """One stateless evaluation step: the distillation loss and metrics, no update; returns `(logs, state)`."""
        trainable_values, non_trainable_values, metrics_values = state
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        x, non_trainable_values = self._augmented(trainable_values, non_trainable_values, x, training=False)
        teacher_outputs, non_trainable_values = self._teacher_outputs(trainable_values, non_trainable_values, x)
        loss, (terms, student_logits, non_trainable_values) = self._student_loss(
            trainable_values, non_trainable_values, x, y, sample_weight, teacher_outputs, training=False
        )
        logs, metrics_values = self._metrics_update(
            metrics_values, loss, terms, x, y, student_logits, sample_weight, (trainable_values, non_trainable_values)
        )
        return logs, (trainable_values, non_trainable_values, metrics_values)


class BatchPredictor(_BatchPredictor):
    """JAX: batches dispatched asynchronously through the model's compiled predict step, its state taken once.

    `predict_on_batch` converts each batch's outputs to NumPy before returning, so the next batch is
    dispatched only once the last one has finished (and it re-syncs the model's variables per call):
    a build with a small teacher took 1.4x the teacher's own `predict`. Here the state is taken on
    entering (the predict step donates its buffers, so it is carried from call to call) and put back
    into the model's variables on leaving, also after an exception.
    """

    def __enter__(self):
        model = self.model
        model.make_predict_function()
        self._state = model._get_jax_state(
            trainable_variables=True,
            non_trainable_variables=True,
            metrics_variables=False,
            purge_model_variables=False,
        )
        return self

    def __exit__(self, *exception):
        trainable_variables, non_trainable_variables = self._state
        self.model._jax_state = {
            "trainable_variables": trainable_variables,
            "non_trainable_variables": non_trainable_variables,
        }
        self.model._jax_state_synced = False
        self.model.jax_state_sync()
        return False

    def dispatch(self, x):
        outputs, self._state = self.model.predict_function(self._state, iter([(x,)]))
        return outputs
