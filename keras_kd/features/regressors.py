"""Projections from a student layer's output onto the teacher layer's shape (FitNets regressors).

`make_regressor` returns a built layer, created when the distiller is
constructed so that compiled steps and the optimizer see its variables from the
first batch. It belongs to the distiller, not to the student: `distiller.student`
and its saved file stay free of it.

Automatic choice (shapes without the batch axis):

- equal shapes: no regressor;
- vectors and sequences `(..., width)` with equal leading axes: `Dense(teacher_width)`;
- feature maps `(H, W, C)`: a convolution to the teacher's channels, `1x1` when the spatial
  sizes agree; FitNets' `valid` convolution with kernel `(Hs - Ht + 1, Ws - Wt + 1)` when the
  student's map is larger; a `1x1` convolution then nearest upsampling when the teacher's map is
  an integer multiple of the student's.
"""

import keras


def _shape_text(shape):
    return str(tuple(shape))


def make_regressor(teacher_shape, student_shape, regressor, description, name):
    """A built layer mapping `student_shape` to `teacher_shape`, or None when none is needed.

    `regressor` is `"auto"`, `None` (shapes must match) or a `keras.layers.Layer`.
    `description` names the pair in errors.
    """
    teacher_shape, student_shape = tuple(teacher_shape), tuple(student_shape)
    if regressor is None:
        if teacher_shape[1:] != student_shape[1:]:
            raise ValueError(
                f"{description}: the teacher's output {_shape_text(teacher_shape)} and the student's "
                f"{_shape_text(student_shape)} differ and regressor=None. Use regressor='auto' or pass a "
                "keras layer that maps the student's shape to the teacher's."
            )
        return None
    if isinstance(regressor, keras.layers.Layer):
        layer = regressor
    elif regressor == "auto":
        if teacher_shape[1:] == student_shape[1:]:
            return None
        layer = _auto_regressor(teacher_shape, student_shape, description, name)
    else:
        raise ValueError(f"{description}: regressor must be 'auto', None or a keras.layers.Layer; got {regressor!r}.")
    output = layer(keras.KerasTensor((None, *student_shape[1:])))
    if tuple(output.shape[1:]) != teacher_shape[1:]:
        raise ValueError(
            f"{description}: the regressor {layer.name!r} maps the student's {_shape_text(student_shape)} to "
            f"{_shape_text(output.shape)}, but the teacher's output is {_shape_text(teacher_shape)}. Give it "
            "an output of the teacher's shape, or use regressor='auto'."
        )
    return layer


def _auto_regressor(teacher_shape, student_shape, description, name):
    if len(teacher_shape) != len(student_shape):
        raise ValueError(
            f"{description}: the teacher's output {_shape_text(teacher_shape)} and the student's "
            f"{_shape_text(student_shape)} have different ranks, which no automatic regressor reconciles. "
            "Pair layers of the same rank, or pass regressor=<a keras layer mapping one to the other>."
        )
    width = teacher_shape[-1]
    if len(teacher_shape) == 4:
        return _map_regressor(teacher_shape, student_shape, description, name)
    if teacher_shape[1:-1] != student_shape[1:-1]:
        raise ValueError(
            f"{description}: the teacher's output {_shape_text(teacher_shape)} and the student's "
            f"{_shape_text(student_shape)} differ on axes other than the last (e.g. sequence lengths); an "
            "automatic regressor only changes the width. Pair layers whose other axes agree, or pass "
            "regressor=<a keras layer>."
        )
    return keras.layers.Dense(width, name=name)


def _map_regressor(teacher_shape, student_shape, description, name):
    (t_height, t_width, channels), (s_height, s_width) = teacher_shape[1:], student_shape[1:3]
    if None in (t_height, t_width, s_height, s_width):
        raise ValueError(
            f"{description}: feature maps with unknown spatial size (teacher {_shape_text(teacher_shape)}, "
            f"student {_shape_text(student_shape)}) need an explicit regressor=<a keras layer>."
        )
    if s_height >= t_height and s_width >= t_width:
        kernel = (s_height - t_height + 1, s_width - t_width + 1)
        return keras.layers.Conv2D(channels, kernel, padding="valid", name=name)
    if t_height % s_height == 0 and t_width % s_width == 0:
        return keras.Sequential(
            [
                keras.layers.Conv2D(channels, 1, name=f"{name}_conv"),
                keras.layers.UpSampling2D((t_height // s_height, t_width // s_width), name=f"{name}_upsample"),
            ],
            name=name,
        )
    raise ValueError(
        f"{description}: the student's feature map {_shape_text(student_shape)} is smaller than the teacher's "
        f"{_shape_text(teacher_shape)} by a non-integer factor. Pair maps whose sizes divide, or pass "
        "regressor=<a keras layer>."
    )
