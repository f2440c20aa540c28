"""The bad-input catalogue: every misconfiguration fails at construction or on the first batch.

Each test asserts the exact error type, that the message names the offending thing (a layer, a
shape, a value, an argument) and that it says what to do instead. The catalogue spans
`tests/test_bad_inputs*.py` (this file: models, shapes, dtypes, values, layer paths, data,
schedules and non-finite teachers; `_cache.py`: teacher caches; `_hub.py`: KerasHub models), and
`docs/bad_inputs.md` lists every test in a table: `test_the_docs_table_lists_every_catalogue_test`
keeps the two in step.
"""

import ast
import pathlib
import re

import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data

import keras_kd
from keras_kd.callbacks import AlphaScheduler, HintWarmup, TemperatureScheduler
from keras_kd.losses import DKD, GeneralizedJSD

TESTS = pathlib.Path(__file__).parent
DOCS_TABLE = TESTS.parent / "docs" / "bad_inputs.md"


def models(teacher_classes=3, student_classes=3):
    return dense_model(8, teacher_classes, name="teacher"), dense_model(8, student_classes, name="student")


def named_model(name, width=8, classes=3):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(width, name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(hidden), name=name)


def map_model(name):
    inputs = keras.Input((6, 6, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    flat = keras.layers.Flatten(name="flat")(features)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(flat), name=name)


def poisoned(model, value):
    """`model` with its last layer's kernel set to `value` everywhere (NaN or Inf logits)."""
    kernel = model.layers[-1].kernel
    kernel.assign(np.full(tuple(kernel.shape), value, "float32"))
    return model


# ----------------------------------------------------------------------------- models and shapes


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_a_teacher_or_student_that_is_not_a_keras_model(role):
    teacher, student = models()
    kwargs = {"teacher": teacher, "student": student, role: keras.layers.Dense(3)}
    with pytest.raises(TypeError, match=f"{role} must be a keras.Model, got Dense.*Wrap layers .*keras.Sequential"):
        keras_kd.Distiller(**kwargs)


def test_an_unbuilt_teacher():
    teacher = keras.Sequential([keras.layers.Dense(3)], name="fresh")
    with pytest.raises(ValueError, match="teacher 'fresh' is not built.*Train it .*call it once on a batch"):
        keras_kd.Distiller(teacher, dense_model(8, 3))


def test_teacher_and_student_outputs_of_different_shapes():
    with pytest.raises(
        ValueError,
        match=r"Teacher outputs shape \(None, 10\) but student outputs shape \(None, 3\).*give the student the "
        r"teacher's number of classes",
    ):
        keras_kd.Distiller(*models(teacher_classes=10))


def test_a_subclassed_student_of_another_shape_fails_on_the_first_batch():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.head = keras.layers.Dense(5)

        def call(self, x):
            return self.head(x)

    x, y = toy_data(n=16)
    distiller = keras_kd.Distiller(dense_model(8, 3, name="teacher"), Subclassed()).compile()
    with pytest.raises(
        ValueError, match=r"Teacher outputs shape \(.*3\) but student outputs shape \(.*5\).*number of classes"
    ):
        distiller.fit(x, y, epochs=1, verbose=0)


def test_teachers_of_different_output_shapes():
    mismatched = [dense_model(8, 3, name="small"), dense_model(8, 3, name="same"), dense_model(8, 4, name="wide")]
    with pytest.raises(
        ValueError,
        match=r"teacher\[0\] 'small' outputs \(None, 3\) but teacher\[2\] 'wide' outputs \(None, 4\).*every teacher "
        "must output the student's shape",
    ):
        keras_kd.Distiller(mismatched, dense_model(8, 3))


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_a_softmax_output_layer(role):
    teacher, student = models()
    if role == "teacher":
        teacher = dense_model(8, 3, name="teacher", activation="softmax")
    else:
        student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3), keras.layers.Softmax()], name="student")
    with pytest.raises(ValueError, match=f"The {role} '{role}' ends in layer .* applies softmax.*activation=None"):
        keras_kd.Distiller(teacher, student)


def test_a_model_with_several_outputs():
    inputs = keras.Input((8,))
    teacher = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(3)(inputs)], name="two")
    with pytest.raises(ValueError, match="'two' has 2 outputs.*Build a model that returns only the logits"):
        keras_kd.Distiller(teacher, dense_model(8, 3))


def test_labels_of_a_shape_that_fits_neither_class_ids_nor_one_hot():
    x, _ = toy_data(n=16)
    distiller = keras_kd.Distiller(*models()).compile()
    with pytest.raises(
        ValueError,
        match=r"Labels of shape \((None|16), 2\) fit neither sparse .* nor one-hot labels .*Pass class indices or "
        "one-hot vectors",
    ):
        distiller.fit(x, np.zeros((16, 2), "float32"), epochs=1, verbose=0)


# ----------------------------------------------------------------------------- dtypes


def test_a_temperature_or_alpha_that_is_not_a_number():
    with pytest.raises(TypeError, match=r"temperature must be a number, got '4' \(str\)\. Pass a Python float"):
        keras_kd.Distiller(*models(), temperature="4")
    with pytest.raises(TypeError, match=r"alpha must be a number, got True \(bool\)\. Pass a Python float in"):
        keras_kd.Distiller(*models(), alpha=True)


def test_raw_strings_given_to_models_without_a_preprocessor():
    distiller = keras_kd.Distiller(*models()).compile("sgd")
    with pytest.raises(
        ValueError, match="The student Sequential 'student' has no preprocessor, so it cannot read the raw strings"
    ):
        distiller.fit(np.array(["a b", "c d"]), np.array([0, 1]), epochs=1, verbose=0)


def test_raw_strings_for_teachers_with_different_preprocessors():
    teachers = [dense_model(8, 3, name="teacher_0"), dense_model(8, 3, name="teacher_1")]
    teachers[0].preprocessor, teachers[1].preprocessor = (lambda x: x), (lambda x: x)
    distiller = keras_kd.Distiller(teachers, dense_model(8, 3)).compile("sgd")
    with pytest.raises(
        ValueError,
        match=r"'teacher_0' and 'teacher_1' \(teacher\[1\]\) have different preprocessors.*Give the teachers one "
        "preprocessor object",
    ):
        distiller.fit(np.array(["a b", "c d"]), np.array([0, 1]), epochs=1, verbose=0)


def test_a_soft_loss_object_with_its_own_dtype():
    with pytest.raises(
        ValueError, match=r"soft_loss GeneralizedJSD\(dtype='bfloat16'\).*in float32.*Drop dtype= from the loss"
    ):
        keras_kd.Distiller(*models(), soft_loss=GeneralizedJSD(temperature=4.0, dtype="bfloat16"))


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("temperature", [0.0, -2.0, float("inf"), float("nan")])
def test_a_temperature_that_is_not_positive_and_finite(temperature):
    with pytest.raises(ValueError, match=f"temperature must be a finite number > 0, got {temperature}. T = 1 is"):
        keras_kd.Distiller(*models(), temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_an_alpha_outside_the_unit_interval(alpha):
    with pytest.raises(ValueError, match=rf"alpha must lie in \[0, 1\], got {alpha}.*alpha=0 is pure distillation"):
        keras_kd.Distiller(*models(), alpha=alpha)


def test_setting_a_bad_temperature_or_alpha_later():
    distiller = keras_kd.Distiller(*models())
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1.*Hinton et al. use 2 to 20"):
        distiller.temperature = -1
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\], got 2"):
        distiller.alpha = 2
    assert (distiller.temperature, distiller.alpha) == (4.0, pytest.approx(0.1))


@pytest.mark.parametrize(
    "weights, error, message",
    [
        ([1.0, 2.0], ValueError, r"teacher_weights has 2 values \[1.0, 2.0\] for 3 teachers. Give one weight per"),
        ([1.0, -1.0, 1.0], ValueError, r"teacher_weights\[1\] is -1.0; weights must be finite and >= 0"),
        ([1.0, float("nan"), 1.0], ValueError, r"teacher_weights\[1\] is nan; weights must be finite"),
        ([0, 0, 0.0], ValueError, r"teacher_weights \[0.0, 0.0, 0.0\] sum to 0.0; at least one teacher needs"),
        ([1.0, "2", 1.0], TypeError, r"teacher_weights\[1\] must be a number, got '2' \(str\). Give one float"),
        (2.0, TypeError, r"teacher_weights must be a list of numbers, one per teacher; got 2.0. Pass e.g."),
    ],
)
def test_bad_teacher_weights(weights, error, message):
    teachers = [dense_model(8, 3, name=f"teacher_{i}") for i in range(3)]
    with pytest.raises(error, match=message):
        keras_kd.Distiller(teachers, dense_model(8, 3), teacher_weights=weights)


def test_teacher_weights_with_a_single_teacher_model():
    with pytest.raises(ValueError, match=r"teacher_weights=\[1.0\] weighs several teachers.*Pass teacher=\[teacher_1"):
        keras_kd.Distiller(*models(), teacher_weights=[1.0])


def test_an_empty_or_bad_teacher_list():
    with pytest.raises(ValueError, match="teacher is an empty list. Give one teacher model, or a list"):
        keras_kd.Distiller([], dense_model(8, 3))
    with pytest.raises(TypeError, match=r"teacher\[1\] must be a keras.Model, got Dense. Wrap layers"):
        keras_kd.Distiller([dense_model(8, 3), keras.layers.Dense(3)], dense_model(8, 3))
    with pytest.raises(ValueError, match="teacher 'fresh' is not built.*Train it"):
        fresh = keras.Sequential([keras.layers.Dense(3)], name="fresh")
        keras_kd.Distiller([dense_model(8, 3), fresh], dense_model(8, 3))


def test_bad_soft_loss_choices():
    with pytest.raises(ValueError, match=r"soft_loss='jsd' is not known. Use 'kl' .*'reverse_kl'"):
        keras_kd.Distiller(*models(), soft_loss="jsd")
    with pytest.raises(
        ValueError,
        match=r"GeneralizedJSD\(temperature=1.0\) and Distiller\(temperature=4.0\) disagree.*set it on the Distiller",
    ):
        keras_kd.Distiller(*models(), temperature=4.0, soft_loss=GeneralizedJSD(beta=0.5))
    with pytest.raises(ValueError, match="KLDivergence is a Keras loss without a temperature-aware.*keras_kd.losses"):
        keras_kd.Distiller(*models(), soft_loss=keras.losses.KLDivergence())
    with pytest.raises(TypeError, match="soft_loss must be 'kl', 'reverse_kl', a keras_kd.losses object .*; got 3"):
        keras_kd.Distiller(*models(), soft_loss=3)


def test_bad_pair_arguments():
    with pytest.raises(ValueError, match=r"Hint: weight must be a finite number >= 0, got -1"):
        keras_kd.Hint("hidden", "hidden", weight=-1)
    with pytest.raises(ValueError, match="distance_weight and angle_weight are both 0.*Give one of them a weight > 0"):
        keras_kd.Relational("hidden", "hidden", distance_weight=0, angle_weight=0)
    with pytest.raises(ValueError, match="LayerPair needs a loss: a callable .*Or use Hint, AttentionTransfer"):
        keras_kd.LayerPair("hidden", "hidden")
    with pytest.raises(ValueError, match=r"Hint\(teacher 'hidden', .*regressor must be 'auto', None or a keras layer"):
        keras_kd.Hint("hidden", "hidden", regressor="linear")


def test_pairs_that_are_not_a_list_of_layer_pairs():
    with pytest.raises(TypeError, match=r"pairs must be a list of keras_kd.LayerPair objects, got Hint.*=\[pair\]"):
        keras_kd.Distiller(named_model("teacher"), named_model("student"), pairs=keras_kd.Hint("hidden", "hidden"))
    with pytest.raises(TypeError, match=r"pairs must hold keras_kd.LayerPair objects .*got \('hidden', 'hidden'\)"):
        keras_kd.Distiller(named_model("teacher"), named_model("student"), pairs=[("hidden", "hidden")])


# ----------------------------------------------------------------------------- layer paths and pair shapes


def test_an_unknown_layer_name_lists_the_closest_ones():
    with pytest.raises(
        ValueError, match=r"student model 'student' has no layer 'hiden'. Closest existing paths: \['hidden'.*by their"
    ):
        keras_kd.Distiller(named_model("teacher"), named_model("student"), pairs=[keras_kd.Hint("hidden", "hiden")])
    with pytest.raises(ValueError, match=r"teacher model 'teacher' has no layer 'block9'. Closest existing paths"):
        keras_kd.Distiller(named_model("teacher"), named_model("student"), pairs=[keras_kd.Hint("block9", "hidden")])


def test_a_path_to_a_shared_layer_is_ambiguous():
    shared = keras.layers.Dense(8, name="shared")
    inputs = keras.Input((4,))
    hidden = shared(shared(keras.layers.Dense(8)(inputs)))
    twice = keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden), name="siamese")
    with pytest.raises(
        ValueError,
        match=r"student layer path 'shared' is ambiguous: 'shared' is a shared layer, called 2 times in 'siamese'.*"
        "Pair a layer that runs once",
    ):
        keras_kd.Distiller(named_model("teacher"), twice, pairs=[keras_kd.Hint("hidden", "shared")])


@pytest.mark.parametrize(
    "path, message",
    [
        ("", r"Hint: the teacher layer must be a layer name or a path like 'inner_model/dense_2'; got ''"),
        (3, r"Hint: the teacher layer must be a layer name or a path like 'inner_model/dense_2'; got 3"),
        ("/hidden", r"A teacher layer path must be layer names joined by '/', e\.g\. 'dense_2' .*; got '/hidden'"),
        ("hidden/", r"A teacher layer path must be layer names joined by '/', e\.g\. 'dense_2' .*; got 'hidden/'"),
    ],
)
def test_a_malformed_layer_path(path, message):
    with pytest.raises(ValueError, match=message):
        keras_kd.Distiller(named_model("teacher"), named_model("student"), pairs=[keras_kd.Hint(path, "hidden")])


def test_a_hint_between_ranks_that_cannot_be_reconciled():
    with pytest.raises(
        ValueError, match=r"Hint\(teacher 'conv', student 'hidden'\).*\(None, 6, 6, 4\).*\(None, 8\).*pass regressor="
    ):
        keras_kd.Distiller(map_model("teacher"), named_model("student"), pairs=[keras_kd.Hint("conv", "hidden")])


def test_attention_transfer_between_vectors():
    with pytest.raises(ValueError, match=r"rank >= 3.*teacher's output is \(None, 8\).*use Hint or Relational"):
        keras_kd.Distiller(
            named_model("teacher"), named_model("student"), pairs=[keras_kd.AttentionTransfer("hidden", "hidden")]
        )


def test_cosine_embedding_between_different_widths():
    with pytest.raises(
        ValueError,
        match=r"teacher's output is \(None, 8\) and the student's \(None, 5\), and regressor=None\. Pass "
        r"regressor='auto'.*or use Relational",
    ):
        keras_kd.Distiller(
            named_model("teacher"),
            named_model("student", width=5),
            pairs=[keras_kd.CosineEmbedding("hidden", "hidden")],
        )


def test_regressor_none_between_different_shapes():
    with pytest.raises(
        ValueError, match=r"\(None, 8\) and the student's \(None, 5\) differ and regressor=None. Use regressor='auto'"
    ):
        keras_kd.Distiller(
            named_model("teacher"),
            named_model("student", width=5),
            pairs=[keras_kd.Hint("hidden", "hidden", regressor=None)],
        )


def test_layer_pairs_with_several_teachers():
    with pytest.raises(
        ValueError, match=r"Layer pairs \(Hint\) compare one teacher's layers.*2 teachers. Distil the features from"
    ):
        keras_kd.Distiller(
            [named_model("t0"), named_model("t1")], named_model("student"), pairs=[keras_kd.Hint("hidden", "hidden")]
        )


# ----------------------------------------------------------------------------- data


def test_relational_kd_on_batches_of_one_example():
    distiller = keras_kd.Distiller(
        named_model("teacher"), named_model("student"), pairs=[keras_kd.Relational("hidden", "hidden")]
    ).compile()
    x, y = np.zeros((3, 4), "float32"), np.zeros(3, "int64")
    with pytest.raises(ValueError, match=r"batch size 1 has no pairs; use batch size >= 2 \(>= 3 for angles\)"):
        distiller.fit(x, y, batch_size=1, epochs=1, verbose=0)


def test_a_batch_without_labels_for_dkd():
    distiller = keras_kd.Distiller(*models(), temperature=2.0, soft_loss=DKD(beta=4.0, temperature=2.0)).compile()
    x, _ = toy_data(n=32)
    with pytest.raises(
        ValueError, match=r"soft_loss DKD\(alpha=1.0, beta=4.0\) needs the labels of every batch.*Pass labels .*'kl'"
    ):
        distiller.fit(x, epochs=1, verbose=0)


def test_pseudo_label_given_data_that_still_has_labels():
    import tensorflow as tf

    x, y = toy_data(n=40)
    teacher = dense_model(8, 3, name="teacher")
    with pytest.raises(ValueError, match=r"unlabeled must hold inputs only, but it is a tuple of 2 arrays.*x alone"):
        keras_kd.recipes.pseudo_label(teacher, (x, y))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(ValueError, match=r"the dataset yields tuples of 2 elements.*dataset.map\(lambda x, y: x\)"):
        keras_kd.recipes.pseudo_label(teacher, dataset)
    batches = ((x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8))  # a generator of (x, y) batches
    with pytest.raises(ValueError, match="its batches are tuples of 2 elements"):
        keras_kd.recipes.pseudo_label(teacher, batches, verbose=0)


def test_class_weight_without_labels():
    x, _ = toy_data(n=16)
    distiller = keras_kd.Distiller(*models()).compile("sgd")
    with pytest.raises(ValueError, match=r"fit\(class_weight=...\) .* the data has no labels .*Pass labels"):
        distiller.fit(x, class_weight={0: 1.0, 1: 2.0, 2: 1.0}, epochs=1, verbose=0)


def test_class_weight_for_sequence_outputs():
    teacher = keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(3)], name="tagger_teacher")
    student = keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(3)], name="tagger")
    x, y = np.zeros((8, 5, 4), "float32"), np.zeros((8, 5), "int64")
    distiller = keras_kd.Distiller(teacher, student).compile("sgd")
    with pytest.raises(
        ValueError, match=r"student 'tagger' outputs \(None, 5, 3\): one prediction per position.*as sample_weight"
    ):
        distiller.fit(x, y, class_weight={0: 1.0, 1: 2.0, 2: 1.0}, epochs=1, verbose=0)


def test_a_scalar_pair_loss_without_sample_weight_given_weights():
    def scalar_mse(t, s):
        return keras.ops.mean((t - s) ** 2)

    pair = keras_kd.LayerPair("hidden", "hidden", scalar_mse)
    distiller = keras_kd.Distiller(named_model("teacher"), named_model("student"), pairs=[pair]).compile()
    x, y = np.zeros((4, 4), "float32"), np.zeros(4, "int64")
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)  # without sample weights the scalar is the term
    with pytest.raises(
        ValueError, match=r"sample weights but the loss .*scalar_mse.* returns a scalar.*Give it a sample_weight"
    ):
        distiller.fit(x, y, sample_weight=np.ones(4), batch_size=4, epochs=1, verbose=0)


# ----------------------------------------------------------------------------- schedules


def scheduled_fit(callback, epochs=1, **kwargs):
    x, y = toy_data(n=16)
    distiller = keras_kd.Distiller(*models(), **kwargs).compile(keras.optimizers.SGD(learning_rate=0.0))
    distiller.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[callback])


@pytest.mark.parametrize(
    "value, message",
    [
        (0, r"The temperature schedule at epoch 0: temperature must be a finite number > 0, got 0. T = 1 is"),
        (-1.0, r"The temperature schedule at epoch 0: temperature must be a finite number > 0, got -1.0. T = 1 is"),
        (float("nan"), r"The temperature schedule returned nan for epoch 0; it must return a finite Python number"),
    ],
)
def test_a_temperature_schedule_returning_zero_negative_or_nan(value, message):
    with pytest.raises(ValueError, match=message):
        scheduled_fit(TemperatureScheduler(lambda epoch: value))


def test_an_alpha_schedule_returning_1_5():
    with pytest.raises(
        ValueError, match=r"The alpha schedule at epoch 2: alpha must lie in \[0, 1\], got 1.5.*alpha=0 is pure"
    ):
        scheduled_fit(AlphaScheduler(lambda epoch: 0.5 * (epoch + 1)), epochs=3, alpha=0.0)


def test_a_schedule_returning_something_else_than_a_number():
    with pytest.raises(ValueError, match="The temperature schedule returned None for epoch 0; it must return a finite"):
        scheduled_fit(TemperatureScheduler(lambda epoch: None))


def test_a_scheduler_without_a_function_or_on_a_plain_model():
    with pytest.raises(TypeError, match=r"TemperatureScheduler needs a function epoch -> temperature .*got 4.0"):
        TemperatureScheduler(4.0)
    x, y = toy_data(n=16)
    model = dense_model(8, 3, name="plain")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(
        TypeError, match="schedules a keras_kd.Distiller's temperature.*'plain'. Pass it to the fit\\(\\) of the"
    ):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[TemperatureScheduler(lambda e: 2.0)])


def test_hint_warmup_without_a_hint_pair():
    with pytest.raises(ValueError, match="HintWarmup: epochs must be an integer >= 0, got -1"):
        HintWarmup(epochs=-1)
    x, y = toy_data(n=16)
    distiller = keras_kd.Distiller(*models()).compile()
    with pytest.raises(ValueError, match="HintWarmup needs a keras_kd.Hint in the distiller's pairs; .*no pairs"):
        distiller.fit(x, y, epochs=1, verbose=0, callbacks=[HintWarmup(1)])


# ----------------------------------------------------------------------------- non-finite teachers


def test_a_teacher_with_nan_weights_fails_on_the_first_batch():
    x, y = toy_data(n=16)
    distiller = keras_kd.Distiller(poisoned(dense_model(8, 3, name="broken"), np.nan), dense_model(8, 3)).compile()
    with pytest.raises(
        ValueError,
        match=r"The teacher 'broken' gave 48 non-finite values \(NaN or Inf\) among its outputs of shape \(16, 3\) "
        r"on the first batch of training.*Its inputs are finite.*check its weights for NaN",
    ):
        distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_nan_inputs_are_named_as_the_cause():
    x, y = toy_data(n=16)
    x[3, 2] = np.nan
    distiller = keras_kd.Distiller(*models()).compile()
    with pytest.raises(
        ValueError,
        match=r"The teacher 'teacher' gave 3 non-finite values.*inputs already hold 1 non-finite values: "
        "clean the data",
    ):
        distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_an_inf_teacher_among_several_is_named():
    x, y = toy_data(n=16)
    teachers = [dense_model(8, 3, name="fine"), poisoned(dense_model(8, 3, name="overflowing"), np.inf)]
    distiller = keras_kd.Distiller(teachers, dense_model(8, 3)).compile()
    with pytest.raises(ValueError, match=r"teacher\[1\] 'overflowing' gave \d+ non-finite values .*float32"):
        distiller.train_on_batch(x, y)


def test_pseudo_label_with_a_nan_teacher():
    x, _ = toy_data(n=16)
    with pytest.raises(
        ValueError, match=r"The teacher 'broken' gave 48 non-finite values .*a batch of pseudo_label's inputs.*weights"
    ):
        keras_kd.recipes.pseudo_label(poisoned(dense_model(8, 3, name="broken"), np.nan), x, soft=False, verbose=0)


# ----------------------------------------------------------------------------- no error: label-free batches


def test_compiled_metrics_skip_label_free_batches_and_report_labelled_validation():
    """Not a misconfiguration: metrics compiled for labelled validation while training on unlabelled data.

    Keras 3.15 builds the compiled metrics from the first batch and failed when it had no labels.
    The metrics are now left out of label-free training logs and computed on labelled batches.
    """
    x, y = toy_data(n=32)
    distiller = keras_kd.Distiller(*models(), alpha=0.0).compile("adam", metrics=["accuracy"])
    history = distiller.fit(x, validation_data=(x, y), batch_size=16, epochs=2, verbose=0).history
    assert sorted(history) == ["loss", "soft_loss", "val_accuracy", "val_hard_loss", "val_loss", "val_soft_loss"]
    assert np.isfinite(history["loss"]).all() and 0.0 <= history["val_accuracy"][-1] <= 1.0
    labelled = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert {"accuracy", "hard_loss"} <= set(labelled)
    assert set(distiller.evaluate(x, verbose=0, return_dict=True)) == {"loss", "soft_loss"}


# ----------------------------------------------------------------------------- the catalogue and its table


def catalogue_tests():
    """`{test name: file name}` of every test function in tests/test_bad_inputs*.py (but this one)."""
    names = {}
    for path in sorted(TESTS.glob("test_bad_inputs*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names[node.name] = path.name
    names.pop("test_the_docs_table_lists_every_catalogue_test", None)
    return names


def documented_tests():
    """The test names in the last column of the tables of docs/bad_inputs.md."""
    names = []
    for line in DOCS_TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 4:
            names += re.findall(r"`(test_\w+)`", cells[-1])
    return names


def test_the_docs_table_lists_every_catalogue_test():
    tests, documented = catalogue_tests(), documented_tests()
    assert len(tests) >= 30, f"the catalogue holds {len(tests)} tests"
    missing = sorted(set(tests) - set(documented))
    stale = sorted(set(documented) - set(tests))
    repeated = sorted({name for name in documented if documented.count(name) > 1})
    assert not missing, f"add a row to docs/bad_inputs.md for {missing}"
    assert not stale, f"docs/bad_inputs.md lists tests that do not exist: {stale}"
    assert not repeated, f"docs/bad_inputs.md lists these tests twice: {repeated}"
