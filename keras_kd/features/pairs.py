"""Layer pairs: each names a teacher layer and a student layer and adds one term to the loss.

A pair's paths name layers or, for a model that returns a dict (a KerasHub backbone), one of its
output keys (`"sequence_output"`, `"pooled_output"`; see `keras_kd.features.outputs`). With
`pooling="mean"` (or `"first"`) a pair compares one vector per example: each model's
`(batch, positions, width)` hidden states pooled over its own padding mask (`keras_kd.features.pool`),
the sentence embedding that sentence-transformers models serve.

A pair is a `keras.layers.Layer` only so that the distiller tracks, trains and
saves what it owns (a `Hint`'s regressor) and serializes it with its config; it
is never called on data. The distiller resolves the layer paths (`keras_kd.features.binding`)
and calls `bind(teacher_shapes, student_shapes)` once at construction,
then `compute(teacher_features, student_features, sample_weight)` every step
with the outputs captured during the one forward pass of each model.

Each term's log entry is its contribution to the total loss (its weights
included), named `<kind>_loss`; a kind used more than once is numbered
(`hint_loss_1`, `hint_loss_2`). A pair given a `name` logs `<name>_loss`.
"""

import inspect

import keras
from keras import ops

from keras_kd.features.pooling import POOLING_MODES
from keras_kd.features.regressors import make_regressor
from keras_kd.losses import (
    attention_transfer_loss,
    cosine_embedding_loss,
    hint_loss,
    rkd_angle_loss,
    rkd_distance_loss,
)
from keras_kd.losses._common import check_number, weighted_mean
from keras_kd.losses.attention import indivisible_sizes
from keras_kd.losses.relational import batch_of_one_message

# keras.layers.Layer arguments a pair accepts through **kwargs but could not apply (it is never called).
_LAYER_KWARGS_NOT_APPLIED = ("dtype", "trainable", "autocast", "activity_regularizer")


def _check_path(value, role, owner):
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{owner}: the {role} layer must be a layer name or a path like 'inner_model/dense_2'; got {value!r}."
        )
    return value


@keras.saving.register_keras_serializable(package="keras_kd")
class LayerPair(keras.layers.Layer):
    """One loss term between a teacher layer's output and a student layer's output.

    `loss(teacher_features, student_features[, sample_weight])` returns a
    scalar or per-example (per-position) values; values are averaged with the
    batch's sample weights. A `keras.losses.Loss` instance, a registered
    function or a loss name (`"mse"`, `"cosine_similarity"`, ...) all work.
    The term is `weight * loss(...)`. `pooling="mean"` or `"first"` compares
    `(batch, positions, width)` outputs pooled to one vector per example (see
    the module docstring).

    Example:

    >>> import keras, keras_kd
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="features"),
    ...                             keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="features"),
    ...                             keras.layers.Dense(3)])
    >>> pair = keras_kd.LayerPair("features", "features", loss="mean_absolute_error", weight=0.5,
    ...                           name="l1")
    >>> distiller = keras_kd.Distiller(teacher, student, pairs=[pair])
    >>> distiller.pair_log_names
    ['l1_loss']
    """

    kind = "pair"

    def __init__(self, teacher_layer, student_layer, loss=None, weight=1.0, name=None, pooling=None, **kwargs):
        owner = type(self).__name__
        for key in _LAYER_KWARGS_NOT_APPLIED:
            if key in kwargs:
                raise TypeError(
                    f"{owner}({key}={kwargs[key]!r}): a pair is never called on data, so keras.layers.Layer's {key} "
                    "would not be applied. A Hint's regressor trains with the student and follows the dtype "
                    "policy; pass regressor=<your layer> (built with the dtype, trainable flag or regularizers you "
                    "want) instead."
                )
        if loss is not None and type(self) is not LayerPair and type(self).__module__ == __name__:
            raise TypeError(
                f"{owner}(loss={loss!r}): the {owner} term computes its own loss, so this one would not be used. For "
                "a loss of your own, use keras_kd.LayerPair(teacher_layer, student_layer, loss=...)."
            )
        super().__init__(name=name, **kwargs)
        self.layer_pairs = [
            (_check_path(teacher_layer, "teacher", owner), _check_path(student_layer, "student", owner))
        ]
        self.weight = check_number(f"{owner}: weight", weight)
        if pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(
                f"{owner}(pooling={pooling!r}): pooling is None (compare the outputs as they are), 'mean' (the mean "
                "over the padding mask's real tokens, a sentence embedding) or 'first' (the [CLS] position)."
            )
        self.pooling = pooling
        self.log_kind = name or self.kind
        self.loss = loss
        if type(self) is LayerPair:
            if loss is None:
                raise ValueError(
                    "LayerPair needs a loss: a callable (teacher_features, student_features[, sample_weight]), a "
                    "keras.losses.Loss or a loss name. Or use Hint, AttentionTransfer, Relational, CosineEmbedding."
                )
            self._loss_fn = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
            if not callable(self._loss_fn):
                raise ValueError(f"LayerPair: loss must be callable or a loss name, got {loss!r}.")
            self._takes_weight = _accepts_sample_weight(self._loss_fn)

    @property
    def scaled_for_distribution(self):
        """True when the loss divides by the replica count itself (Keras `Loss` objects do)."""
        return type(self) is LayerPair and isinstance(self._loss_fn, keras.losses.Loss)

    def describe(self, index=0):
        """A short label of the `index`-th layer pair, for error messages: `Hint(teacher 'a', student 'b')`."""
        teacher_path, student_path = self.layer_pairs[index]
        return f"{type(self).__name__}(teacher {teacher_path!r}, student {student_path!r})"

    def bind(self, teacher_shapes, student_shapes):
        """Checks the paired outputs' shapes (batch axis first) and builds what the term needs."""
        self.built = True

    def regressors(self):
        """Layers this pair trains along with the student."""
        return []

    # Whether a KerasHub padding mask in the student's inputs should weight this term's positions
    # (the distiller passes it, times the sample weight, for (batch, positions, width) features).
    position_weighted = False

    def compute(self, teacher_features, student_features, sample_weight=None):
        """The term's contribution to the loss; `*_features` hold one tensor per layer pair."""
        (teacher,), (student,) = teacher_features, student_features
        if self._takes_weight:
            value = self._loss_fn(teacher, student, sample_weight=sample_weight)
        else:
            value = self._loss_fn(teacher, student)
            if sample_weight is not None and len(ops.shape(value)) == 0:
                raise ValueError(
                    f"{self.describe()}: the batch has sample weights but the loss {self.loss!r} returns a scalar "
                    "and takes no sample_weight argument. Give it a sample_weight argument or return one value "
                    "per example."
                )
        if len(ops.shape(value)):
            value = weighted_mean(value, sample_weight)
        return self.weight * ops.cast(value, "float32")

    def get_config(self):
        config = super().get_config()
        teacher_path, student_path = self.layer_pairs[0]
        config.update(teacher_layer=teacher_path, student_layer=student_path, weight=self.weight)
        if self.pooling is not None:
            config["pooling"] = self.pooling
        if type(self) is LayerPair:
            config["loss"] = keras.saving.serialize_keras_object(self.loss)
        config["name"] = self.log_kind if self.log_kind != self.kind else None
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "loss" in config and not isinstance(config["loss"], str):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**{k: v for k, v in config.items() if k not in ("trainable", "dtype")})


def _accepts_sample_weight(fn):
    if isinstance(fn, keras.losses.Loss):
        return True
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "sample_weight" in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


class _Projected(LayerPair):
    """A pair whose student side may go through a regressor onto the teacher's shape (`regressor=`).

    `"auto"` builds one where the shapes differ (`keras_kd.features.regressors`), a layer is used as
    given, `None` requires equal shapes. It trains with the student and stays out of `distiller.student`.
    """

    def _set_regressor(self, regressor):
        if not (regressor is None or regressor == "auto" or isinstance(regressor, keras.layers.Layer)):
            raise ValueError(f"{self.describe()}: regressor must be 'auto', None or a keras layer; got {regressor!r}.")
        self._regressor_spec = regressor
        self.regressor = regressor if isinstance(regressor, keras.layers.Layer) else None

    def bind(self, teacher_shapes, student_shapes):
        (teacher_shape,), (student_shape,) = teacher_shapes, student_shapes
        self.regressor = make_regressor(
            teacher_shape, student_shape, self._regressor_spec, self.describe(), name=f"{self.name}_regressor"
        )
        self.built = True

    def regressors(self):
        return [self.regressor] if self.regressor is not None else []

    def _projected(self, student):
        return student if self.regressor is None else self.regressor(student)

    def get_config(self):
        config = super().get_config()
        spec = self._regressor_spec
        config["regressor"] = (
            keras.saving.serialize_keras_object(spec) if isinstance(spec, keras.layers.Layer) else spec
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("regressor"), dict):
            config["regressor"] = keras.saving.deserialize_keras_object(config["regressor"])
        return super().from_config(config)


@keras.saving.register_keras_serializable(package="keras_kd")
class Hint(_Projected):
    """FitNets hint (Romero et al. 2015): `weight * MSE(teacher, regressor(student))`.

    The regressor maps the student's output to the teacher's shape. With
    `regressor="auto"` it is built when the shapes differ (`Dense` for vectors
    and sequences, a convolution for feature maps, see `keras_kd.features.regressors`);
    pass a `keras.layers.Layer` to choose it, or `None` to require equal shapes.
    It trains with the student and is not part of `distiller.student`.

    Example:

    >>> import keras, keras_kd
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, name="hidden"),
    ...                             keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="hidden"),
    ...                             keras.layers.Dense(3)])
    >>> distiller = keras_kd.Distiller(teacher, student, pairs=[keras_kd.Hint("hidden", "hidden")])
    >>> distiller.pairs[0].regressor.units
    16
    """

    kind = "hint"
    position_weighted = True

    def __init__(self, teacher_layer, student_layer, weight=1.0, regressor="auto", name=None, pooling=None, **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight, name=name, pooling=pooling, **kwargs)
        self._set_regressor(regressor)

    def compute(self, teacher_features, student_features, sample_weight=None):
        (teacher,), (student,) = teacher_features, student_features
        return self.weight * hint_loss(teacher, self._projected(student), sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransfer(LayerPair):
    """Attention transfer (Zagoruyko & Komodakis 2017) over one or more pairs of feature maps.

    `weight * sum_j attention_transfer_loss(t_j, s_j, p)` with `weight = 1000`
    (the paper's `beta`) by default, applied in full as in the authors' code
    (szagoruyko/attention-transfer, `--beta 1e+3`) and RepDistiller, so that
    weights from papers carry over. (The paper writes `beta / 2`; keras-kd up to
    0.1.0 applied `weight / 2`: pass half the weight to keep such a run's
    strength.) `attention_transfer_loss` is the authors' `at_loss`, the mean
    over the batch and the positions of `(Q_s - Q_t)**2`. The maps average
    `|A|**p` over channels, so teacher and student may have different channel
    counts; spatial sizes may differ by an integer factor (the larger map is pooled).

    Example:

    >>> import keras, keras_kd
    >>> def cnn(filters):
    ...     return keras.Sequential([keras.Input((8, 8, 1)),
    ...         keras.layers.Conv2D(filters, 3, padding="same", name="block1"),
    ...         keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> pair = keras_kd.AttentionTransfer("block1", "block1")
    >>> keras_kd.Distiller(cnn(16), cnn(4), pairs=[pair]).pair_log_names
    ['attention_loss']
    """

    kind = "attention"

    def __init__(self, teacher_layer, student_layer=None, weight=1000.0, p=2, name=None, **kwargs):
        if isinstance(teacher_layer, (list, tuple)) and student_layer is None:
            layer_pairs = [tuple(pair) for pair in teacher_layer]
            if not layer_pairs or any(len(pair) != 2 for pair in layer_pairs):
                raise ValueError(
                    "AttentionTransfer takes (teacher_layer, student_layer) or a non-empty list of "
                    f"(teacher_layer, student_layer) tuples; got {teacher_layer!r}."
                )
        else:
            layer_pairs = [(teacher_layer, student_layer)]
        if kwargs.get("pooling") is not None:
            raise TypeError(
                f"AttentionTransfer(pooling={kwargs['pooling']!r}): attention transfer compares spatial maps, which "
                "pooling would collapse to one vector. Use pooling with Hint, CosineEmbedding or Relational."
            )
        kwargs.pop("pooling", None)
        super().__init__(*layer_pairs[0], weight=weight, name=name, **kwargs)
        self.layer_pairs = [
            (_check_path(t, "teacher", "AttentionTransfer"), _check_path(s, "student", "AttentionTransfer"))
            for t, s in layer_pairs
        ]
        self.p = check_number("AttentionTransfer: p", p, positive=True)

    def bind(self, teacher_shapes, student_shapes):
        for index, (teacher_shape, student_shape) in enumerate(zip(teacher_shapes, student_shapes)):
            for role, shape in (("teacher", teacher_shape), ("student", student_shape)):
                if len(shape) < 3:
                    raise ValueError(
                        f"{self.describe(index)}: attention transfer needs feature maps of rank >= 3 "
                        f"(batch, ..., channels), but the {role}'s output is {tuple(shape)}. Pair convolutional "
                        "layers, or use Hint or Relational for vectors."
                    )
            if len(teacher_shape) != len(student_shape):
                raise ValueError(
                    f"{self.describe(index)}: the teacher's map {tuple(teacher_shape)} and the student's "
                    f"{tuple(student_shape)} have different ranks. Pair maps with the same spatial axes."
                )
            if indivisible_sizes(teacher_shape, student_shape):
                raise ValueError(
                    f"{self.describe(index)}: the spatial sizes of the teacher's map {tuple(teacher_shape)} and "
                    f"the student's {tuple(student_shape)} differ by a non-integer factor, so one cannot be "
                    "pooled onto the other. Pair maps whose sizes divide."
                )
        self.built = True

    def compute(self, teacher_features, student_features, sample_weight=None):
        total = 0.0
        for teacher, student in zip(teacher_features, student_features):
            total = total + attention_transfer_loss(teacher, student, p=self.p, sample_weight=sample_weight)
        return self.weight * total

    def get_config(self):
        config = super().get_config()
        del config["student_layer"]
        config["teacher_layer"] = [list(pair) for pair in self.layer_pairs]
        config["p"] = self.p
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class Relational(LayerPair):
    """Relational KD (Park et al. 2019): `distance_weight * RKD-D + angle_weight * RKD-A`.

    Compares how examples of a batch relate (normalised pairwise distances,
    angles of triplets) in the teacher's and the student's embeddings, so the
    widths may differ. RKD-D and RKD-A (`rkd_distance_loss`, `rkd_angle_loss`)
    average the Huber values over all `batch**2` distance entries and all
    `batch**3` triplets, as the authors' code (lenscloth/RKD) and RepDistiller
    do, so that their weights 25 and 50 carry over. The angle term costs
    `O(batch**3 * width)`; set `angle_weight=0` to skip it. Needs batches of at
    least 2 examples (3 for angles).

    Example:

    >>> import keras, keras_kd
    >>> def mlp(width):
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, name="embedding"),
    ...                              keras.layers.Dense(3)])
    >>> keras_kd.Distiller(mlp(32), mlp(8), pairs=[keras_kd.Relational("embedding", "embedding")]).pair_log_names
    ['relational_loss']
    """

    kind = "relational"

    def __init__(
        self, teacher_layer, student_layer, distance_weight=25.0, angle_weight=50.0, name=None, pooling=None, **kwargs
    ):
        weight = kwargs.pop("weight", 1.0)  # 1.0 in the configs of earlier versions
        if weight != 1.0:
            raise TypeError(
                f"Relational(weight={weight!r}): the relational term has two weights and no overall one, so it would "
                "not be applied. Scale distance_weight and angle_weight instead."
            )
        super().__init__(teacher_layer, student_layer, weight=1.0, name=name, pooling=pooling, **kwargs)
        self.distance_weight = check_number("Relational: distance_weight", distance_weight)
        self.angle_weight = check_number("Relational: angle_weight", angle_weight)
        if self.distance_weight == 0 and self.angle_weight == 0:
            raise ValueError(
                "Relational: distance_weight and angle_weight are both 0, so the term would be 0. Give one of them a "
                "weight > 0 (Park et al. use distance_weight=25, angle_weight=50), or drop the pair."
            )

    def compute(self, teacher_features, student_features, sample_weight=None):
        (teacher,), (student,) = teacher_features, student_features
        _assert_pairs_when_run(teacher)
        total = 0.0
        if self.distance_weight:
            total = total + self.distance_weight * rkd_distance_loss(teacher, student, sample_weight=sample_weight)
        if self.angle_weight:
            total = total + self.angle_weight * rkd_angle_loss(teacher, student, sample_weight=sample_weight)
        return total

    def get_config(self):
        config = super().get_config()
        del config["weight"]
        config.update(distance_weight=self.distance_weight, angle_weight=self.angle_weight)
        return config


def _assert_pairs_when_run(embeddings):
    """Where the batch size is unknown while tracing, asserts when the step runs that the batch has 2 examples or more.

    The RKD losses raise their ValueError for a batch of one whenever the batch size is known while
    tracing (JAX, PyTorch, a first TensorFlow batch). TensorFlow traces a smaller last batch with an
    unknown batch axis (Keras's `reduce_retracing`), where the loss would be 0 without an error: there the
    same message comes from a graph assertion, as a `tf.errors.InvalidArgumentError`. The one line of
    TensorFlow outside `trainers/`: `keras.ops` has no assertion.
    """
    if embeddings.shape[0] is not None or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    tf.debugging.assert_greater_equal(tf.shape(embeddings)[0], 2, message=batch_of_one_message(embeddings.shape))


@keras.saving.register_keras_serializable(package="keras_kd")
class CosineEmbedding(_Projected):
    """DistilBERT's hidden-state term: `weight * mean(1 - cos(h_t, h_s))` over positions.

    Padding positions are left out of the mean: the `padding_mask` of a KerasHub
    model's inputs (and a per-position sample weight, as a causal LM's
    preprocessor gives) weights the positions. With `pooling="mean"` the two
    models' sentence embeddings (hidden states averaged over their padding
    masks) are compared, one cosine per example. The two sides must have the
    same width unless `regressor="auto"` (a learned `Dense` projection of the
    student's, trained with it) or a layer of your own maps one onto the other.

    Example:

    >>> import keras, keras_kd
    >>> def mlp():
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="hidden"),
    ...                              keras.layers.Dense(3)])
    >>> keras_kd.Distiller(mlp(), mlp(), pairs=[keras_kd.CosineEmbedding("hidden", "hidden")]).pair_log_names
    ['cosine_loss']
    """

    kind = "cosine"
    position_weighted = True

    def __init__(self, teacher_layer, student_layer, weight=1.0, name=None, pooling=None, regressor=None, **kwargs):
        # Its own signature keeps `weight` third; a `loss` in kwargs is refused by LayerPair, as for every kind.
        super().__init__(teacher_layer, student_layer, weight=weight, name=name, pooling=pooling, **kwargs)
        self._set_regressor(regressor)

    def bind(self, teacher_shapes, student_shapes):
        (teacher_shape,), (student_shape,) = teacher_shapes, student_shapes
        if self._regressor_spec is None and tuple(teacher_shape[1:]) != tuple(student_shape[1:]):
            raise ValueError(
                f"{self.describe()}: the cosine term compares vectors of equal width, but the teacher's output is "
                f"{tuple(teacher_shape)} and the student's {tuple(student_shape)}, and regressor=None. Pass "
                "regressor='auto' (a learned Dense projection of the student's onto the teacher's width) or a keras "
                "layer, pair outputs of the same width, or use Relational, which compares distances and angles "
                "between examples at any widths."
            )
        super().bind(teacher_shapes, student_shapes)

    def compute(self, teacher_features, student_features, sample_weight=None):
        (teacher,), (student,) = teacher_features, student_features
        return self.weight * cosine_embedding_loss(teacher, self._projected(student), mask=sample_weight)
