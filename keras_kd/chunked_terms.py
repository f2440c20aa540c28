"""The token-level terms of a batch, a chunk of positions at a time (`Distiller(chunk_size=...)`).

Both terms are sums over positions divided by a number that does not depend on the logits:

    soft = w_soft * sum_p w_p * D_p / N_soft        hard = sum_p w_p * CE_p / N_hard

(`N` is the batch's number of positions, or the sum of the weights for a soft loss with
`reduction="mean_with_sample_weight"`). So the chunks' numerators add up to the dense value, and the
token loss `alpha * hard + (1 - alpha) * soft` has, per chunk, a gradient that only that chunk's
logits enter. A chunk runs the teacher's head (frozen) and the student's head on its slice of the
final hidden states, reduces the terms, and lets its logits go.

Gradients without keeping every chunk's logits, two ways (`StepContract._chunk_gradients`):

- `"fused"`: each chunk's gradient with respect to its slice of the student's hidden states and to
  the student head's variables is computed right away, in the forward pass (what fused
  linear-loss kernels do); the step then differentiates a scalar with the loss's value whose
  gradient is exactly those gradients (`StepContract._with_gradients`: a custom gradient on
  TensorFlow and PyTorch, the surrogate `V + sum(G_h * (h - sg(h))) + sum_v sum(G_v * (v - sg(v)))`,
  `sg` stop-gradient, on JAX, where XLA fuses it), and carries them on through the student's body.
  The head runs once forward and once backward per chunk, as in the dense step.
- `"remat"`: each chunk is wrapped in `keras.remat` and differentiated with the rest of the step; its
  logits are recomputed in the backward pass (one more forward of both heads per chunk).

Callable soft losses see each chunk's logits and weights; they are combined as means over positions,
`sum_c value_c * positions_c / positions`, which is their dense value when they average over the
batch and positions (as `keras_kd.losses` functions with `weighted_mean` do). A compiled loss is
combined the same way and must therefore use Keras's default `"sum_over_batch_size"` reduction.
"""

import keras
from keras import ops

from keras_kd.losses._common import align_weights
from keras_kd.token_logits import as_token_logits, positions_slice


class ChunkedTerms:
    """The soft and hard terms of one batch from `TokenLogits`, chunk by chunk (see the module docstring).

    Args:
        objective: the `keras_kd.objective.Objective` whose terms these are.
        steps: the backend's step contract (`_value_and_gradients`, `_frozen`, `_chunk_gradients`).
        head_variables: returns the student head's trainable variables.
    """

    def __init__(self, objective, steps, head_variables):
        self.objective = objective
        self.steps = steps
        self.head_variables = head_variables

    def __call__(self, teacher, student, y, sample_weight):
        """`(token_loss, soft, hard)`: the weighted sum that carries the gradients, and the two logged values."""
        teacher = as_token_logits(teacher)
        chunk, training = student.chunk_positions, student.training
        batch, positions = student.batch, student.positions
        count = ops.cast((batch or ops.shape(student.parts)[0]) * positions, "float32")
        weight = None
        if sample_weight is not None:
            ones = ops.ones(ops.shape(student.parts)[:2], "float32")
            weight = ops.broadcast_to(align_weights(sample_weight, ones), ops.shape(ones))
        v = self.objective.variables
        warmup = 1.0 if v.soft_loss_warmup is None else v.soft_loss_warmup
        soft_scale = warmup / self.objective.soft_term.denominator(weight, count)
        if y is None:
            soft_weight, hard_weight = soft_scale, None
        else:
            soft_weight, hard_weight = (1.0 - v.alpha) * soft_scale, v.alpha / count
        if training and self.steps._chunk_gradients == "fused":
            token, soft_sum, hard_sum = self._fused(teacher, student, y, weight, chunk, soft_weight, hard_weight)
        else:
            numerators = _Numerators(self.objective, teacher, student, y, weight, self.steps._frozen)
            if training:  # "remat": each chunk is differentiated with the step, its logits recomputed
                sums = self._unrolled_sums(numerators, positions, chunk)
            else:
                sums = self._loop(positions, chunk, numerators.add_sums, ops.zeros((2,), "float32"))
            soft_sum, hard_sum = sums[0], sums[1]
            token = soft_weight * soft_sum + (0.0 if hard_weight is None else hard_weight * hard_sum)
        soft = ops.stop_gradient(soft_sum * soft_scale)
        hard = None if y is None else ops.stop_gradient(hard_sum / count)
        return token, soft, hard

    def _loop(self, positions, chunk, add, carry):
        """`carry` through `add(carry, start, size)` per chunk: the full chunks in the backend's loop, then the rest.

        A loop (JAX: `fori_loop`) rather than one copy of the chunk's work per chunk: XLA gives every unrolled copy
        buffers of its own, so the temporary memory of an unrolled step grows with the whole logits again.
        """
        full = positions // chunk
        carry = self.steps._chunk_loop(full, lambda index, carry: add(carry, index * chunk, chunk), carry)
        if positions % chunk:
            carry = add(carry, full * chunk, positions % chunk)
        return carry

    def _unrolled_sums(self, numerators, positions, chunk):
        sums = None
        for start in range(0, positions, chunk):
            arguments = numerators.arguments(start, min(chunk, positions - start))
            if sums is not None:
                arguments = self.steps._in_order(sums, arguments)
            chunk_sums = numerators.chunk_sums(arguments, rematerialized=True)
            sums = chunk_sums if sums is None else sums + chunk_sums
        return sums

    def _fused(self, teacher, student, y, weight, chunk, soft_weight, hard_weight):
        variables = self.head_variables()
        soft_weight = ops.stop_gradient(soft_weight)
        hard_weight = None if hard_weight is None else ops.stop_gradient(hard_weight)
        # The chunks read the hidden states as constants: the step differentiates the surrogate below instead.
        hidden = ops.stop_gradient(student.parts)
        numerators = _Numerators(
            self.objective, teacher, student.map_parts(ops.stop_gradient), y, weight, self.steps._frozen
        )

        def add(carry, start, size):
            value, soft_sum, hard_sum, hidden_gradient, gradients = carry
            arguments = self.steps._in_order(carry, numerators.arguments(start, size))
            teacher_parts, student_hidden, *rest = arguments

            def chunk_loss(hidden):
                soft_n, hard_n = numerators(teacher_parts, hidden, *rest)
                loss = soft_weight * soft_n + (0.0 if hard_weight is None else hard_weight * hard_n)
                return loss, (soft_n, hard_n)

            chunk_value, (soft_n, hard_n), chunk_hidden_gradient, chunk_gradients = self.steps._value_and_gradients(
                chunk_loss, student_hidden, variables
            )
            begin = [0, start] + [0] * (len(hidden.shape) - 2)
            hidden_gradient = ops.slice_update(hidden_gradient, begin, ops.cast(chunk_hidden_gradient, hidden.dtype))
            gradients = [_add(self.steps, total, g) for total, g in zip(gradients, chunk_gradients)]
            return value + chunk_value, soft_sum + soft_n, hard_sum + hard_n, hidden_gradient, gradients

        zero = ops.zeros((), "float32")
        carry = (zero, zero, zero, ops.zeros_like(hidden), [None] * len(variables))
        value, soft_sum, hard_sum, hidden_gradient, sums = self._loop(student.positions, chunk, add, carry)
        tensors, gradients = [student.parts], [hidden_gradient]
        for variable, gradient in zip(variables, sums):
            if gradient is not None:
                tensors.append(variable.value)
                gradients.append(ops.cast(gradient, variable.dtype))
        return self.steps._with_gradients(value, tensors, gradients), soft_sum, hard_sum


def _add(steps, total, gradient):
    if gradient is None:
        return total
    gradient = ops.cast(gradient, "float32")
    return gradient if total is None else steps._accumulate(total, gradient)


class _Numerators:
    """One chunk's numerators `(soft, hard)` from its slices of the teacher's parts, the student's hidden states,
    the weights and the labels."""

    def __init__(self, objective, teacher, student, y, weight, frozen):
        self.objective = objective
        self.teacher = teacher
        self.student = student
        self.y = y
        self.weight = weight
        self.frozen = frozen

    def arguments(self, start, size):
        """The chunk of `size` positions from `start` (an int, or a loop's traced index) of every argument."""
        arguments = [self.teacher.chunk(start, size), self.student.chunk(start, size)]
        arguments.append(None if self.weight is None else positions_slice(self.weight, start, size))
        arguments.append(None if self.y is None else positions_slice(self.y, start, size))
        return arguments

    def add_sums(self, sums, start, size):
        return sums + self.chunk_sums(self.arguments(start, size), rematerialized=False)

    def __call__(self, teacher_parts, student_hidden, weight, y):
        objective = self.objective
        temperature = objective.variables.temperature
        with self.frozen():
            teacher_logits = keras.tree.map_structure(ops.stop_gradient, self.teacher.logits(teacher_parts))
        student_logits = self.student.logits(student_hidden)
        teacher_logits = objective.source.targets(teacher_logits, temperature)
        count = ops.cast(ops.shape(student_logits)[0] * ops.shape(student_logits)[1], "float32")
        soft = objective.soft_term.chunk_numerator(teacher_logits, student_logits, temperature, weight, y, count)
        hard = ops.zeros((), "float32") if y is None else objective.hard_numerator(y, student_logits, weight, count)
        return soft, hard

    def chunk_sums(self, arguments, rematerialized):
        """`[soft, hard]` numerators of one chunk's `arguments`; their logits recomputed for the gradient if asked."""
        teacher_parts, student_hidden, weight, y = arguments

        def sums(hidden):
            return ops.stack(self(teacher_parts, hidden, weight, y))

        return (keras.remat(sums) if rematerialized else sums)(student_hidden)
