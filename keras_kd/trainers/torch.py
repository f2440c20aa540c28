"""PyTorch steps: the teacher under `torch.no_grad()`, the student through autograd.

Keras's torch backend runs on one device per process and has no `keras.distribution`
support; a distribution set anyway would be ignored, so the entry points refuse it.
"""

import torch
from keras.utils import unpack_x_y_sample_weight

from keras_kd.trainers.entry_points import CheckedEntryPoints, refuse_keras_distribution


def check_no_distribution(method):
    """Raises under a `keras.distribution`, which Keras's torch backend does not support."""
    refuse_keras_distribution(
        method,
        "torch",
        "Use the JAX or TensorFlow backend for multi-device distillation (docs/distribution.md).",
    )


class DistillationSteps(CheckedEntryPoints):
    def check_entry(self, method):
        check_no_distribution(method)

    def per_replica_value(self, compiled_loss_value):
        """A value from a `keras.losses.Loss` object on the scale of the distiller's own terms (unchanged here)."""
        return compiled_loss_value

    def train_step(self, data):
        """One training step: teacher under `no_grad`, student loss, `backward`, optimizer update, metrics."""
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        with torch.no_grad():
            teacher_logits, teacher_features = self.teacher_forward(x)
        self.zero_grad()
        student_logits, student_features = self.student_forward(x, training=True)
        loss, terms = self.compute_distillation_loss(
            y, student_logits, teacher_logits, sample_weight, teacher_features, student_features, inputs=x
        )
        self.optimizer.scale_loss(loss).backward()
        variables = self.trainable_variables
        gradients = self.mask_gradients([v.value.grad for v in variables])
        with torch.no_grad():
            self.optimizer.apply(gradients, variables)
        terms = {name: value.detach() for name, value in terms.items()}
        return self.update_distillation_metrics(loss.detach(), terms, x, y, student_logits.detach(), sample_weight)

    def test_step(self, data):
        """One evaluation step, under `no_grad`: the distillation loss and metrics of `data`, no update."""
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        with torch.no_grad():
            teacher_logits, teacher_features = self.teacher_forward(x)
            student_logits, student_features = self.student_forward(x, training=False)
            loss, terms = self.compute_distillation_loss(
                y, student_logits, teacher_logits, sample_weight, teacher_features, student_features, inputs=x
            )
        return self.update_distillation_metrics(loss, terms, x, y, student_logits, sample_weight)
