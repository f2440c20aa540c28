"""TensorFlow steps: the teacher outside the tape, the student under `tf.GradientTape`.

Under `tf.distribute` every replica computes its loss on its own slice of the
batch and the optimizer sums the replicas' gradients, so the step divides the
loss by `num_replicas_in_sync` before differentiating. The distiller's terms are
per-replica means; Keras's compiled losses already divide by the replica count,
which `per_replica_value` undoes so that every term is on the same scale.
"""

import tensorflow as tf
from keras.utils import unpack_x_y_sample_weight


class DistillationSteps:
    def _replicas(self):
        return self.distribute_strategy.num_replicas_in_sync

    def per_replica_value(self, compiled_loss_value):
        return compiled_loss_value * self._replicas()

    def train_step(self, data):
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        teacher_logits, teacher_features = tf.nest.map_structure(tf.stop_gradient, self.teacher_forward(x))
        with tf.GradientTape() as tape:
            student_logits, student_features = self.student_forward(x, training=True)
            loss, terms = self.compute_distillation_loss(
                y, student_logits, teacher_logits, sample_weight, teacher_features, student_features, inputs=x
            )
            scaled_loss = self.optimizer.scale_loss(loss / self._replicas())
        variables = self.trainable_variables
        gradients = self.mask_gradients(tape.gradient(scaled_loss, variables))
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self.update_distillation_metrics(loss, terms, x, y, student_logits, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        teacher_logits, teacher_features = self.teacher_forward(x)
        student_logits, student_features = self.student_forward(x, training=False)
        loss, terms = self.compute_distillation_loss(
            y, student_logits, teacher_logits, sample_weight, teacher_features, student_features, inputs=x
        )
        return self.update_distillation_metrics(loss, terms, x, y, student_logits, sample_weight)
