"""`Distiller(..., augment=...)`: one augmented view of each training batch, seen by teacher and student alike.

Beyer et al. (2022), "Knowledge distillation: A good teacher is patient and consistent": the teacher
and the student must see exactly the same view of an image, never a teacher output computed on
another view, and aggressive augmentation (mixup, crops) turns distillation into matching the
teacher's function on many more inputs than the dataset holds. So the augmentation runs inside the
training step, on the batch's inputs, before the teacher's forward pass and the student's: one
draw, two consumers. Validation, `evaluate` and `predict` see the inputs as given: the layers run in
inference mode there, which leaves inputs unchanged except where a layer changes the shape
(`RandomCrop` crops the center, as its documentation says; Keras 3.15's own layer returns the
input uncropped there, so a `CenterCrop` of its size stands in), and a function is not called.

`augment` is a Keras preprocessing layer (`keras.layers.RandomFlip`, `RandomCrop`, `MixUp`,
`CutMix`, `RandAugment`, ...), a list of them (applied in order), or a callable `(x, seed) -> x`
whose randomness comes from `seed`, a `keras.random.SeedGenerator` that the distiller owns (its
state advances every step, is saved, and follows `keras.utils.set_random_seed`). Layers are called
with `training=True`. Mixing layers (`MixUp`, `CutMix`) blend the batch's images with one another,
so a label no longer belongs to its image: they train label-free (function matching), and labelled
batches with `alpha > 0` are refused.
"""

import inspect
import warnings

import keras

from keras_kd.data.batch_keys import is_cached, is_paired

MIXING_LAYERS = ("MixUp", "CutMix")


class Augmentation:
    """The resolved `augment` argument: `augmentation(x)` is the augmented batch input."""

    def __init__(self, spec):
        self.spec = spec
        self.layers = []
        self._center_crops = {}
        self.function = None
        self.seed = None
        if isinstance(spec, keras.layers.Layer):
            self.layers = [spec]
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError("augment=[] holds no layer: pass None for no augmentation, or the layers to apply.")
            for index, layer in enumerate(spec):
                if not isinstance(layer, keras.layers.Layer):
                    raise TypeError(
                        f"augment[{index}] is {layer!r}: a list given as augment must hold Keras layers (e.g. "
                        "keras.layers.RandomFlip()), applied in order. For a function, pass it alone: augment=fn, "
                        "with fn(x, seed) -> x."
                    )
            self.layers = list(spec)
        elif callable(spec):
            _check_signature(spec)
            self.function = spec
            self.seed = keras.random.SeedGenerator(name="augment_seed")
        else:
            raise TypeError(
                "augment must be a Keras preprocessing layer, a list of them, or a callable (x, seed) -> x; got "
                f"{spec!r}."
            )

    @property
    def mixes(self):
        """The names of the mixing layers (MixUp, CutMix) among the layers."""
        return [type(layer).__name__ for layer in self.layers if type(layer).__name__ in MIXING_LAYERS]

    def check_labels(self, y, alpha, soft_term):
        """At the first batch: mixing layers and labels that a term would read (`alpha > 0`, DKD) are refused."""
        mixing = self.mixes
        if y is None or not mixing:
            return
        readers = []
        if alpha > 0:
            readers.append(f"the hard-label term (alpha={alpha:g})")
        if soft_term is not None and soft_term.needs_labels:
            readers.append(f"soft_loss {soft_term.describe()}")
        if not readers:
            return
        raise ValueError(
            f"augment holds {', '.join(mixing)}, which blends each image with another of the batch, so a label no "
            f"longer belongs to its image; but {' and '.join(readers)} reads the labels. Distil on the soft term "
            "alone (alpha=0, soft_loss='kl': function matching, Beyer et al. 2022), or drop the mixing layer."
        )

    def __call__(self, x, training=True):
        """The augmented view when `training`; otherwise the layers' inference behaviour (the input unchanged,
        but for layers that change the shape, e.g. `RandomCrop`'s center crop) and no call of a function."""
        if self.function is not None:
            return self.function(x, self.seed) if training else x
        for layer in self.layers:
            x = layer(x, training=True) if training else self._inference_layer(layer)(x, training=False)
        return x

    def _inference_layer(self, layer):
        """The layer to run at inference: `RandomCrop`'s center crop, which Keras 3.15's own `RandomCrop`
        documents but does not do (it returns the input uncropped with `training=False`)."""
        if not isinstance(layer, keras.layers.RandomCrop):
            return layer
        crops = self._center_crops
        if id(layer) not in crops:
            config = layer.get_config()
            crops[id(layer)] = keras.layers.CenterCrop(
                config["height"], config["width"], data_format=config.get("data_format"), name=f"{layer.name}_center"
            )
        return crops[id(layer)]


def _check_signature(function):
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in parameters):
        name = getattr(function, "__name__", repr(function))
        raise TypeError(
            f"augment={name} takes {len(positional)} positional argument(s); an augment function is called as "
            "fn(x, seed) with the batch's inputs and a keras.random.SeedGenerator to draw from (e.g. "
            "keras.random.uniform(shape, seed=seed)), so that every step draws anew and runs reproduce."
        )


def check_augment(augment, source, on_policy):
    """The `Augmentation` of `Distiller(augment=...)`, or None; refused where there is no step to augment in."""
    if augment is None:
        return None
    augmentation = Augmentation(augment)
    if getattr(source, "cache", None) is not None:
        raise ValueError(
            "augment with a TeacherCache: the cache holds the teacher's outputs on the inputs it was built from, "
            "and an augmented view needs the teacher's outputs on that very view (consistent teaching). Pass the "
            "teacher model, so that it runs on each augmented batch, or drop augment."
        )
    if on_policy is not None:
        raise ValueError(
            "augment with on_policy: on-policy batches are completions written during training, not inputs to "
            "augment. Drop one of the two."
        )
    return augmentation


def refuse_paired_or_cached(x):
    if is_paired(x):
        raise ValueError(
            "augment with keras_kd.paired_inputs: the teacher and the student read different inputs of each example, "
            "so no single augmented view can feed both. Give both models the same input, or augment in the data "
            "pipeline."
        )
    if is_cached(x):
        raise ValueError("augment with a cached batch: the cached teacher outputs belong to the un-augmented inputs.")
    return x


def serialize_augment(augmentation):
    spec = augmentation.spec
    if augmentation.function is not None and inspect.isfunction(spec):
        registered = keras.saving.get_registered_object(keras.saving.get_registered_name(spec))
        if registered is not spec:
            warnings.warn(
                f"augment={spec.__name__} is a plain function: a saved distiller records only its name, so "
                "keras.saving.load_model needs it in custom_objects, or decorate it with "
                "@keras.saving.register_keras_serializable().",
                UserWarning,
                stacklevel=3,
            )
    if isinstance(spec, (list, tuple)):
        return [keras.saving.serialize_keras_object(layer) for layer in spec]
    return keras.saving.serialize_keras_object(spec)


def deserialize_augment(config):
    if isinstance(config, list):
        return [keras.saving.deserialize_keras_object(layer) for layer in config]
    return keras.saving.deserialize_keras_object(config)
