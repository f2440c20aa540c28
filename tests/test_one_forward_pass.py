"""Each training step runs the teacher once and the student once, whatever the pairs, compiled too."""

import keras
import pytest
from conftest import toy_data

import keras_kd


@keras.saving.register_keras_serializable(package="keras_kd_tests")
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
    # finite (Distiller._inspect_first_batch), eagerly, outside the compiled steps.
    assert count(teacher) == steps + 1


def test_a_second_fit_on_the_same_arrays_does_not_run_the_teacher_again_for_the_first_batch():
    x, y = toy_data(n=64)
    teacher, student = counted_model("teacher", 16), counted_model("student", 8)
    distiller = keras_kd.Distiller(teacher, student).compile("adam")
    steps = 64 // 16
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert count(teacher) == steps + 1  # the steps, and the first-batch check
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)  # the very same arrays: inspected already
    assert count(teacher) == 2 * steps + 1
    distiller.fit(x.copy(), y, batch_size=16, epochs=1, verbose=0)  # other arrays (equal values): inspected
    assert count(teacher) == 3 * steps + 2
    bad = x.copy()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        distiller.fit(bad, y, batch_size=16, epochs=1, verbose=0)


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


def _wrapped_layers(*models):
    """Layers whose instance carries its own `call` (a capture's wrapper), by path."""
    found = []
    for model in models:
        for layer in [model, *model._flatten_layers(include_self=False)]:
            if "call" in vars(layer):
                found.append(f"{model.name}/{layer.name}")
    return found


@pytest.mark.timeout(600)
def test_capture_leaves_the_models_as_it_found_them_and_a_reloaded_distiller_still_captures(tmp_path):
    x, y = toy_data(n=64)
    teacher, student = counted_model("teacher", 16), counted_model("student", 8)
    pairs = [keras_kd.Hint("features", "features"), keras_kd.Relational("counter", "counter")]
    distiller = keras_kd.Distiller(teacher, student, pairs=pairs).compile("adam", jit_compile=compiled())
    assert _wrapped_layers(teacher, student) == []
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert _wrapped_layers(teacher, student) == []
    # The student used on its own runs its layers' own call.
    assert distiller.student.get_layer("features").call.__func__ is keras.layers.Dense.call
    student_path = str(tmp_path / "student.keras")
    distiller.student.save(student_path)
    keras.saving.load_model(student_path).predict(x, verbose=0)

    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert _wrapped_layers(loaded.teacher, loaded.student) == []
    before_student, before_teacher = count(loaded.student), count(loaded.teacher)
    history = loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    steps = 64 // 16
    assert count(loaded.student) - before_student == steps
    assert count(loaded.teacher) - before_teacher == steps + 1
    assert history.history["hint_loss"][0] > 0  # (the relational pair compares the same inputs: 0)
    assert _wrapped_layers(loaded.teacher, loaded.student) == []
