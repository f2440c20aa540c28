"""PyTorch steps: the teacher under `torch.no_grad()`, the student through autograd.

Keras's torch backend runs on one device per process and has no `keras.distribution`
support; a distribution set anyway would be ignored, so the entry points refuse it.
"""

import torch
from keras.utils import unpack_x_y_sample_weight

from keras_kd.token_logits import AUTO_CHUNK_BYTES, map_tensors
from keras_kd.trainers.base import StepContract, refuse_keras_distribution


class DistillationSteps(StepContract):
    def _check_entry(self, method):
        refuse_keras_distribution(
            method, "torch", "Use the JAX or TensorFlow backend for multi-device distillation (docs/distribution.md)."
        )

    # Eager PyTorch pays per chunk for a fresh head-sized weight gradient. At 128,256 x 2,048 (interleaved
    # medians): chunks of 64 MiB took 1.17x the dense step's time, 96 MiB 1.08x, 128 MiB 1.04-1.06x; peak
    # memory 0.20x, 0.21x, 0.26x the dense step's.
    _auto_chunk_bytes = 3 * AUTO_CHUNK_BYTES // 2

    def _frozen(self):
        return torch.no_grad()

    def _accumulate(self, total, addend):
        return total.add_(addend)  # in place: a fresh head-sized sum per chunk costs more than the addition

    def _with_gradients(self, value, tensors, gradients):
        return _Attached.apply(value.detach(), len(tensors), *tensors, *(g.detach() for g in gradients))

    def _value_and_gradients(self, function, hidden, variables):
        hidden = hidden.detach().requires_grad_(True)
        with torch.enable_grad():
            value, aux = function(hidden)
            gradients = torch.autograd.grad(value, [hidden, *(v.value for v in variables)], allow_unused=True)
        aux = tuple(a.detach() for a in aux)
        return value.detach(), aux, gradients[0], list(gradients[1:])

    def train_step(self, data):
        """One training step: teacher under `no_grad`, student loss, `backward`, optimizer update, metrics."""
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        with torch.no_grad():
            x = self._augment_inputs(x)
            teacher_outputs = self._teacher_forward(x)
        self.zero_grad()
        student_logits, student_features = self._student_forward(x, training=True)
        loss, terms = self._objective(x, y, sample_weight, teacher_outputs, (student_logits, student_features))
        self._objective.loss_for_gradients(loss, self.optimizer).backward()
        variables = self.trainable_variables
        gradients = self._objective.mask_gradients([v.value.grad for v in variables], variables)
        with torch.no_grad():
            student_logits = self._metrics_before_update(x, y, student_logits, sample_weight)
            self.optimizer.apply(gradients, variables)
            loss = self._objective.logged_loss(loss.detach(), [v.value for v in variables])
        terms = {name: value.detach() for name, value in terms.items()}
        return self._update_metrics(loss, terms, x, y, map_tensors(torch.Tensor.detach, student_logits), sample_weight)

    def test_step(self, data):
        """One evaluation step, under `no_grad`: the distillation loss and metrics of `data`, no update."""
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        with torch.no_grad():
            x = self._augment_inputs(x, training=False)
            teacher_outputs = self._teacher_forward(x)
            student_outputs = self._student_forward(x, training=False)
            loss, terms = self._objective(x, y, sample_weight, teacher_outputs, student_outputs)
        return self._update_metrics(loss, terms, x, y, student_outputs[0], sample_weight)


class _Attached(torch.autograd.Function):
    """`value`, with the given gradients flowing to the given tensors (see `StepContract._with_gradients`)."""

    @staticmethod
    def forward(ctx, value, count, *tensors_then_gradients):
        ctx.gradients = tensors_then_gradients[count:]
        return value.clone()

    @staticmethod
    def backward(ctx, upstream):
        # In place: the gradients are this step's own sums, read once (a copy would be head-sized).
        gradients = [g.mul_(upstream.to(g.dtype)) for g in ctx.gradients]
        ctx.gradients = None
        return (None, None, *gradients, *([None] * len(gradients)))
