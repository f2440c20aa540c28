"""No silent loss of user intent: every argument of the public constructors has a decision.

`DECISIONS` lists every argument of every public class and function that configures distillation
(read off `inspect.signature`, `**kwargs` expanded to the Keras arguments they are forwarded to)
with the modes (backends, kinds of teacher, kinds of data) in which the argument cannot take
effect, and what happens there: an error, or a warning, raised exactly once. An argument that takes
effect everywhere is listed as `EVERYWHERE`. A new argument without an entry fails
`test_every_argument_has_a_decision`; every listed mode is run by
`test_an_unsupported_mode_raises_or_warns_exactly_once`.

Invalid values of supported arguments (a negative temperature, an unknown layer) are the bad-input
catalogue's business: `tests/test_bad_inputs*.py`.
"""

import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pytest
from conftest import dense_model, toy_data

import keras_kd
from keras_kd import callbacks, losses, recipes
from keras_kd.cache import TeacherCache

BACKEND = keras.backend.backend()
EVERYWHERE = "supported everywhere"


@dataclass
class Unsupported:
    """A mode where an argument cannot take effect, and the one error or warning it gets there."""

    mode: str
    outcome: str  # "raises" or "warns"
    message: str  # a regex the error's or the warning's message must match
    run: Callable  # (tmp_path) -> None; does what the mode says
    error: type = ValueError
    backends: tuple = ("tensorflow", "jax", "torch")


def raises(mode, message, run, error=ValueError, backends=("tensorflow", "jax", "torch")):
    return Unsupported(mode, "raises", message, run, error, backends)


def warns(mode, message, run, backends=("tensorflow", "jax", "torch")):
    return Unsupported(mode, "warns", message, run, backends=backends)


# ----------------------------------------------------------------------------- small scenarios


def teacher(name="teacher", classes=3, hidden=None):
    return dense_model(8, classes, hidden=hidden, name=name)


def student(name="student", classes=3, hidden=None):
    return dense_model(8, classes, hidden=hidden, name=name)


def data(n=8):
    return toy_data(n=n)


def label_free_fit(**distiller_kwargs):
    x, _ = data()
    compile_kwargs = distiller_kwargs.pop("compile", {})
    keras_kd.Distiller(teacher(), student(), **distiller_kwargs).compile("sgd", **compile_kwargs).fit(x, verbose=0)


def cache_of(tmp_path, name="c", with_labels=True, **build_kwargs):
    x, y = data(16)
    model = build_kwargs.pop("model", None) or teacher(hidden=4)
    return TeacherCache.build(model, (x, y) if with_labels else x, str(tmp_path / name), verbose=0, **build_kwargs)


def token_lm(name):
    return keras.Sequential(
        [keras.Input((4,), dtype="int32"), keras.layers.Embedding(12, 8), keras.layers.Dense(12)], name=name
    )


def top_k_cache(tmp_path):
    x = np.random.default_rng(0).integers(0, 12, size=(8, 4)).astype("int32")
    return TeacherCache.build(token_lm("lm"), x, str(tmp_path / "top_k"), top_k=3, batch_size=8, verbose=0)


def dkd_train_on_batch():
    x, y = data()
    dkd = losses.DKD(temperature=4.0, warmup_epochs=3)
    distiller = keras_kd.Distiller(teacher(), student(), soft_loss=dkd).compile("sgd")
    for _ in range(2):  # one warning for the loop, not one per batch
        distiller.train_on_batch(x, y)


def dkd_as_a_keras_loss():
    x, y = data()
    dkd = losses.DKD(temperature=1.0, warmup_epochs=3)
    t = keras.ops.convert_to_numpy(teacher()(x))
    for _ in range(2):  # one warning per loss object
        dkd((y, t), t)


def under_data_parallel():
    distribution = keras.distribution.DataParallel(devices=["cpu:0"])
    x, y = data()
    with distribution.scope():
        distiller = keras_kd.Distiller(teacher(), student()).compile("sgd")
        distiller.fit(x, y, verbose=0)


def first_layer_pair(cls, **pair_kwargs):
    """`Distiller(teacher, student, pairs=[cls(<first layer>, <first layer>, **pair_kwargs)])` of two hidden MLPs."""
    t, s = teacher(hidden=4), student(hidden=4)
    return keras_kd.Distiller(t, s, pairs=[cls(t.layers[0].name, s.layers[0].name, **pair_kwargs)])


def feature_only_distiller(**kwargs):
    t, s = teacher(hidden=4), student(hidden=4)
    return keras_kd.Distiller(t, s, soft_loss=None, pairs=[keras_kd.Hint(t.layers[0].name, s.layers[0].name)], **kwargs)


def _comparison_on_a_cache(tmp_path):
    x, y = data(16)
    distiller = keras_kd.Distiller(cache_of(tmp_path), student()).compile("sgd")
    comparison = callbacks.TeacherComparison((x, y))
    distiller.fit(distiller._source.cache.dataset(batch_size=8), verbose=0, callbacks=[comparison])


def _augment_on_policy():
    from test_on_policy import models as causal_lms

    teacher_lm, student_lm = causal_lms()
    keras_kd.Distiller(
        teacher_lm, student_lm, on_policy=keras_kd.OnPolicy(max_new_tokens=4), augment=keras.layers.GaussianNoise(0.1)
    )


def _preprocessor_for_tasks():
    def own(x):
        return x

    t = teacher()
    t.preprocessor = own  # as a KerasHub task carries its preprocessor
    keras_kd.Distiller(t, student(), preprocessor=lambda x: x)


def sequence_models():
    t = keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(3)], name="tagger_teacher")
    s = keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(3)], name="tagger")
    return t, s


def class_weight_on_sequences():
    x, y = np.zeros((8, 5, 4), "float32"), np.zeros((8, 5), "int64")
    keras_kd.Distiller(*sequence_models()).compile("sgd").fit(x, y, class_weight={0: 1.0, 1: 2.0, 2: 1.0}, verbose=0)


def class_weight_without_labels():
    keras_kd.Distiller(teacher(), student()).compile("sgd").fit(data()[0], class_weight={0: 1.0, 1: 1.0}, verbose=0)


def shuffled_tf_dataset():
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(data()).batch(8)
    keras_kd.Distiller(teacher(), student()).compile("sgd").fit(dataset, shuffle=True, verbose=0)


def schedule_on_a_plain_model(scheduler=None):
    x, y = data()
    model = teacher("plain")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, verbose=0, callbacks=[scheduler or callbacks.TemperatureScheduler(lambda epoch: 2.0)])


def hint_warmup_without_hint():
    x, y = data()
    distiller = keras_kd.Distiller(teacher(), student()).compile("sgd")
    distiller.fit(x, y, verbose=0, callbacks=[callbacks.HintWarmup(1)])


def hint_warmup_on_a_subclassed_student():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.hidden = keras.layers.Dense(4, name="hidden")
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(self.hidden(x))

    x, y = data()
    model = Subclassed()
    model(x[:1])
    t = teacher(hidden=4)
    distiller = keras_kd.Distiller(t, model, pairs=[keras_kd.Hint(t.layers[0].name, "hidden")]).compile("sgd")
    distiller.fit(x, y, verbose=0, callbacks=[callbacks.HintWarmup(1)])


def progressive_on(dataset_kind, **kwargs):
    x, y = data()
    if dataset_kind == "tf.data":
        import tensorflow as tf

        source = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    else:
        source = (x, y)
    recipes.progressive(teacher(), [student()], source, epochs_per_stage=1, verbose=0, **kwargs)


def pair_kwargs_case(cls, key, value):
    args = ("hidden", "hidden")
    return raises(
        f"{key}= (a keras.layers.Layer argument; a pair is never called)",
        rf"{cls.__name__}\({key}=.*a pair is never called on data.*pass regressor=<your layer>",
        lambda tmp_path: cls(*args, **{key: value}),
        error=TypeError,
    )


def fixed_loss_case(cls):
    return raises(
        "any (the kind computes its own loss)",
        rf"{cls.__name__}\(loss='mse'\): the {cls.__name__} term computes its own loss.*keras_kd.LayerPair",
        lambda tmp_path: cls("hidden", "hidden", loss="mse"),
        error=TypeError,
    )


def distiller_kwargs_case(key, value, fix):
    return raises(
        f"{key}= (a keras.Model argument)",
        rf"Distiller\({key}=.*is not applied to the distillation: .*{fix}",
        lambda tmp_path: keras_kd.Distiller(teacher(), student(), **{key: value}),
        error=TypeError,
    )


def soft_loss_decisions(cls, **kwargs):
    """`temperature`, `reduction`, `name`, `dtype` of a tempered soft-loss class."""
    return {
        "temperature": [
            raises(
                "as a Distiller's soft_loss, a temperature other than the distiller's",
                rf"{cls.__name__}\(temperature=1.0\) and Distiller\(temperature=4.0\) disagree",
                lambda tmp_path: keras_kd.Distiller(teacher(), student(), soft_loss=cls(temperature=1.0, **kwargs)),
            )
        ],
        "reduction": EVERYWHERE,
        "name": EVERYWHERE,
        "dtype": [
            raises(
                "as a Distiller's soft_loss (computed in float32)",
                rf"soft_loss {cls.__name__}\(dtype='float16'\).*Drop dtype=",
                lambda tmp_path: keras_kd.Distiller(
                    teacher(), student(), soft_loss=cls(temperature=4.0, dtype="float16", **kwargs)
                ),
            )
        ],
    }


LAYER_KWARGS = {"activity_regularizer": "l2", "trainable": False, "dtype": "float16", "autocast": False}

# ----------------------------------------------------------------------------- the decisions

DECISIONS = {
    "Distiller": {
        "teacher": [
            raises(
                "a list of teachers given raw strings, with different preprocessors",
                r"have different preprocessors, and a batch of raw strings is tokenized once",
                lambda tmp_path: _strings_to_two_preprocessors(),
            )
        ],
        "student": EVERYWHERE,
        "chunk_size": [
            raises(
                "an int with soft_loss=None (no token-level terms to chunk)",
                r"chunk_size=8 with soft_loss=None: chunking computes the token-level soft and hard terms",
                lambda tmp_path: feature_only_distiller(chunk_size=8),
            ),
            raises(
                "an int, for models whose logits have no positions axis (classifiers)",
                r"'student' outputs shape \(None, 3\); chunking splits the positions axis.*chunk_size=None",
                lambda tmp_path: keras_kd.Distiller(teacher(), student(), chunk_size=8),
            ),
        ],
        "on_policy": [
            raises(
                "soft_loss=None (on-policy compares next-token distributions)",
                r"on_policy with soft_loss=None: on-policy distillation compares",
                lambda tmp_path: feature_only_distiller(on_policy=keras_kd.OnPolicy()),
            ),
            raises(
                "models that are not KerasHub CausalLM tasks",
                r"on_policy takes KerasHub CausalLM models; the teacher 'teacher' is a Sequential",
                lambda tmp_path: keras_kd.Distiller(teacher(), student(), on_policy=keras_kd.OnPolicy()),
            ),
            raises(
                "a TeacherCache (the teacher must score the student's new text)",
                r"on_policy needs a teacher model, not a TeacherCache",
                lambda tmp_path: keras_kd.Distiller(cache_of(tmp_path), student(), on_policy=keras_kd.OnPolicy()),
            ),
        ],
        "temperature": [
            raises(
                "soft_loss=None (no soft term to soften)",
                r"temperature=2.0 with soft_loss=None: the temperature softens the soft term",
                lambda tmp_path: feature_only_distiller(temperature=2.0),
            ),
            raises(
                "a soft_loss object whose own temperature differs",
                r"GeneralizedJSD\(temperature=1.0\) and Distiller\(temperature=4.0\) disagree",
                lambda tmp_path: keras_kd.Distiller(teacher(), student(), soft_loss=losses.GeneralizedJSD()),
            ),
        ],
        "alpha": [
            raises(
                "soft_loss=None (no hard or soft term to mix)",
                r"alpha=0.5 with soft_loss=None: alpha mixes the hard-label term with the soft term",
                lambda tmp_path: feature_only_distiller(alpha=0.5),
            ),
            warns(
                "label-free batches (fit(x), a cache without labels)",
                r"first batch of this fit\(\) has no labels, so alpha=0.3 .*will not be used.*pass alpha=0",
                lambda tmp_path: label_free_fit(alpha=0.3),
            ),
        ],
        "pairs": [
            raises(
                "several teachers",
                r"Layer pairs \(Hint\) compare one teacher's layers .*2 teachers",
                lambda tmp_path: keras_kd.Distiller(
                    [teacher("a", hidden=4), teacher("b", hidden=4)],
                    student(hidden=4),
                    pairs=[keras_kd.Hint("dense", "dense")],
                ),
            ),
            raises(
                "a teacher cache that did not store the pair's teacher layer",
                r"holds no output of the teacher layer .*Rebuild the cache with this pair",
                lambda tmp_path: _cache_without_pairs(tmp_path),
            ),
        ],
        "soft_loss": [
            raises(
                "a top-k teacher cache, with anything but 'kl'",
                r"top 3 logits per position.*soft_loss='reverse_kl' needs the dense logits",
                lambda tmp_path: keras_kd.Distiller(top_k_cache(tmp_path), token_lm("s"), soft_loss="reverse_kl"),
            ),
            raises(
                "DKD on label-free batches",
                r"soft_loss DKD\(alpha=1.0, beta=8.0\) needs the labels of every batch",
                lambda tmp_path: label_free_fit(soft_loss=losses.DKD()),
            ),
            raises(
                "DKD with a teacher cache built without labels",
                r"needs the labels of every batch, but the teacher cache .* holds none",
                lambda tmp_path: keras_kd.Distiller(
                    cache_of(tmp_path, with_labels=False), student(), soft_loss=losses.DKD()
                ),
            ),
            warns(
                "DKD(warmup_epochs=N) in a train_on_batch loop (only fit() ramps it)",
                r"warmup_epochs=3, which fit\(\) applies epoch by epoch; train_on_batch leaves",
                lambda tmp_path: dkd_train_on_batch(),
            ),
        ],
        "name": EVERYWHERE,
        "augment": [
            raises(
                "a TeacherCache (its outputs belong to the un-augmented inputs)",
                r"augment with a TeacherCache: the cache holds the teacher's outputs",
                lambda tmp_path: keras_kd.Distiller(
                    cache_of(tmp_path), student(), augment=keras.layers.GaussianNoise(0.1)
                ),
            ),
            raises(
                "on_policy (its batches are completions written in training)",
                r"augment with on_policy: on-policy batches are completions",
                lambda tmp_path: _augment_on_policy(),
            ),
        ],
        "preprocessor": [
            raises(
                "models with preprocessors of their own (KerasHub tasks)",
                r"has its own preprocessor .*Distiller\(preprocessor=...\) is for models without one",
                lambda tmp_path: _preprocessor_for_tasks(),
            )
        ],
        "teacher_weights": [
            raises(
                "a single teacher model",
                r"teacher_weights=\[1.0\] weighs several teachers, but a single teacher was given",
                lambda tmp_path: keras_kd.Distiller(teacher(), student(), teacher_weights=[1.0]),
            ),
            raises(
                "a cache of one teacher",
                r"teacher_weights=\[2, 1\] weighs several teachers, but a single teacher was given",
                lambda tmp_path: keras_kd.Distiller(cache_of(tmp_path), student(), teacher_weights=[2, 1]),
            ),
        ],
        # keras.Model's own keyword arguments, through **kwargs: none would reach the teacher or student.
        "dtype": [distiller_kwargs_case("dtype", "mixed_bfloat16", "keras.config.set_dtype_policy")],
        "trainable": [distiller_kwargs_case("trainable", False, "freeze layers of the student")],
        "activity_regularizer": [distiller_kwargs_case("activity_regularizer", "l2", "give the student's")],
        "autocast": [distiller_kwargs_case("autocast", False, "set autocast on them")],
    },
    "Distiller.compile": {
        "optimizer": EVERYWHERE,
        "loss": [
            raises(
                "soft_loss=None (feature-only distillation takes no labels)",
                r"compile\(loss='mse'\) on a distiller with soft_loss=None",
                lambda tmp_path: feature_only_distiller().compile("sgd", loss="mse"),
            ),
            warns(
                "label-free batches",
                r"has no labels, so the loss given to compile\(\) will not be used",
                lambda tmp_path: label_free_fit(alpha=0.0, compile={"loss": "sparse_categorical_crossentropy"}),
            ),
        ],
        "loss_weights": [
            raises(
                "no compiled loss (the default hard-label loss)",
                r"compile\(loss_weights=\[0.5\]\) scales the compiled loss, but no loss was given.*alpha",
                lambda tmp_path: keras_kd.Distiller(teacher(), student()).compile("sgd", loss_weights=[0.5]),
            )
        ],
        # Label-free batches leave compiled metrics as they are (Distiller's docstring; tested in the catalogue).
        "metrics": [
            raises(
                "soft_loss=None (metrics need labels, which feature-only distillation refuses)",
                r"compile\(metrics=\['mae'\]\) on a distiller with soft_loss=None",
                lambda tmp_path: feature_only_distiller().compile("sgd", metrics=["mae"]),
            )
        ],
        "weighted_metrics": EVERYWHERE,
        "run_eagerly": EVERYWHERE,
        "steps_per_execution": EVERYWHERE,
        "jit_compile": EVERYWHERE,
        "auto_scale_loss": EVERYWHERE,
    },
    "Distiller.fit": {
        "x": EVERYWHERE,
        "y": EVERYWHERE,
        "batch_size": EVERYWHERE,
        "epochs": EVERYWHERE,
        "verbose": EVERYWHERE,
        "callbacks": EVERYWHERE,
        "validation_split": EVERYWHERE,
        "validation_data": EVERYWHERE,
        "shuffle": [
            warns(
                "a tf.data.Dataset (Keras's own warning)",
                r"`shuffle=True` was passed, but will be ignored since the data `x` was provided as a tf.data.Dataset",
                lambda tmp_path: shuffled_tf_dataset(),
            )
        ],
        "class_weight": [
            raises(
                "label-free data",
                r"fit\(class_weight=...\) weighs each example by its label's class, but the data has no labels",
                lambda tmp_path: class_weight_without_labels(),
            ),
            raises(
                "sequence outputs (batch, positions, classes)",
                r"student 'tagger' outputs \(None, 5, 3\): one prediction per position.*as sample_weight",
                lambda tmp_path: class_weight_on_sequences(),
            ),
        ],
        "sample_weight": EVERYWHERE,
        "initial_epoch": EVERYWHERE,
        "steps_per_epoch": EVERYWHERE,
        "validation_steps": EVERYWHERE,
        "validation_batch_size": EVERYWHERE,
        "validation_freq": EVERYWHERE,
    },
    "TeacherCache": {
        "directory": EVERYWHERE,
        "cache_shards": EVERYWHERE,
        "memory_bytes": [
            raises(
                "with cache_shards (it only chooses the default cache_shards)",
                r"TeacherCache\(cache_shards=2, memory_bytes=1000\): memory_bytes only chooses the default",
                lambda tmp_path: TeacherCache(cache_of(tmp_path).directory, cache_shards=2, memory_bytes=1000),
            )
        ],
    },
    "TeacherCache.build": {
        "teacher": EVERYWHERE,
        "data": EVERYWHERE,
        "directory": EVERYWHERE,
        "chunk_size": [
            raises(
                "an int, for a cache of dense logits (top_k=None)",
                r"chunk_size=4 computes a top-k cache's logits .* top_k=None stores the dense logits",
                lambda tmp_path: cache_of(tmp_path, chunk_size=4),
            )
        ],
        "top_k": [
            raises(
                "several teachers",
                r"top_k=2 keeps one teacher's largest logits, but 2 teachers were given",
                lambda tmp_path: cache_of(tmp_path, model=[teacher("a"), teacher("b")], top_k=2),
            )
        ],
        "pairs": [
            raises(
                "several teachers",
                r"pairs store one teacher's layer outputs, but 2 teachers were given",
                lambda tmp_path: cache_of(
                    tmp_path, model=[teacher("a"), teacher("b")], pairs=[keras_kd.Hint("dense", "dense")]
                ),
            )
        ],
        "dtype": [
            raises(
                "'float16' for teacher outputs beyond 65504",
                r"beyond the largest float16 \(65504\).*Build the cache with dtype='float32'",
                lambda tmp_path: _loud_cache(tmp_path),
            )
        ],
        "batch_size": [
            raises(
                "a dataset (already batched)",
                r"batch_size is for in-memory arrays; a dataset is already batched",
                lambda tmp_path: _cache_of_dataset(tmp_path, batch_size=8),
            )
        ],
        "examples_per_shard": EVERYWHERE,
        "verbose": EVERYWHERE,
        "part": EVERYWHERE,
        "wait_timeout": [
            raises(
                "part=None (one process waits for nothing)",
                r"wait_timeout=5 is how long the processes of a distributed build wait .*but part=None",
                lambda tmp_path: cache_of(tmp_path, wait_timeout=5),
            )
        ],
    },
    "LayerPair": {
        "teacher_layer": EVERYWHERE,
        "student_layer": EVERYWHERE,
        "loss": EVERYWHERE,
        "weight": EVERYWHERE,
        "name": EVERYWHERE,
        "pooling": [
            raises(
                "outputs that are not (batch, positions, width) hidden states",
                r"pooling='mean' pools hidden states of shape \(batch, positions, width\).*is \(None, 4\)",
                lambda tmp_path: first_layer_pair(keras_kd.LayerPair, loss="mse", pooling="mean"),
            )
        ],
        **{key: [pair_kwargs_case(keras_kd.Hint, key, value)] for key, value in LAYER_KWARGS.items()},
    },
    "Hint": {
        "teacher_layer": EVERYWHERE,
        "student_layer": EVERYWHERE,
        "weight": EVERYWHERE,
        "regressor": EVERYWHERE,
        "name": EVERYWHERE,
        "pooling": [
            raises(
                "outputs that are not (batch, positions, width) hidden states",
                r"pooling='mean' pools hidden states of shape \(batch, positions, width\).*is \(None, 4\)",
                lambda tmp_path: first_layer_pair(keras_kd.Hint, pooling="mean"),
            )
        ],
        "loss": [fixed_loss_case(keras_kd.Hint)],
        **{key: [pair_kwargs_case(keras_kd.Hint, key, value)] for key, value in LAYER_KWARGS.items()},
    },
    "AttentionTransfer": {
        "teacher_layer": EVERYWHERE,
        "student_layer": EVERYWHERE,
        "weight": EVERYWHERE,
        "p": EVERYWHERE,
        "name": EVERYWHERE,
        "pooling": [
            raises(
                "any (attention transfer compares spatial maps)",
                r"AttentionTransfer\(pooling='mean'\): attention transfer compares spatial maps",
                lambda tmp_path: keras_kd.AttentionTransfer("a", "b", pooling="mean"),
                error=TypeError,
            )
        ],
        "loss": [fixed_loss_case(keras_kd.AttentionTransfer)],
        **{key: [pair_kwargs_case(keras_kd.AttentionTransfer, key, value)] for key, value in LAYER_KWARGS.items()},
    },
    "Relational": {
        "teacher_layer": EVERYWHERE,
        "student_layer": EVERYWHERE,
        "distance_weight": EVERYWHERE,
        "angle_weight": EVERYWHERE,
        "name": EVERYWHERE,
        "pooling": [
            raises(
                "outputs that are not (batch, positions, width) hidden states",
                r"pooling='mean' pools hidden states of shape \(batch, positions, width\).*is \(None, 4\)",
                lambda tmp_path: first_layer_pair(keras_kd.Relational, pooling="mean"),
            )
        ],
        "loss": [fixed_loss_case(keras_kd.Relational)],
        "weight": [
            raises(
                "any but 1 (the term has two weights)",
                r"Relational\(weight=2.0\): the relational term has two weights.*Scale distance_weight",
                lambda tmp_path: keras_kd.Relational("hidden", "hidden", weight=2.0),
                error=TypeError,
            )
        ],
        **{key: [pair_kwargs_case(keras_kd.Relational, key, value)] for key, value in LAYER_KWARGS.items()},
    },
    "CosineEmbedding": {
        "teacher_layer": EVERYWHERE,
        "student_layer": EVERYWHERE,
        "weight": EVERYWHERE,
        "name": EVERYWHERE,
        "regressor": EVERYWHERE,
        "pooling": [
            raises(
                "outputs that are not (batch, positions, width) hidden states",
                r"pooling='mean' pools hidden states of shape \(batch, positions, width\).*is \(None, 4\)",
                lambda tmp_path: first_layer_pair(keras_kd.CosineEmbedding, pooling="mean"),
            )
        ],
        "loss": [fixed_loss_case(keras_kd.CosineEmbedding)],
        **{key: [pair_kwargs_case(keras_kd.CosineEmbedding, key, value)] for key, value in LAYER_KWARGS.items()},
    },
    "TeacherComparison": {
        "validation_data": [
            raises(
                "a distiller on a TeacherCache (no teacher model to compare with)",
                r"TeacherComparison compares .* but this distiller reads a TeacherCache",
                lambda tmp_path: _comparison_on_a_cache(tmp_path),
                error=TypeError,
            )
        ],
        "batch_size": EVERYWHERE,
        "verbose": EVERYWHERE,
    },
    "TemperatureScheduler": {
        "schedule": [
            raises(
                "the fit() of a model that is not a Distiller",
                r"TemperatureScheduler schedules a keras_kd.Distiller's temperature; it was given to the fit\(\) of",
                lambda tmp_path: schedule_on_a_plain_model(),
                error=TypeError,
            )
        ],
        "verbose": EVERYWHERE,
    },
    "AlphaScheduler": {
        "schedule": [
            raises(
                "the fit() of a model that is not a Distiller",
                r"AlphaScheduler schedules a keras_kd.Distiller's alpha; it was given to the fit\(\) of",
                lambda tmp_path: schedule_on_a_plain_model(callbacks.AlphaScheduler(lambda epoch: 0.5)),
                error=TypeError,
            )
        ],
        "verbose": EVERYWHERE,
    },
    "HintWarmup": {
        "epochs": [
            raises(
                "a distiller without a Hint pair",
                r"HintWarmup needs a keras_kd.Hint in the distiller's pairs",
                lambda tmp_path: hint_warmup_without_hint(),
            ),
            raises(
                "a subclassed student (no graph tells which variables precede the hinted layer)",
                r"Cannot tell which variables the layer 'hidden' depends on.*Functional or Sequential",
                lambda tmp_path: hint_warmup_on_a_subclassed_student(),
            ),
        ],
        "verbose": EVERYWHERE,
    },
    "losses.SoftLoss": {
        "warmup_epochs": [
            raises(
                "a value that is not an integer >= 0",
                r"warmup_epochs must be an integer >= 0, got -1",
                lambda tmp_path: losses.SoftLoss(warmup_epochs=-1),
            ),
            # and a train_on_batch loop: under "Distiller" / "soft_loss"
        ],
        **soft_loss_decisions(losses.SoftLoss),
    },
    "SoftLossWarmup": {
        "schedule": [
            raises(
                "the fit() of a model that is not a Distiller",
                r"SoftLossWarmup schedules a keras_kd.Distiller's soft_loss_warmup; it was given to the fit\(\) of",
                lambda tmp_path: schedule_on_a_plain_model(callbacks.SoftLossWarmup(lambda epoch: 1.0)),
                error=TypeError,
            )
        ],
        "verbose": EVERYWHERE,
    },
    "losses.SoftTargetLoss": soft_loss_decisions(losses.SoftTargetLoss),
    "losses.ReverseKL": soft_loss_decisions(losses.ReverseKL),
    "losses.GeneralizedJSD": {"beta": EVERYWHERE, **soft_loss_decisions(losses.GeneralizedJSD)},
    "losses.DKD": {
        "alpha": EVERYWHERE,
        "beta": EVERYWHERE,
        "warmup_epochs": [
            warns(
                "a plain Keras loss (outside a Distiller)",
                r"DKD\(warmup_epochs=3\) is used as a plain Keras loss, where the warm-up does not act",
                lambda tmp_path: dkd_as_a_keras_loss(),
            ),
            # and a train_on_batch loop: under "Distiller" / "soft_loss"
        ],
        **soft_loss_decisions(losses.DKD),
    },
    "losses.HintLoss": {"reduction": EVERYWHERE, "name": EVERYWHERE, "dtype": EVERYWHERE},
    "losses.CosineEmbeddingLoss": {"reduction": EVERYWHERE, "name": EVERYWHERE, "dtype": EVERYWHERE},
    "losses.AttentionTransferLoss": {"p": EVERYWHERE, "reduction": EVERYWHERE, "name": EVERYWHERE, "dtype": EVERYWHERE},
    **{
        f"losses.{cls.__name__}": {
            "name": EVERYWHERE,
            "dtype": EVERYWHERE,
            "reduction": [
                raises(
                    "any but the fixed weighted mean over pairs",
                    rf"{cls.__name__}\(reduction='sum'\): a relational loss is one weighted mean.*Drop reduction=",
                    lambda tmp_path, cls=cls: cls(reduction="sum"),
                )
            ],
        }
        for cls in (losses.RKDDistanceLoss, losses.RKDAngleLoss)
    },
    "recipes.progressive": {
        "teacher": EVERYWHERE,
        "students": EVERYWHERE,
        "data": EVERYWHERE,
        "epochs_per_stage": EVERYWHERE,
        "validation_data": EVERYWHERE,
        "cache": EVERYWHERE,
        "compile": EVERYWHERE,
        "batch_size": [
            raises(
                "a dataset without cache=",
                r"batch_size=8 is for in-memory arrays; data is a .*Batch the dataset itself",
                lambda tmp_path: progressive_on("tf.data", batch_size=8),
            )
        ],
        "shuffle": [
            warns(
                "a tf.data.Dataset without cache= (Keras's own warning, once per stage)",
                r"`shuffle=True` was passed, but will be ignored since the data `x` was provided as a tf.data.Dataset",
                lambda tmp_path: progressive_on("tf.data", shuffle=True),
            )
        ],
        "callbacks": EVERYWHERE,
        "verbose": EVERYWHERE,
        # **distiller_kwargs: every stage's Distiller; the Distiller's decisions apply per stage.
        "chunk_size": EVERYWHERE,
        "on_policy": [
            raises(
                "any (stages distil on fixed data)",
                r"progressive does not take on_policy",
                lambda tmp_path: progressive_on("arrays", on_policy=keras_kd.OnPolicy()),
            )
        ],
        "temperature": EVERYWHERE,
        "alpha": EVERYWHERE,
        "soft_loss": EVERYWHERE,
        "preprocessor": EVERYWHERE,
        "augment": EVERYWHERE,
        "name": EVERYWHERE,
        "pairs": [
            raises(
                "one flat list of pairs (layers name the models of one stage)",
                r"give one list of pairs per stage, pairs=\[\[...stage 1...\]",
                lambda tmp_path: progressive_on("arrays", pairs=[keras_kd.Hint("dense", "dense")]),
            )
        ],
        "teacher_weights": [
            raises(
                "any (every stage has one teacher)",
                r"teacher_weights=\[1.0\] weighs several teachers, but a single teacher was given",
                lambda tmp_path: progressive_on("arrays", teacher_weights=[1.0]),
            )
        ],
    },
    "recipes.pseudo_label": {
        "teacher": EVERYWHERE,
        "unlabeled": EVERYWHERE,
        "threshold": EVERYWHERE,
        "soft": EVERYWHERE,
        "temperature": [
            raises(
                "soft=False (class ids do not depend on it)",
                r"temperature=2.0 softens soft labels, but soft=False",
                lambda tmp_path: recipes.pseudo_label(teacher(), data()[0], soft=False, temperature=2.0, verbose=0),
            )
        ],
        "batch_size": [
            raises(
                "a dataset (already batched)",
                r"batch_size=8 is for in-memory arrays",
                lambda tmp_path: _pseudo_label_dataset(batch_size=8),
            )
        ],
        "verbose": EVERYWHERE,
    },
}

# Not an argument but a mode of every entry point: where a keras.distribution cannot apply.
RUNTIME = {
    "keras.distribution": [
        raises(
            "the TensorFlow backend (use a tf.distribute strategy)",
            r"fit\(\) was called under keras.distribution.DataParallel, which Keras's TensorFlow backend does not",
            lambda tmp_path: under_data_parallel(),
            backends=("tensorflow",),
        ),
        raises(
            "the PyTorch backend",
            r"fit\(\) was called under keras.distribution.DataParallel, which Keras's torch backend does not",
            lambda tmp_path: under_data_parallel(),
            backends=("torch",),
        ),
    ]
}


def _strings_to_two_preprocessors():
    teachers = [teacher("teacher_0"), teacher("teacher_1")]
    teachers[0].preprocessor, teachers[1].preprocessor = (lambda x: x), (lambda x: x)
    distiller = keras_kd.Distiller(teachers, student()).compile("sgd")
    distiller.fit(np.array(["a b", "c d"]), np.array([0, 1]), verbose=0)


def _cache_without_pairs(tmp_path):
    model = student(hidden=4)
    name = model.layers[0].name
    keras_kd.Distiller(cache_of(tmp_path), model, pairs=[keras_kd.Hint(name, name)])


def _loud_cache(tmp_path):
    model = teacher("loud")
    kernel = model.layers[-1].kernel
    kernel.assign(np.full(tuple(kernel.shape), 3e4, "float32"))
    TeacherCache.build(model, np.ones((8, 8), "float32"), str(tmp_path / "loud"), verbose=0)


def _cache_of_dataset(tmp_path, **kwargs):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(data()).batch(8)
    TeacherCache.build(teacher(), dataset, str(tmp_path / "ds"), verbose=0, **kwargs)


def _pseudo_label_dataset(**kwargs):
    import tensorflow as tf

    recipes.pseudo_label(teacher(), tf.data.Dataset.from_tensor_slices(data()[0]).batch(8), verbose=0, **kwargs)


# ----------------------------------------------------------------------------- the signatures


def _keyword_names(function, skip=()):
    """The named parameters of `function` (not self/cls, *args, **kwargs, nor `skip`)."""
    parameters = inspect.signature(function).parameters.values()
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in parameters if p.kind not in kinds and p.name not in ("self", "cls", *skip)]


def _has_kwargs(function):
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(function).parameters.values())


def arguments(function, *forwarded_to, skip=()):
    """Every argument `function` takes: its own, and those its **kwargs pass on to `forwarded_to` (less `skip`)."""
    names = _keyword_names(function)
    if _has_kwargs(function):
        for target in forwarded_to:
            names += [name for name in _keyword_names(target, skip) if name not in names]
    return names


LAYER_INIT = keras.layers.Layer.__init__
LOSS_INIT = keras.losses.Loss.__init__

SIGNATURES = {
    "Distiller": arguments(keras_kd.Distiller.__init__, keras.Model.__init__, LAYER_INIT),
    "Distiller.compile": arguments(keras_kd.Distiller.compile, keras.Model.compile),
    "Distiller.fit": arguments(keras_kd.Distiller.fit, keras.Model.fit),
    "TeacherCache": arguments(TeacherCache.__init__),
    "TeacherCache.build": arguments(TeacherCache.build),
    "LayerPair": arguments(keras_kd.LayerPair.__init__, LAYER_INIT),
    **{
        cls.__name__: arguments(cls.__init__, keras_kd.LayerPair.__init__, LAYER_INIT)
        for cls in (keras_kd.Hint, keras_kd.AttentionTransfer, keras_kd.Relational, keras_kd.CosineEmbedding)
    },
    "TemperatureScheduler": arguments(callbacks.TemperatureScheduler.__init__),
    "AlphaScheduler": arguments(callbacks.AlphaScheduler.__init__),
    "HintWarmup": arguments(callbacks.HintWarmup.__init__),
    "SoftLossWarmup": arguments(callbacks.SoftLossWarmup.__init__),
    "TeacherComparison": arguments(callbacks.TeacherComparison.__init__),
    **{
        f"losses.{name}": arguments(getattr(losses, name).__init__, LOSS_INIT)
        for name in losses.__all__
        if isinstance(getattr(losses, name), type)
    },
    # **distiller_kwargs go to every stage's Distiller, which gets its teacher and student from the chain.
    "recipes.progressive": arguments(recipes.progressive, keras_kd.Distiller.__init__, skip=("student",)),
    "recipes.pseudo_label": arguments(recipes.pseudo_label),
}


def test_every_argument_has_a_decision():
    assert set(SIGNATURES) == set(DECISIONS), "a public constructor without decisions, or decisions without one"
    for owner, names in SIGNATURES.items():
        decided = DECISIONS[owner]
        undecided = [name for name in names if name not in decided]
        stale = [name for name in decided if name not in names]
        assert not undecided, f"{owner}: decide for {undecided} (EVERYWHERE, or the modes that raise or warn)"
        assert not stale, f"{owner}: {stale} are no arguments of it any more"
        for name, decision in decided.items():
            assert decision == EVERYWHERE or (decision and all(isinstance(d, Unsupported) for d in decision)), (
                f"{owner}({name}=...): EVERYWHERE, or a non-empty list of Unsupported modes"
            )


def _cases():
    for owner, decided in [*DECISIONS.items(), ("runtime", RUNTIME)]:
        for name, decision in decided.items():
            if decision == EVERYWHERE:
                continue
            for case in decision:
                yield pytest.param(case, id=f"{owner}.{name}[{case.mode}]")


@pytest.mark.parametrize("case", _cases())
def test_an_unsupported_mode_raises_or_warns_exactly_once(case, tmp_path):
    if BACKEND not in case.backends:
        pytest.skip(f"{case.mode}: the {'/'.join(case.backends)} backend only")
    if case.outcome == "raises":
        with pytest.raises(case.error, match=case.message):
            case.run(tmp_path)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        case.run(tmp_path)
    matching = [w for w in caught if re.search(case.message, str(w.message))]
    assert len(matching) == 1, f"{len(matching)} warnings match {case.message!r}: {[str(w.message) for w in caught]}"
