import keras
import numpy as np
import pytest

from keras_kd.features import layer_paths
from keras_kd.features.capture import capture


def nested_model():
    inner = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, name="dense_a"), keras.layers.Dense(4, name="dense_b")],
        name="inner_model",
    )
    inputs = keras.Input((3,))
    h = keras.layers.Dense(6, name="stem")(inputs)
    h = inner(h)
    outputs = keras.layers.Dense(2, name="head")(h)
    return keras.Model(inputs, outputs, name="outer")


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.body = keras.layers.Dense(7, name="body")
        self.head = keras.layers.Dense(2, name="head")

    def call(self, x):
        return self.head(self.body(x))


def test_resolves_top_level_and_nested_paths():
    model = nested_model()
    assert layer_paths.resolve(model, "stem", "student") is model.get_layer("stem")
    inner = model.get_layer("inner_model")
    assert layer_paths.resolve(model, "inner_model/dense_b", "student") is inner.get_layer("dense_b")


def test_backbone_segment_stands_for_a_tasks_backbone():
    backbone = nested_model()

    class Task(keras.Model):
        def __init__(self):
            super().__init__(name="task")
            self.backbone = backbone
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(self.backbone(x))

    task = Task()
    assert layer_paths.resolve(task, "backbone/inner_model/dense_a", "teacher").name == "dense_a"
    assert "backbone/inner_model/dense_a" in layer_paths.all_paths(task)


def test_unknown_path_lists_the_closest_existing_paths():
    model = nested_model()
    with pytest.raises(ValueError, match=r"no layer 'inner_model/dense_c'.*inner_model/dense_[ab]"):
        layer_paths.resolve(model, "inner_model/dense_c", "student")
    with pytest.raises(ValueError, match="teacher model 'outer' has no layer 'sten'.*'stem'"):
        layer_paths.resolve(model, "sten", "teacher")
    with pytest.raises(ValueError, match="layer names joined by '/'"):
        layer_paths.resolve(model, "stem/", "teacher")


def test_output_shapes_from_the_graph_and_from_a_subclassed_model():
    model = nested_model()
    layers = [layer_paths.resolve(model, p, "student") for p in ("stem", "inner_model/dense_a", "head")]
    assert layer_paths.output_shapes(model, layers, "student") == [(None, 6), (None, 5), (None, 2)]
    sub = Subclassed()
    sub(np.zeros((2, 3), "float32"))
    body = layer_paths.resolve(sub, "body", "student")
    assert layer_paths.output_shapes(sub, [body], "student") == [(None, 7)]


def test_unbuilt_subclassed_model_says_how_to_fix_it():
    sub = Subclassed()
    sub.body.build((None, 3))
    with pytest.raises(ValueError, match=r"Call the student once on a batch"):
        layer_paths.output_shapes(sub, [sub.body], "student")


def test_capture_records_inner_outputs_and_leaves_the_layer_as_it_was():
    model = nested_model()
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x))
    dense_a = layer_paths.resolve(model, "inner_model/dense_a", "student")
    own_call = dense_a.call
    with capture([dense_a, dense_a]) as captured:  # a layer named twice is wrapped once
        assert "call" in vars(dense_a)
        with capture([dense_a]):  # nested captures share the wrapper
            pass
        assert "call" in vars(dense_a)
        after = keras.ops.convert_to_numpy(model(x))
    assert "call" not in vars(dense_a) and dense_a.call == own_call
    np.testing.assert_array_equal(before, after)
    expected = keras.ops.convert_to_numpy(dense_a(model.get_layer("stem")(x)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(captured[id(dense_a)]), expected, rtol=1e-6)
    with capture([dense_a]) as outside_of_the_pass:
        pass
    assert outside_of_the_pass == {}


def test_upstream_variables_follow_the_graph_into_nested_models():
    model = nested_model()
    upstream = {id(v) for v in layer_paths.upstream_variables(model, "inner_model/dense_a")}
    dense_a = model.get_layer("inner_model").get_layer("dense_a")
    assert upstream == {id(v) for v in model.get_layer("stem").weights + dense_a.weights}
    assert len(layer_paths.upstream_variables(model, "head")) == 8


def test_upstream_variables_need_a_graph():
    sub = Subclassed()
    sub(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="Functional or Sequential"):
        layer_paths.upstream_variables(sub, "body")
