"""`OnPolicy`: where each training batch's completions come from, and how they are sampled."""

import math

import keras
import numpy as np

from keras_kd.validation import is_integer

SOURCES = ("student", "teacher", "data")


@keras.saving.register_keras_serializable(package="keras_kd")
class OnPolicy:
    """On-policy distillation of a KerasHub `CausalLM`: the student writes completions, the teacher scores them.

    Passed as `Distiller(teacher, student, on_policy=OnPolicy(...))`; `fit` then takes prompts. For
    each batch one source writes the completions: the student being trained (with probability
    `student_fraction`: on-policy distillation, Agarwal et al.'s GKD), the teacher (probability
    `teacher_fraction`: sequence-level KD, Kim & Rush 2016), or else the data's own completions
    (supervised KD, which needs `(prompt, completion)` pairs). The soft loss then compares the two
    models' next-token distributions on the completion's tokens only (the prompt and the padding
    weigh zero; a completion ends at its end-of-sequence token):

        loss = sum_t w_t * D(p_teacher(. | y_<t, x) || p_student(. | y_<t, x)) / N

    with `D` the distiller's `soft_loss` (`"reverse_kl"` is what on-policy papers use,
    `keras_kd.losses.GeneralizedJSD(beta)` GKD's).

    Args:
        student_fraction: probability that a batch's completions are sampled from the student.
        teacher_fraction: probability that they are sampled from the teacher instead.
            `student_fraction + teacher_fraction <= 1`; the rest uses the data's completions.
        max_new_tokens: completion length at most, in tokens (`>= 1`).
        temperature: sampling temperature (`> 0`) of both models when they write completions. The
            distiller's own `temperature` (default 4) still softens the soft loss: on-policy
            recipes use `Distiller(..., temperature=1.0)`.
        top_p: nucleus sampling's probability mass (in `(0, 1]`), or None to sample from the whole
            distribution.
        seed: seeds the choice of source per batch and the samplers (None: not reproducible).

    Example:

    >>> import keras_kd
    >>> policy = keras_kd.OnPolicy(student_fraction=0.5, max_new_tokens=16, seed=0)
    >>> policy.get_config()["student_fraction"]
    0.5
    """

    def __init__(
        self, student_fraction=1.0, teacher_fraction=0.0, max_new_tokens=32, temperature=1.0, top_p=None, seed=None
    ):
        self.student_fraction = _fraction("student_fraction", student_fraction)
        self.teacher_fraction = _fraction("teacher_fraction", teacher_fraction)
        if self.student_fraction + self.teacher_fraction > 1.0 + 1e-9:
            raise ValueError(
                f"student_fraction + teacher_fraction must be at most 1, got {student_fraction} + {teacher_fraction} "
                f"= {self.student_fraction + self.teacher_fraction:g}: they are the probabilities that a batch's "
                "completions come from the student and from the teacher (the rest from the data). Lower one of them."
            )
        if not is_integer(max_new_tokens) or max_new_tokens < 1:
            raise ValueError(
                f"max_new_tokens must be an int >= 1 (the completion's length at most, in tokens), got "
                f"{max_new_tokens!r}. Pass e.g. max_new_tokens=32."
            )
        self.max_new_tokens = int(max_new_tokens)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise ValueError(
                f"temperature must be a finite number > 0 (the samplers' temperature), got {temperature!r}. Pass "
                "e.g. temperature=1.0."
            )
        self.temperature = float(temperature)
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise ValueError(
                f"top_p must be None or a number in (0, 1] (nucleus sampling's probability mass), got {top_p!r}."
            )
        self.top_p = None if top_p is None else float(top_p)
        if seed is not None and not is_integer(seed):
            raise ValueError(f"seed must be None or an int, got {seed!r}.")
        self.seed = None if seed is None else int(seed)
        self._rng = np.random.default_rng(self.seed)

    @property
    def needs_completions(self):
        """Whether some batches use the data's own completions."""
        return self.student_fraction + self.teacher_fraction < 1.0 - 1e-9

    def next_source(self):
        """`"student"`, `"teacher"` or `"data"`: who writes the next batch's completions (a seeded draw)."""
        draw = self._rng.random()
        if draw < self.student_fraction:
            return "student"
        if draw < self.student_fraction + self.teacher_fraction:
            return "teacher"
        return "data"

    def sampler(self):
        """A fresh KerasHub sampler with this policy's temperature, `top_p` and seed."""
        import keras_hub

        if self.top_p is None:
            return keras_hub.samplers.RandomSampler(temperature=self.temperature, seed=self.seed)
        return keras_hub.samplers.TopPSampler(p=self.top_p, temperature=self.temperature, seed=self.seed)

    def get_config(self):
        """The constructor's arguments (a `.keras` file stores them with the distiller)."""
        return {
            "student_fraction": self.student_fraction,
            "teacher_fraction": self.teacher_fraction,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        """An `OnPolicy` from `get_config()`'s dict."""
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"OnPolicy({arguments})"


def _fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} must be a number in [0, 1] (a probability per batch), got {value!r}. Pass e.g. {name}=0.5."
        )
    return float(value)
