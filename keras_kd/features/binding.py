"""Connecting layer pairs to a teacher and a student: find the layers, tap them, bind the pairs.

Everything here happens once, when the distiller is constructed, so that a bad
path or an irreconcilable shape fails before training, and so that regressors
exist before the first compiled step.
"""

from collections import Counter

from keras_kd.features import layer_paths, outputs
from keras_kd.features.capture import capture, captured_output
from keras_kd.features.pairs import Hint, LayerPair


def log_names(pairs):
    """`<kind>_loss` per pair, numbered `_1`, `_2`, ... for a kind that appears more than once."""
    counts = Counter(pair.log_kind for pair in pairs)
    seen = Counter()
    names = []
    for pair in pairs:
        seen[pair.log_kind] += 1
        suffix = f"_{seen[pair.log_kind]}" if counts[pair.log_kind] > 1 else ""
        names.append(f"{pair.log_kind}_loss{suffix}")
    return names


class BoundPairs:
    """The pairs of one distiller, with the teacher and student layers they read.

    With `teacher_cache` (a `keras_kd.TeacherCache`; `teacher` is then unused) the teacher side
    comes from the cache: the shapes are the stored features' shapes, and `stored_features` picks
    each pair's teacher outputs out of a cached batch.
    """

    def __init__(self, pairs, teacher, student, teacher_cache=None):
        if not isinstance(pairs, (list, tuple)):
            raise TypeError(
                f"pairs must be a list of keras_kd.LayerPair objects, got {type(pairs).__name__}. Wrap a single "
                "pair in a list: pairs=[pair]."
            )
        for pair in pairs:
            if not isinstance(pair, LayerPair):
                raise TypeError(
                    f"pairs must hold keras_kd.LayerPair objects (Hint, AttentionTransfer, Relational, "
                    f"CosineEmbedding, or LayerPair(teacher_layer, student_layer, loss)); got {pair!r}."
                )
        self.pairs = list(pairs)
        self.log_names = log_names(self.pairs)
        if teacher_cache is None:
            self.teacher_layers = [[_resolve(teacher, t, "teacher") for t, _ in p.layer_pairs] for p in pairs]
        else:
            self.teacher_layers = []
            self.stored_locations = [[_stored_location(teacher_cache, p, t) for t, _ in p.layer_pairs] for p in pairs]
        self.student_layers = [[_resolve(student, s, "student") for _, s in p.layer_pairs] for p in pairs]
        if teacher_cache is None:
            teacher_shapes = self._shapes(teacher, self.teacher_layers, "teacher")
        else:
            teacher_shapes = [[(None, *teacher_cache.feature_shape(t)) for t, _ in p.layer_pairs] for p in pairs]
        student_shapes = self._shapes(student, self.student_layers, "student")
        for pair, t_shapes, s_shapes in zip(self.pairs, teacher_shapes, student_shapes):
            pair.bind(_pooled_shapes(pair, t_shapes, "teacher"), _pooled_shapes(pair, s_shapes, "student"))

    def _shapes(self, model, layers_per_pair, role):
        flat = [layer for layers in layers_per_pair for layer in layers if not _is_output(layer)]
        shapes = iter(layer_paths.output_shapes(model, flat, role) if flat else [])
        result = []
        for pair, layers in zip(self.pairs, layers_per_pair):
            pair_shapes = []
            for index, layer in enumerate(layers):
                shape = outputs.output_shape(layer) if _is_output(layer) else next(shapes)
                if shape and shape[0] == "multiple outputs":
                    path = pair.layer_pairs[index][0 if role == "teacher" else 1]
                    keys = outputs.output_keys(model)
                    also = f" or one of the {role}'s output keys {keys}" if keys else ""
                    raise ValueError(
                        f"{pair.describe(index)}: the {role} layer {path!r} has several outputs {shape[1]}. Pair a "
                        f"layer with a single tensor output{also}."
                    )
                pair_shapes.append(shape)
            result.append(pair_shapes)
        return result

    def paired_among(self, role, layers):
        """`(description, layer path)` of each of `role`'s paired layers that is one of `layers`."""
        wanted = {id(layer) for layer in layers}
        layers_per_pair = self.teacher_layers if role == "teacher" else self.student_layers
        column = 0 if role == "teacher" else 1
        return [
            (pair.describe(index), pair.layer_pairs[index][column])
            for pair, pair_layers in zip(self.pairs, layers_per_pair)
            for index, layer in enumerate(pair_layers)
            if id(layer) in wanted
        ]

    def capture(self, role):
        """`with pairs.capture(role) as captured:` records the outputs of `role`'s paired layers in one forward pass.

        The layers are wrapped only inside the block (see `keras_kd.features.capture`).
        """
        layers_per_pair = self.teacher_layers if role == "teacher" else self.student_layers
        return capture([layer for layers in layers_per_pair for layer in layers if not _is_output(layer)])

    def features(self, captured, role, model_outputs=None):
        """Per pair, the outputs of its layers in `role`'s forward pass (captured, or read off `model_outputs`)."""
        layers_per_pair = self.teacher_layers if role == "teacher" else self.student_layers
        column = 0 if role == "teacher" else 1
        return [
            [
                outputs.read_output(model_outputs, layer, role)
                if _is_output(layer)
                else captured_output(captured, layer, pair.layer_pairs[index][column], role)
                for index, layer in enumerate(layers)
            ]
            for pair, layers in zip(self.pairs, layers_per_pair)
        ]

    def stored_features(self, cached_features):
        """Per pair, its teacher layers' outputs from a cached batch's `teacher_features`."""
        return [[cached_features[i][j] for i, j in locations] for locations in self.stored_locations]

    def hints(self):
        return [pair for pair in self.pairs if isinstance(pair, Hint)]

    def warmup_variables(self, student):
        """What FitNets' warm-up trains: the student up to each hinted layer, and the hint regressors."""
        variables = []
        for pair, layers in zip(self.pairs, self.student_layers):
            if not isinstance(pair, Hint):
                continue
            if _is_output(layers[0]):
                variables += outputs.upstream_variables(layers[0])
            else:
                variables += layer_paths.upstream_variables(student, pair.layer_pairs[0][1])
            for regressor in pair.regressors():
                variables += regressor.trainable_variables
        return variables


def _is_output(layer):
    return isinstance(layer, outputs.ModelOutput)


def _resolve(model, path, role):
    """A key of the model's dict output (see `keras_kd.features.outputs`), else the layer at `path`."""
    found = outputs.find_output(model, path) if isinstance(path, str) else None
    if found is not None:
        return found
    try:
        return layer_paths.resolve(model, path, role)
    except ValueError as error:
        keys = outputs.output_keys(model)
        if not keys:
            raise
        raise ValueError(f"{error} The {role} also returns the outputs {keys}, which a pair can name.") from None


def _pooled_shapes(pair, shapes, role):
    """The shapes `pair` compares: with `pooling`, `(batch, positions, width)` -> `(batch, width)`."""
    if pair.pooling is None:
        return shapes
    pooled = []
    for index, shape in enumerate(shapes):
        if len(shape) != 3:
            path = pair.layer_pairs[index][0 if role == "teacher" else 1]
            raise ValueError(
                f"{pair.describe(index)}: pooling={pair.pooling!r} pools hidden states of shape (batch, positions, "
                f"width) into one vector per example, but the {role}'s {path!r} is {tuple(shape)}. Pair a sequence "
                "output (e.g. a backbone's 'sequence_output'), or pass pooling=None."
            )
        pooled.append((shape[0], shape[2]))
    return pooled


def _stored_location(cache, pair, path):
    location = cache.feature_location(path)
    if location is None:
        held = [path for paths in cache.pair_paths for path in paths]
        raise ValueError(
            f"{pair.describe()}: the teacher cache in {cache.directory} holds no output of the teacher layer "
            f"{path!r}; it holds the outputs of {held or 'no teacher layers'}. Rebuild the cache with this pair: "
            "keras_kd.TeacherCache.build(teacher, data, directory, pairs=[...])."
        )
    return location
