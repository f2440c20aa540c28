"""Raw strings in: KerasHub preprocessors run inside the `tf.data` pipeline, as KerasHub tasks do.

A KerasHub task (`BertTextClassifier`, `Llama3CausalLM`, ...) carries a `preprocessor` that
turns a batch of strings into token ids; `task.fit(strings, labels)` maps it over the data.
The distiller keeps that promise for both models:

- **Classifiers** (soft targets over classes): each model's own preprocessor tokenizes the
  batch, so teacher and student may use different tokenizers and sequence lengths; the batch
  becomes `paired_inputs(teacher_tokens, student_tokens)`. When both models share one
  preprocessor object (`keras_kd.hub.student_from_teacher` does that) it runs once.
- **Language models** (`CausalLM`, `MaskedLM`, `Seq2SeqLM`: soft targets over the vocabulary
  at every position): the student's preprocessor makes the token ids, the labels (next tokens,
  or the randomly masked tokens and their positions) and the padding mask (as the sample
  weight); the teacher reads the same token ids, so both predict at the same positions. That
  is only meaningful over one vocabulary, so the distiller checks at construction that the two
  vocabularies agree.
"""

import sys

import numpy as np
from keras.utils import pack_x_y_sample_weight, unpack_x_y_sample_weight

from keras_kd.data.batch_keys import paired_inputs


def _leaves(data):
    if isinstance(data, dict):
        return [leaf for value in data.values() for leaf in _leaves(value)]
    if isinstance(data, tuple):
        return [leaf for value in data for leaf in _leaves(value)]
    return [data]


def _is_string_leaf(leaf):
    if isinstance(leaf, (str, bytes)):
        return True
    if isinstance(leaf, list):
        return bool(leaf) and all(isinstance(item, (str, bytes)) for item in leaf)
    if isinstance(leaf, np.ndarray):
        if leaf.dtype.kind in ("U", "S"):
            return True
        return leaf.dtype.kind == "O" and leaf.size > 0 and isinstance(leaf.flat[0], (str, bytes))
    return "string" in str(getattr(leaf, "dtype", "")).lower()


def is_dataset(data):
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "element_spec")


def holds_strings(data):
    """Whether `data` (arrays, lists, dicts, tuples or a `tf.data.Dataset`) holds text."""
    if data is None:
        return False
    if is_dataset(data):
        import tensorflow as tf

        return any(spec.dtype == tf.string for spec in tf.nest.flatten(data.element_spec))
    return any(_is_string_leaf(leaf) for leaf in _leaves(data))


def _keras_hub_models():
    """`keras_hub.models` when KerasHub is in use (a KerasHub model imported it), else None."""
    keras_hub = sys.modules.get("keras_hub")
    return None if keras_hub is None else keras_hub.models


# Tasks whose outputs are distributions over the vocabulary, position by position, and whose
# preprocessors make the labels from the text (next tokens; randomly masked tokens).
_TOKEN_LEVEL_TASKS = ("CausalLM", "MaskedLM", "Seq2SeqLM")


def _is_token_level_preprocessor(preprocessor):
    models = _keras_hub_models()
    return models is not None and isinstance(
        preprocessor, tuple(getattr(models, f"{task}Preprocessor") for task in _TOKEN_LEVEL_TASKS)
    )


def is_token_level_task(model):
    """Whether `model` is a KerasHub language model (causal, masked or seq2seq): logits over its vocabulary."""
    models = _keras_hub_models()
    return models is not None and isinstance(model, tuple(getattr(models, task) for task in _TOKEN_LEVEL_TASKS))


def _tokenizer_vocabulary(model):
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    get_vocabulary = getattr(tokenizer, "get_vocabulary", None)
    if get_vocabulary is None:
        return None
    try:
        return list(get_vocabulary())
    except (AttributeError, ValueError, TypeError):  # a tokenizer without its vocabulary loaded yet
        return None


def check_shared_vocabulary(teacher, student):
    """Token-level distillation of language models compares distributions over one vocabulary: check it is one.

    Raises when the backbones' `vocabulary_size` differ, or when both models carry tokenizers
    whose vocabularies (id -> token) differ.
    """
    if not (is_token_level_task(teacher) and is_token_level_task(student)):
        return
    sizes = [getattr(getattr(model, "backbone", None), "vocabulary_size", None) for model in (teacher, student)]
    if None not in sizes and sizes[0] != sizes[1]:
        raise ValueError(
            f"The teacher {teacher.name!r} has a vocabulary of {sizes[0]} tokens and the student "
            f"{student.name!r} one of {sizes[1]}. Token-level distillation compares the two models' "
            "next-token distributions id by id, so they must share one vocabulary: build the student "
            "with the teacher's tokenizer and vocabulary_size (keras_kd.hub.student_from_teacher does)."
        )
    vocabularies = [_tokenizer_vocabulary(model) for model in (teacher, student)]
    if None not in vocabularies and vocabularies[0] != vocabularies[1]:
        first = next((i for i, (a, b) in enumerate(zip(*vocabularies)) if a != b), min(map(len, vocabularies)))
        raise ValueError(
            f"The tokenizers of the teacher {teacher.name!r} ({len(vocabularies[0])} tokens) and the "
            f"student {student.name!r} ({len(vocabularies[1])} tokens) map ids to different tokens "
            f"(first difference at id {first}). Token-level distillation needs one vocabulary: give the "
            "student the teacher's preprocessor."
        )


def check_distiller_preprocessor(preprocessor, models):
    """`Distiller(preprocessor=...)` must be callable on strings, and only for models without a preprocessor."""
    if not callable(preprocessor):
        raise TypeError(
            f"preprocessor must be a KerasHub preprocessor (or a callable from strings to the models' token inputs), "
            f"got {preprocessor!r}."
        )
    for model in models:
        own = getattr(model, "preprocessor", None)
        if own is not None and own is not preprocessor:
            raise ValueError(
                f"The model {model.name!r} has its own preprocessor ({type(own).__name__}), which reads its raw "
                "strings; Distiller(preprocessor=...) is for models without one (backbones). Drop the argument, or "
                "pass models without preprocessors."
            )


def _model_label(role, model):
    return f"The {role} {type(model).__name__} {model.name!r}"


class TextPipeline:
    """Maps raw-string batches to the token inputs of the teachers and a student (teachers share one tokenization)."""

    def __init__(self, teachers, student, preprocessor=None):
        self.teachers = list(teachers)
        self.teacher = self.teachers[0]
        self.student = student
        self.teacher_preprocessor = getattr(self.teacher, "preprocessor", None)
        self.student_preprocessor = getattr(student, "preprocessor", None)
        if preprocessor is not None:
            # The distiller's own preprocessor, for models that have none (backbones): it feeds them all.
            check_distiller_preprocessor(preprocessor, [*self.teachers, student])
            self.teacher_preprocessor = self.student_preprocessor = preprocessor
            self.teachers = [self.teacher]  # one tokenization serves every model
        self.token_level = _is_token_level_preprocessor(self.student_preprocessor) or _is_token_level_preprocessor(
            self.teacher_preprocessor
        )

    def check_can_read_strings(self):
        """Raises, naming the model and the fix, when raw strings cannot be tokenized for both models."""
        for index, teacher in enumerate(self.teachers[1:], start=1):
            if getattr(teacher, "preprocessor", None) is not self.teacher_preprocessor:
                raise ValueError(
                    f"The teachers {self.teacher.name!r} and {teacher.name!r} (teacher[{index}]) have different "
                    "preprocessors, and a batch of raw strings is tokenized once for all teachers. Give the teachers "
                    "one preprocessor object, or pass token inputs that every teacher reads "
                    "(keras_kd.paired_inputs(teacher_tokens, student_tokens) when the student's differ)."
                )
        if self.student_preprocessor is None:
            raise ValueError(
                f"{_model_label('student', self.student)} has no preprocessor, so it cannot read the raw "
                "strings given to the distiller. Give the student task a preprocessor (e.g. "
                "`student.preprocessor = teacher.preprocessor` when they share a tokenizer, or build the "
                "student with keras_kd.hub.student_from_teacher, which copies it), or pass token dicts. Backbones have "
                "no preprocessor: pass one to the distiller, Distiller(..., preprocessor=...)."
            )
        if self.teacher_preprocessor is None and not self.token_level:
            raise ValueError(
                f"{_model_label('teacher', self.teacher)} has no preprocessor, so it cannot read the raw "
                "strings given to the distiller. Give the teacher task its preprocessor (the one it was "
                "trained with), or pass token dicts (keras_kd.paired_inputs(teacher_tokens, student_tokens) "
                "when the two tokenize differently)."
            )

    def preprocess_samples(self, x, y=None, sample_weight=None):
        """`(x, y, sample_weight)` of raw strings -> the distiller's batch of token inputs."""
        student_data = self.student_preprocessor(x, y=y, sample_weight=sample_weight)
        student_x, y, sample_weight = unpack_x_y_sample_weight(student_data)
        if self.token_level or self.teacher_preprocessor is self.student_preprocessor:
            return pack_x_y_sample_weight(student_x, y, sample_weight)
        teacher_x = unpack_x_y_sample_weight(self.teacher_preprocessor(x))[0]
        return pack_x_y_sample_weight(paired_inputs(teacher_x, student_x), y, sample_weight)

    def preprocess_batch(self, x, y=None, sample_weight=None):
        """One batch of raw strings, preprocessed eagerly (for `train_on_batch` and `test_on_batch`)."""
        self.check_can_read_strings()
        return unpack_x_y_sample_weight(self.preprocess_samples(x, y, sample_weight))

    def preprocess_inputs(self, x):
        """Raw strings -> what the student reads (for `predict`)."""
        return unpack_x_y_sample_weight(self.student_preprocessor(x))[0]

    # Datasets.

    def dataset(self, x, y=None, sample_weight=None, batch_size=None, shuffle=False):
        """A batched, preprocessed `tf.data.Dataset` from arrays, lists or an (unbatched-free) dataset."""
        self.check_can_read_strings()
        import tensorflow as tf

        if is_dataset(x):
            for name, value in (("y", y), ("sample_weight", sample_weight), ("batch_size", batch_size)):
                if value is not None:
                    raise ValueError(f"When x is a tf.data.Dataset, pass no {name}: the dataset yields batches.")
            dataset = x
        else:
            slices = pack_x_y_sample_weight(_as_arrays(x), _as_arrays(y), _as_arrays(sample_weight))
            dataset = tf.data.Dataset.from_tensor_slices(slices)
            if shuffle:
                dataset = dataset.shuffle(int(dataset.cardinality()), reshuffle_each_iteration=True)
            dataset = dataset.batch(batch_size or 32)
        return dataset.map(self.preprocess_samples, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def fit_arguments(
        self, x, y, sample_weight, batch_size, shuffle, validation_data, validation_split, validation_batch_size
    ):
        """`fit`'s data arguments with raw strings replaced by preprocessed datasets (others unchanged).

        Returns `(x, y, sample_weight, batch_size, shuffle, validation_data, validation_split,
        validation_batch_size)`: training strings become one shuffled, batched dataset (so `y`,
        `sample_weight` and `batch_size` become None and `shuffle` False), `validation_split` is
        taken before shuffling, and validation strings become a dataset batched like the training data.
        """
        if holds_strings(x):
            if validation_split and validation_data is None:
                (x, y, sample_weight), validation_data = self.split(x, y, sample_weight, validation_split)
                validation_split = 0.0
            x = self.dataset(x, y, sample_weight, batch_size, shuffle=shuffle)
            y = sample_weight = None
            shuffle = False  # done above, per example; Keras would warn that a dataset is not shuffled
            validation_batch_size = validation_batch_size or batch_size
            batch_size = None
        if holds_strings(validation_data):
            if is_dataset(validation_data):
                validation_data = self.dataset(validation_data)
            else:
                vx, vy, vsw = unpack_x_y_sample_weight(tuple(validation_data))
                validation_data = self.dataset(vx, vy, vsw, validation_batch_size or batch_size)
            validation_batch_size = None
        return x, y, sample_weight, batch_size, shuffle, validation_data, validation_split, validation_batch_size

    def input_dataset(self, x, batch_size=None):
        """A batched dataset of what the student reads, for `predict`."""
        self.check_can_read_strings()
        import tensorflow as tf

        if is_dataset(x):
            dataset = x
        else:
            dataset = tf.data.Dataset.from_tensor_slices(_as_arrays(x)).batch(batch_size or 32)

        def inputs_only(*batch):
            return self.preprocess_inputs(unpack_x_y_sample_weight(batch if len(batch) > 1 else batch[0])[0])

        return dataset.map(inputs_only, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def split(self, x, y, sample_weight, validation_split):
        """Keras's `validation_split`: the last fraction of the examples, before any shuffling."""
        if is_dataset(x):
            raise ValueError("validation_split needs arrays or lists; with a tf.data.Dataset pass validation_data.")
        arrays = [_as_arrays(part) for part in (x, y, sample_weight)]
        count = len(_leaves(arrays[0])[0])
        cut = int(count * (1.0 - validation_split))
        if cut in (0, count):
            raise ValueError(
                f"validation_split={validation_split} of {count} examples leaves no training or no "
                "validation examples; pass a fraction that keeps both."
            )
        train = tuple(_slice(part, slice(0, cut)) for part in arrays)
        validation = tuple(_slice(part, slice(cut, count)) for part in arrays)
        return train, validation


def _as_arrays(data):
    if data is None:
        return None
    if isinstance(data, dict):
        return {key: _as_arrays(value) for key, value in data.items()}
    if isinstance(data, tuple):
        return tuple(_as_arrays(value) for value in data)
    if isinstance(data, list) and data and isinstance(data[0], (str, bytes)):
        return np.asarray(data, dtype=object)
    return data if hasattr(data, "shape") else np.asarray(data)


def _slice(data, index):
    if data is None:
        return None
    if isinstance(data, dict):
        return {key: _slice(value, index) for key, value in data.items()}
    if isinstance(data, tuple):
        return tuple(_slice(value, index) for value in data)
    return data[index]
