"""Each training step runs the teacher once and the student once, whatever the pairs, compiled too."""

import keras
import pytest
from conftest import toy_data

import keras_kd


class CallCounter(keras.layers.Layer):
    """Identity layer that counts its runtime calls in a non-trainable variable (works inside jit)."""

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, name="count")

    def call(self, x):
        self.count.assign(self.count + 1.0)
        return x


def counted_model(name, width):
    inputs = keras.Input((8,))
    h = CallCounter(name="counter")(inputs)
    h = keras.layers.Dense(width, activation="relu", name="features")(h)
    h = keras.layers.Dropout(0.5, name="dropout")(h)
    outputs = keras.layers.Dense(3, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


def count(model):
    return float(keras.ops.convert_to_numpy(model.get_layer("counter").count))


def compiled(with_pairs=False):
    # On PyTorch jit_compile=True means torch.compile (Keras's default there is eager); compiling
    # takes about a minute on 2 CPU cores, so only the case with pairs runs compiled.
    return keras.backend.backend() != "torch" or with_pairs


@pytest.mark.timeout(600)
@pytest.mark.parametrize("with_pairs", [False, True])
def test_each_model_runs_once_per_training_step(with_pairs):
    x, y = toy_data(n=64)
    teacher, student = counted_model("teacher", 16), counted_model("student", 8)
    pairs = (
        [
            keras_kd.Hint("features", "features"),
            keras_kd.Relational("counter", "counter"),
            keras_kd.CosineEmbedding("logits", "logits"),
        ]
        if with_pairs
        else []
    )
    distiller = keras_kd.Distiller(teacher, student, pairs=pairs).compile("adam", jit_compile=compiled(with_pairs))
    distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    steps = 2 * 64 // 16
    assert count(student) == steps
    # Once per step, and once before the first: fit() checks that the teacher's outputs on its first batch are
    # finite (Distiller.inspect_first_batch), eagerly, outside the compiled steps.
    assert count(teacher) == steps + 1


def test_keras_core_runs_the_student_twice_for_a_feature_term():
    from keras.distillation import Distiller, FeatureDistillation, LogitsDistillation

    x, y = toy_data(n=64)
    teacher, student = counted_model("teacher", 8), counted_model("student", 8)
    core = Distiller(
        teacher,
        student,
        distillation_losses=[LogitsDistillation(temperature=4.0), FeatureDistillation("mse", "features", "features")],
    )
    core.compile("adam", loss="sparse_categorical_crossentropy", jit_compile=compiled())
    core.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert count(student) == 2 * (64 // 16)
