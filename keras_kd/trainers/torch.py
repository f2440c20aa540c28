"""PyTorch steps: the teacher under `torch.no_grad()`, the student through autograd."""

import torch
from keras.utils import unpack_x_y_sample_weight


class DistillationSteps:
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
