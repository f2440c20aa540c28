"""PyTorch steps: the teacher under `torch.no_grad()`, the student through autograd.

Keras's torch backend runs on one device per process and has no `keras.distribution`
support; a distribution set anyway would be ignored, so the entry points refuse it.
"""

import keras
import torch
from keras.utils import unpack_x_y_sample_weight

from keras_kd.trainers.entry_points import CheckedEntryPoints


def check_no_distribution(method):
    distribution = keras.distribution.distribution()
    if distribution is not None:
        raise ValueError(
            f"{method}() was called under keras.distribution.{type(distribution).__name__}, which Keras's torch "
            "backend does not support: it would train on one device and ignore the distribution. Use the JAX or "
            "TensorFlow backend for multi-device distillation (docs/distribution.md), or drop the distribution "
            "(leave its scope, or keras.distribution.set_distribution(None)) to train on one device."
        )


class DistillationSteps(CheckedEntryPoints):
    def check_entry(self, method):
        check_no_distribution(method)

    def per_replica_value(self, compiled_loss_value):
        return compiled_loss_value

    def train_step(self, data):
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
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        with torch.no_grad():
            teacher_logits, teacher_features = self.teacher_forward(x)
            student_logits, student_features = self.student_forward(x, training=False)
            loss, terms = self.compute_distillation_loss(
                y, student_logits, teacher_logits, sample_weight, teacher_features, student_features, inputs=x
            )
        return self.update_distillation_metrics(loss, terms, x, y, student_logits, sample_weight)
