"""Property-based tests (Hypothesis) of every loss in `keras_kd.losses`, on the active KERAS_BACKEND.

Running
-------
Two Hypothesis profiles are registered in `tests/conftest.py` and chosen by the environment
variable `HYPOTHESIS_PROFILE`:

* `ci` (the default): fixed small shapes, 8 examples per test and case, derandomized, so every
  run checks the same examples; under a minute per backend.
* `long`: 300 examples per test and case, of varied shapes (ranks, batch sizes, class counts, K,
  spatial sizes, widths), from a fresh random seed on every run. From the repository root:

      HYPOTHESIS_PROFILE=long KERAS_BACKEND=tensorflow .venv/bin/python -m pytest -p no:cacheprovider \
          tests/test_loss_properties.py -q

  and again with KERAS_BACKEND=jax and torch. It takes about half an hour per backend on a 2-core
  machine (longest under JAX, which compiles every operation again for each new shape); `-k` picks
  some losses (`-k "dkd or DKD"`) or properties (`-k reference`). A failure prints the smallest
  example Hypothesis found and a `@reproduce_failure` line that replays it.

Properties, and where each applies
----------------------------------
The cases are the `*_loss` functions, the per-position functions (`soft_target_kl`, `reverse_kl`,
`generalized_jsd`, `dkd`, `top_k_soft_target_kl`, `binary_soft_target_kl`), `soft_target_loss` of a
multi-teacher `mixture_logits`, and the `keras.losses.Loss` classes. The classes are checked against the
references (float32 and bfloat16), for finite values and for zero at equal inputs; the other
properties are checked on the functions they call.

1. Non-negative (all: KL divergences, squared errors, `1 - cos`, Huber), up to float32 rounding: a
   KL of two nearly equal distributions is a sum of terms of both signs, so its float32 value may
   be a few rounding units below 0 (the allowance of 6).
2. Zero when the student equals the teacher (all), with three caveats that the maths imposes:
   `top_k_soft_target_*` only at `T = 1` (at another `T` the teacher's tail bucket is rebuilt as if
   the tail were uniform, which a dense student need not match); the cosine loss gives 1, not 0,
   at an all-zero vector (it has no direction: its cosine is defined as 0); the mixture is zero
   when every teacher equals the student.
3. Finite for inputs of magnitude up to 1e4, in float32 and in bfloat16 (the value is float32
   either way), with finite gradients with respect to the student (through the `*_loss` functions).
4. Invariant to constants added to the logits, one per row (position) and independently for
   teacher and student, in float32: every softmax-based loss (soft targets, reverse KL,
   generalized JSD, DKD, top-k, the mixture, where each teacher gets its own constants). Not the binary
   (Bernoulli) losses, whose one logit per example is a log-odds, not a softmax's logits. Not the
   feature losses: the hint loss (MSE) changes when only one side moves (it is invariant only to a
   constant added to both sides), the cosine loss changes direction with a shift, attention
   transfer squares the activations, and the relational losses are invariant to translating all
   embeddings of one side but not to per-example shifts. Their own invariances are tested instead:
   hint to a common shift, cosine to positive per-position scales, attention transfer to non-zero
   per-example scales and channel permutations, RKD distance and angle to one positive scale and
   one translation per side.
5. Symmetric in teacher and student where the formula is: generalized JSD at `beta = 0.5`, hint,
   cosine, attention transfer (same shapes) and both RKD losses (Huber is even). Forward and reverse
   KL and DKD are not symmetric (KL is not), top-k summarises only the teacher; instead,
   `JSD(beta)(t, s) = JSD(1 - beta)(s, t)` and `reverse_kl(t, s) = soft_target_kl(s, t)` are tested.
6. Equal to a float64 NumPy reference within 1e-5 relative in float32, and within 1e-2 relative for
   bfloat16 inputs (the reference then takes the bfloat16-rounded values, so what is checked is the
   loss's arithmetic, not the rounding of its inputs). The references are the existing ones of
   `tests/test_losses_*.py` and `tests/test_multi_teacher.py`, imported. An absolute allowance is
   added for values near 0, where no relative bound can hold: for the softmax losses the absolute
   rounding error of float32 log-probabilities (`eps * (|z| / T + log V)`) times `T**2`, for the
   others a few float32 rounding units of their natural scale, and for the invariance tests the
   effect of rounding the moved inputs (large only for RKD on nearly coinciding examples).

Inputs are NumPy arrays from `hypothesis.extra.numpy`, converted with `keras.ops.convert_to_tensor`;
sample weights (drawn for every loss that takes them) are 0 or at least 2**-10. Features, maps and
embeddings have entries below 1e-3 in magnitude set to 0: the losses count vectors of norm at most
1e-12 as zero (documented), which the references, using `> 0`, do not.
"""

import dataclasses
import math
from collections.abc import Callable

import keras
import numpy as np
import pytest
from backend_grad import gradient
from conftest import HYPOTHESIS_PROFILE
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from keras import ops
from test_losses_attention import at_reference
from test_losses_binary import reference as binary_reference
from test_losses_binary import reference_values as binary_reference_values
from test_losses_dkd import reference as dkd_reference
from test_losses_dkd import reference_terms as dkd_reference_terms
from test_losses_features import cosine_reference, hint_reference
from test_losses_lm import log_softmax, ref_gjsd, ref_reverse_kl, weighted
from test_losses_logits import reference as soft_target_reference
from test_losses_relational import angle_reference, distance_reference
from test_losses_top_k import reference_loss as top_k_reference
from test_multi_teacher import kl as probability_kl
from test_multi_teacher import mixture as mixture_reference

from keras_kd.losses import (
    DKD,
    AttentionTransferLoss,
    CosineEmbeddingLoss,
    GeneralizedJSD,
    HintLoss,
    ReverseKL,
    RKDAngleLoss,
    RKDDistanceLoss,
    SoftTargetLoss,
    attention_transfer_loss,
    binary_soft_target_kl,
    binary_soft_target_loss,
    cosine_embedding_loss,
    dkd,
    dkd_loss,
    generalized_jsd,
    generalized_jsd_loss,
    hint_loss,
    mixture_logits,
    reverse_kl,
    reverse_kl_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    soft_target_kl,
    soft_target_loss,
    top_k_logits,
    top_k_soft_target_kl,
    top_k_soft_target_loss,
)

VARIED_SHAPES = HYPOTHESIS_PROFILE != "ci"
EPS = float(np.finfo(np.float32).eps)
SCALES = (1.0, 8.0, 32.0)  # magnitudes of the inputs in the reference tests (exact in float32)
LARGE = 1e4
TINY = 1e-3  # feature entries below this are set to 0 (see the module docstring)


@pytest.fixture(autouse=True)
def _seed():
    """Stands in for the suite's per-test fixture of the same name (tests/conftest.py) in this module: these
    tests build no layers or models and draw no random numbers from Keras, and its `clear_session()` runs a
    full `gc.collect()`, which with three frameworks loaded costs more than one of these tests."""
    yield


# --------------------------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Problem:
    """The inputs of one loss evaluation; each family of losses reads the fields it needs."""

    teacher: np.ndarray
    student: np.ndarray
    temperature: float = 1.0
    beta: float = 0.5  # generalized JSD
    labels: np.ndarray | None = None  # DKD
    alpha: float = 1.0  # DKD's TCKD weight
    nckd_weight: float = 8.0  # DKD's beta
    top_k: int = 1
    mixture_weights: tuple | None = None
    p: float = 2.0  # attention transfer
    sample_weight: np.ndarray | None = None

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @property
    def classes(self):
        return self.teacher.shape[-1]

    @property
    def magnitude(self):
        return float(max(np.abs(self.teacher).max(initial=0.0), np.abs(self.student).max(initial=0.0)))


def float_arrays(shape, scale, flush_tiny=False, unique=False):
    elements = st.floats(-scale, scale, width=32, allow_subnormal=False)
    strategy = arrays(np.float32, shape, elements=elements, unique=unique)
    if flush_tiny:
        strategy = strategy.map(lambda x: np.where(np.abs(x) < TINY, np.float32(0), x))
    return strategy


def temperatures():
    return st.one_of(st.sampled_from([1.0, 4.0]), st.floats(0.25, 20.0, allow_subnormal=False))


def sizes(low, high, fixed):
    return st.integers(low, high) if VARIED_SHAPES else st.just(fixed)


@st.composite
def leading_shapes(draw, fixed=(2, 3)):
    """Batch and position axes: fixed in the ci profile, one to three axes otherwise."""
    if not VARIED_SHAPES:
        return fixed
    return tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))


@st.composite
def map_shapes(draw, same_shape):
    """Channels-last feature maps whose spatial sizes are integer multiples of each other."""
    if not VARIED_SHAPES:
        return ((2, 4, 4, 3), (2, 4, 4, 3)) if same_shape else ((2, 4, 4, 3), (2, 2, 2, 5))
    batch = draw(st.integers(1, 3))
    teacher, student = [batch], [batch]
    for _ in range(draw(st.integers(1, 2))):
        base, factor = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        larger_teacher = draw(st.booleans())
        teacher.append(base * factor if larger_teacher else base)
        student.append(base if larger_teacher else base * factor)
    teacher.append(draw(st.integers(1, 5)))
    student.append(draw(st.integers(1, 5)))
    if same_shape:
        student = teacher
    return tuple(teacher), tuple(student)


@st.composite
def embedding_shapes(draw, same_shape):
    if not VARIED_SHAPES:
        return ((4, 3), (4, 3)) if same_shape else ((4, 3), (4, 5))
    batch = draw(st.integers(2, 6))

    def trailing():
        return draw(st.one_of(st.tuples(st.integers(1, 6)), st.tuples(st.integers(1, 3), st.integers(1, 3))))

    teacher = (batch, *trailing())
    return teacher, (teacher if same_shape else (batch, *trailing()))


@st.composite
def sample_weights(draw, shape):
    """None, or weights of `shape` (per example or per position)."""
    if not draw(st.booleans()):
        return None
    # 0 or at least 2**-10: the relational losses multiply two or three weights, which underflow float32
    # (silently dropping every pair) for weights near 1e-19; weights that small are not drawn.
    elements = st.one_of(st.just(0.0), st.floats(2.0**-10, 2.0, width=32))
    return draw(arrays(np.float32, shape, elements=elements))


@st.composite
def problems(draw, family, scale=None, same_shape=False):
    """A `Problem` for one family of losses; `scale=None` draws the magnitude from `SCALES`."""
    scale = draw(st.sampled_from(SCALES)) if scale is None else scale
    if family in ("logits", "dkd", "top_k"):
        leading = draw(leading_shapes())
        classes = draw(sizes(2, 30, 6))
        shape = (*leading, classes)
        # Distinct teacher logits for top-k: a tie at the K-th place makes the choice of classes arbitrary.
        teacher = draw(float_arrays(shape, scale, unique=family == "top_k"))
        student = draw(float_arrays(shape, scale))
        problem = Problem(teacher, student, temperature=draw(temperatures()))
        problem = problem.replace(sample_weight=draw(sample_weights(leading[: draw(st.integers(1, len(leading)))])))
        if family == "logits":
            beta = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0, allow_subnormal=False)))
            return problem.replace(beta=beta)
        if family == "dkd":
            weights = st.one_of(st.sampled_from([0.0, 1.0, 8.0]), st.floats(0.0, 10.0, allow_subnormal=False))
            labels = draw(arrays(np.int32, leading, elements=st.integers(0, classes - 1)))
            return problem.replace(labels=labels, alpha=draw(weights), nckd_weight=draw(weights))
        return problem.replace(top_k=draw(sizes(1, classes - 1, 2)))
    if family == "binary":
        shape = (*draw(leading_shapes()), 1)
        problem = Problem(draw(float_arrays(shape, scale)), draw(float_arrays(shape, scale)))
        problem = problem.replace(temperature=draw(temperatures()))
        return problem.replace(sample_weight=draw(sample_weights(shape[: draw(st.integers(1, len(shape) - 1))])))
    if family == "mixture":
        batch, teachers, classes = draw(sizes(1, 4, 3)), draw(sizes(1, 4, 2)), draw(sizes(2, 30, 6))
        teacher = draw(float_arrays((batch, teachers, classes), scale))
        student = draw(float_arrays((batch, classes), scale))
        raw = draw(st.one_of(st.none(), st.lists(st.floats(0.0, 1.0), min_size=teachers, max_size=teachers)))
        if raw is not None:
            assume(sum(raw) > 1e-3)
            raw = tuple(w / sum(raw) for w in raw)
        return Problem(
            teacher,
            student,
            temperature=draw(temperatures()),
            mixture_weights=raw,
            sample_weight=draw(sample_weights((batch,))),
        )
    if family == "features":
        shape = (*draw(leading_shapes()), draw(sizes(1, 16, 5)))
        teacher = draw(float_arrays(shape, scale, flush_tiny=True))
        student = draw(float_arrays(shape, scale, flush_tiny=True))
        weight_shape = shape[: draw(st.integers(1, len(shape) - 1))]
        return Problem(teacher, student, sample_weight=draw(sample_weights(weight_shape)))
    if family == "maps":
        t_shape, s_shape = draw(map_shapes(same_shape))
        teacher = draw(float_arrays(t_shape, scale, flush_tiny=True))
        student = draw(float_arrays(s_shape, scale, flush_tiny=True))
        return Problem(
            teacher,
            student,
            p=draw(st.sampled_from([1.0, 2.0, 3.0])),
            sample_weight=draw(sample_weights(t_shape[:1])),
        )
    assert family == "embeddings", family
    t_shape, s_shape = draw(embedding_shapes(same_shape))
    teacher = draw(float_arrays(t_shape, scale, flush_tiny=True))
    student = draw(float_arrays(s_shape, scale, flush_tiny=True))
    return Problem(teacher, student, sample_weight=draw(sample_weights(t_shape[:1])))


# --------------------------------------------------------------------------------------------- cases


def softmax_atol(problem, weight=1.0):
    """Absolute rounding allowance of a float32 `T**2 * KL`: float32 log-probabilities are off by
    about `eps * (|z| / T + log V)` each, a difference that a KL of nearly equal distributions
    cannot hide (its value is near 0), multiplied by `T**2`."""
    t = problem.temperature
    return 16 * EPS * weight * t**2 * (problem.magnitude / t + math.log(problem.classes) + 1.0)


def dkd_atol(problem):
    return softmax_atol(problem, 1.0 + problem.alpha + problem.nckd_weight)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    family: str
    compute: Callable  # (teacher tensor, student tensor, problem) -> tensor
    reference: Callable  # problem -> float64 array (scalar or per position)
    atol: Callable  # problem -> absolute allowance
    softmax: bool = False
    symmetric: bool = False
    invariance: Callable | None = None  # feature losses: (problem) -> strategy of an equivalent problem
    value_at_equal: Callable = lambda problem: 0.0  # the loss when the student equals the teacher


def sw(problem):
    return None if problem.sample_weight is None else ops.convert_to_tensor(problem.sample_weight)


def per_row(reference_loss, problem):
    """A per-position reference from one that averages: called position by position."""
    t = problem.teacher.reshape(-1, problem.classes)
    s = problem.student.reshape(-1, problem.classes)
    values = [reference_loss(problem.replace(teacher=t[i : i + 1], student=s[i : i + 1])) for i in range(len(t))]
    return np.asarray(values).reshape(problem.teacher.shape[:-1])


def mixture_reference_loss(problem):
    teachers = np.moveaxis(problem.teacher.astype(np.float64), 1, 0)
    weights = problem.mixture_weights or [1.0] * len(teachers)
    p = mixture_reference(teachers, weights, problem.temperature)
    t = problem.temperature
    values = t**2 * probability_kl(p, log_softmax(problem.student.astype(np.float64) / t))
    return weighted(values, problem.sample_weight)


def top_k_reference_loss(problem):
    return top_k_reference(problem.teacher, problem.student, problem.top_k, problem.temperature, problem.sample_weight)


def dkd_reference_values(problem):
    tckd, nckd = dkd_reference_terms(problem.teacher, problem.student, problem.labels, problem.temperature)
    return problem.alpha * tckd + problem.nckd_weight * nckd


def hint_atol(problem):
    """`t - s` of float32 inputs is rounded once, so the squares carry a relative error only; the invariance
    test's common shift rounds each input by `eps * |x|`, which moves `(t - s)**2` by about `4 eps |x| |t - s|`."""
    difference = float(np.abs(problem.teacher.astype(np.float64) - problem.student).max(initial=0.0))
    return 8 * EPS * problem.magnitude * (difference + EPS * problem.magnitude) + 16 * EPS


def unit_atol(problem):
    return 16 * EPS


def _relational_conditioning(x, weight=None):
    """`(mean distance over the weighted pairs, distances of the pairs i != j, max |x|, width)` in float64."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    pairs = ~np.eye(len(x), dtype=bool)
    distances = np.linalg.norm(x[:, None] - x[None, :], axis=-1)[pairs]
    w = np.ones(len(x)) if weight is None else np.asarray(weight, np.float64)
    pair_weight = (w[:, None] * w[None, :])[pairs]
    mean = (pair_weight * distances).sum() / pair_weight.sum() if pair_weight.sum() > 0 else 0.0
    return mean, distances, np.abs(x).max(), x.shape[1]


def distance_atol(problem):
    """The invariance test moves the inputs, which rounds each entry by about `eps * |x|`: a distance moves
    by up to `eps * |x| * sqrt(width)`, relative to the mean distance that normalises it."""
    allowance = 0.0
    for x in (problem.teacher, problem.student):
        mean, _, magnitude, width = _relational_conditioning(x, problem.sample_weight)
        if mean > 0:
            allowance = max(allowance, 16 * EPS * magnitude * math.sqrt(width) / mean)
    return 16 * EPS + allowance


def angle_atol(problem):
    """RKD angles use the unit vectors of `x_i - x_j`: a rounding of `eps * |x|` per entry turns the direction
    of a short difference by about `eps * |x| / d` (for the invariance test; a cosine moves by at most 2)."""
    allowance = 0.0
    for x in (problem.teacher, problem.student):
        _, distances, magnitude, width = _relational_conditioning(x)
        shortest = distances[distances > 0].min(initial=np.inf)
        allowance = max(allowance, min(2.0, 16 * EPS * magnitude * math.sqrt(width) / shortest))
    return 16 * EPS + allowance


@st.composite
def row_constants(draw, shape, bound):
    """Constants of shape `shape[:-1] + (1,)`: one per row, or the same one for every row."""
    rows = (*shape[:-1], 1)
    if draw(st.booleans()):
        return np.full(rows, draw(st.floats(-bound, bound, width=32)), np.float32)
    return draw(float_arrays(rows, bound))


def positive_scales(shape):
    return arrays(np.float32, shape, elements=st.floats(0.25, 8.0, width=32))


@st.composite
def common_shift(draw, problem):
    """Hint: the same constants added to both sides leave `t - s` unchanged (a shift of one side does not)."""
    constant = draw(row_constants(problem.teacher.shape, 32.0))
    return problem.replace(teacher=problem.teacher + constant, student=problem.student + constant)


@st.composite
def position_scales(draw, problem):
    """Cosine: positive scales, one per position and side, keep every direction."""
    t, s = problem.teacher, problem.student
    a, b = draw(positive_scales((*t.shape[:-1], 1))), draw(positive_scales((*s.shape[:-1], 1)))
    return problem.replace(teacher=t * a, student=s * b)


@st.composite
def example_scales_and_channel_order(draw, problem):
    """Attention transfer: a non-zero scale per example (|c x|**p = |c|**p |x|**p, then normalised) and any
    order of the channels (the map averages over them)."""
    t, s = problem.teacher, problem.student
    a = draw(positive_scales((len(t),) + (1,) * (t.ndim - 1))) * np.float32(draw(st.sampled_from([-1.0, 1.0])))
    permutation = np.asarray(draw(st.permutations(range(s.shape[-1]))))
    return problem.replace(teacher=t * a, student=s[..., permutation])


@st.composite
def scale_and_translation(draw, problem):
    """RKD: one positive scale and one translation per side keep the normalised distances and the angles."""
    t, s = problem.teacher, problem.student
    scale_t, scale_s = draw(positive_scales(())), draw(positive_scales(()))
    shift_t, shift_s = draw(float_arrays((1, *t.shape[1:]), 32.0)), draw(float_arrays((1, *s.shape[1:]), 32.0))
    return problem.replace(teacher=t * scale_t + shift_t, student=s * scale_s + shift_s)


def cosine_value_at_equal(problem):
    """An all-zero vector has cosine 0 by definition, so `1 - cos` is 1 there, even against itself."""
    zero = (problem.teacher == 0).all(axis=-1).astype(np.float64)
    if problem.sample_weight is None:
        return zero.mean()
    weight = problem.sample_weight.astype(np.float64)
    weight = np.broadcast_to(weight.reshape(weight.shape + (1,) * (zero.ndim - weight.ndim)), zero.shape)
    return (zero * weight).sum() / weight.sum() if weight.sum() else 0.0


def with_class(case, class_name, class_compute):
    """A loss function's case and its `keras.losses.Loss` class's: the same reference, tolerance and properties."""
    return [case, dataclasses.replace(case, name=class_name, compute=class_compute)]


CASES = [
    # ---- logits: forward KL, reverse KL, generalized JSD
    *with_class(
        Case(
            "soft_target_loss",
            "logits",
            lambda t, s, pr: soft_target_loss(t, s, pr.temperature, sw(pr)),
            lambda pr: soft_target_reference(pr.teacher, pr.student, pr.temperature, pr.sample_weight),
            softmax_atol,
            softmax=True,
        ),
        "SoftTargetLoss",
        lambda t, s, pr: SoftTargetLoss(temperature=pr.temperature)(t, s, sample_weight=sw(pr)),
    ),
    Case(
        "soft_target_kl",
        "logits",
        lambda t, s, pr: soft_target_kl(t, s, pr.temperature),
        lambda pr: ref_gjsd(pr.teacher, pr.student, 0.0, pr.temperature),
        softmax_atol,
        softmax=True,
    ),
    *with_class(
        Case(
            "reverse_kl_loss",
            "logits",
            lambda t, s, pr: reverse_kl_loss(t, s, pr.temperature, sw(pr)),
            lambda pr: weighted(ref_reverse_kl(pr.teacher, pr.student, pr.temperature), pr.sample_weight),
            softmax_atol,
            softmax=True,
        ),
        "ReverseKL",
        lambda t, s, pr: ReverseKL(temperature=pr.temperature)(t, s, sample_weight=sw(pr)),
    ),
    Case(
        "reverse_kl",
        "logits",
        lambda t, s, pr: reverse_kl(t, s, pr.temperature),
        lambda pr: ref_reverse_kl(pr.teacher, pr.student, pr.temperature),
        softmax_atol,
        softmax=True,
    ),
    *with_class(
        Case(
            "generalized_jsd_loss",
            "logits",
            lambda t, s, pr: generalized_jsd_loss(t, s, pr.beta, pr.temperature, sw(pr)),
            lambda pr: weighted(ref_gjsd(pr.teacher, pr.student, pr.beta, pr.temperature), pr.sample_weight),
            softmax_atol,
            softmax=True,
            symmetric=True,
        ),
        "GeneralizedJSD",
        lambda t, s, pr: GeneralizedJSD(beta=pr.beta, temperature=pr.temperature)(t, s, sample_weight=sw(pr)),
    ),
    Case(
        "generalized_jsd",
        "logits",
        lambda t, s, pr: generalized_jsd(t, s, pr.beta, pr.temperature),
        lambda pr: ref_gjsd(pr.teacher, pr.student, pr.beta, pr.temperature),
        softmax_atol,
        softmax=True,
        symmetric=True,
    ),
    # ---- DKD
    *with_class(
        Case(
            "dkd_loss",
            "dkd",
            lambda t, s, pr: dkd_loss(t, s, pr.labels, pr.alpha, pr.nckd_weight, pr.temperature, sw(pr)),
            lambda pr: dkd_reference(
                pr.teacher, pr.student, pr.labels, pr.alpha, pr.nckd_weight, pr.temperature, pr.sample_weight
            ),
            dkd_atol,
            softmax=True,
        ),
        "DKD",
        lambda t, s, pr: DKD(pr.alpha, pr.nckd_weight, pr.temperature)((pr.labels, t), s, sample_weight=sw(pr)),
    ),
    Case(
        "dkd",
        "dkd",
        lambda t, s, pr: dkd(t, s, pr.labels, pr.alpha, pr.nckd_weight, pr.temperature),
        dkd_reference_values,
        dkd_atol,
        softmax=True,
    ),
    # ---- several teachers: the student against the mixture of their tempered distributions
    Case(
        "soft_target_loss(mixture_logits)",
        "mixture",
        lambda t, s, pr: soft_target_loss(
            mixture_logits(t, pr.temperature, pr.mixture_weights), s, pr.temperature, sw(pr)
        ),
        mixture_reference_loss,
        softmax_atol,
        softmax=True,
    ),
    # ---- binary classifiers (one logit): the Bernoulli KL. Not invariant to constants (a shift moves sigmoid).
    Case(
        "binary_soft_target_loss",
        "binary",
        lambda t, s, pr: binary_soft_target_loss(t, s, pr.temperature, sw(pr)),
        lambda pr: binary_reference(pr.teacher, pr.student, pr.temperature, pr.sample_weight),
        softmax_atol,
    ),
    Case(
        "binary_soft_target_kl",
        "binary",
        lambda t, s, pr: binary_soft_target_kl(t, s, pr.temperature),
        lambda pr: binary_reference_values(pr.teacher, pr.student, pr.temperature),
        softmax_atol,
    ),
    # ---- top-k soft targets
    Case(
        "top_k_soft_target_loss",
        "top_k",
        lambda t, s, pr: top_k_soft_target_loss(top_k_logits(t, pr.top_k), s, pr.temperature, sw(pr)),
        top_k_reference_loss,
        softmax_atol,
        softmax=True,
    ),
    Case(
        "top_k_soft_target_kl",
        "top_k",
        lambda t, s, pr: top_k_soft_target_kl(top_k_logits(t, pr.top_k), s, pr.temperature),
        lambda pr: per_row(top_k_reference_loss, pr.replace(sample_weight=None)),
        softmax_atol,
        softmax=True,
    ),
    # ---- features
    *with_class(
        Case(
            "hint_loss",
            "features",
            lambda t, s, pr: hint_loss(t, s, sw(pr)),
            lambda pr: hint_reference(pr.teacher, pr.student, pr.sample_weight),
            hint_atol,
            symmetric=True,
            invariance=common_shift,
        ),
        "HintLoss",
        lambda t, s, pr: HintLoss()(t, s, sample_weight=sw(pr)),
    ),
    *with_class(
        Case(
            "cosine_embedding_loss",
            "features",
            lambda t, s, pr: cosine_embedding_loss(t, s, mask=sw(pr)),
            lambda pr: cosine_reference(pr.teacher, pr.student, pr.sample_weight),
            unit_atol,
            symmetric=True,
            invariance=position_scales,
            value_at_equal=cosine_value_at_equal,
        ),
        "CosineEmbeddingLoss",
        lambda t, s, pr: CosineEmbeddingLoss()(t, s, sample_weight=sw(pr)),
    ),
    # ---- attention transfer
    *with_class(
        Case(
            "attention_transfer_loss",
            "maps",
            lambda t, s, pr: attention_transfer_loss(t, s, pr.p, sw(pr)),
            lambda pr: at_reference(pr.teacher, pr.student, pr.p, pr.sample_weight),
            unit_atol,
            symmetric=True,
            invariance=example_scales_and_channel_order,
        ),
        "AttentionTransferLoss",
        lambda t, s, pr: AttentionTransferLoss(p=pr.p)(t, s, sample_weight=sw(pr)),
    ),
    # ---- relational
    *with_class(
        Case(
            "rkd_distance_loss",
            "embeddings",
            lambda t, s, pr: rkd_distance_loss(t, s, sw(pr)),
            lambda pr: distance_reference(pr.teacher, pr.student, pr.sample_weight),
            distance_atol,
            symmetric=True,
            invariance=scale_and_translation,
        ),
        "RKDDistanceLoss",
        lambda t, s, pr: RKDDistanceLoss()(t, s, sample_weight=sw(pr)),
    ),
    *with_class(
        Case(
            "rkd_angle_loss",
            "embeddings",
            lambda t, s, pr: rkd_angle_loss(t, s, sw(pr)),
            lambda pr: angle_reference(pr.teacher, pr.student, pr.sample_weight),
            angle_atol,
            symmetric=True,
            invariance=scale_and_translation,
        ),
        "RKDAngleLoss",
        lambda t, s, pr: RKDAngleLoss()(t, s, sample_weight=sw(pr)),
    ),
]


def cases(selected=None):
    chosen = [case for case in CASES if selected is None or selected(case)]
    return pytest.mark.parametrize("case", chosen, ids=[case.name for case in chosen])


def is_class(case):
    """The `keras.losses.Loss` classes: checked against the references (float32 and bfloat16), for finite
    values and for zero at equal inputs; the other properties are checked on the functions they call."""
    return case.name[0].isupper()


def is_loss_function(case):
    """The `*_loss` functions (the classes are capitalised, the per-position functions have no `_loss`)."""
    return case.name[0].islower() and "_loss" in case.name


def tensor(x, dtype="float32"):
    return ops.cast(ops.convert_to_tensor(x), dtype)


def evaluate(case, problem, dtype="float32"):
    """The loss on `problem` as a float64 array, after checking that it is float32 whatever `dtype`."""
    value = case.compute(tensor(problem.teacher, dtype), tensor(problem.student, dtype), problem)
    assert keras.backend.standardize_dtype(value.dtype) == "float32", case.name
    return np.asarray(ops.convert_to_numpy(value), np.float64)


def round_to_bfloat16(x):
    return ops.convert_to_numpy(ops.cast(ops.cast(ops.convert_to_tensor(x), "bfloat16"), "float32"))


def has_top_k_tie(problem):
    """Whether the K-th and (K+1)-th largest teacher logits are equal in some row."""
    ordered = -np.sort(-problem.teacher, axis=-1)
    return bool((ordered[..., problem.top_k - 1] == ordered[..., problem.top_k]).any())


def assert_close(actual, expected, rtol, atol, what=""):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# --------------------------------------------------------------------------------------------- reference


@cases()
@given(data=st.data())
def test_matches_float64_reference_in_float32(case, data):
    problem = data.draw(problems(case.family))
    assert_close(evaluate(case, problem), case.reference(problem), 1e-5, case.atol(problem), case.name)


@cases()
@given(data=st.data())
def test_matches_float64_reference_under_bfloat16_inputs(case, data):
    problem = data.draw(problems(case.family))
    problem = problem.replace(teacher=round_to_bfloat16(problem.teacher), student=round_to_bfloat16(problem.student))
    if case.family == "top_k":
        assume(not has_top_k_tie(problem))
    assert_close(evaluate(case, problem, "bfloat16"), case.reference(problem), 1e-2, case.atol(problem), case.name)


# --------------------------------------------------------------------------------------------- sign and zero


@cases(lambda case: not is_class(case))
@given(data=st.data())
def test_non_negative(case, data):
    problem = data.draw(problems(case.family))
    assert (evaluate(case, problem) >= -case.atol(problem)).all(), case.name


def equal_inputs(case, problem):
    """The problem with the student equal to the teacher (see the module docstring for the caveats)."""
    if case.family == "mixture":
        teachers = problem.teacher.shape[1]
        return problem.replace(teacher=np.repeat(problem.student[:, None, :], teachers, axis=1))
    if case.family == "top_k":
        problem = problem.replace(temperature=1.0)  # only at T = 1 is the teacher's tail bucket exact
    return problem.replace(student=problem.teacher)


@cases()
@given(data=st.data())
def test_zero_when_the_student_equals_the_teacher(case, data):
    problem = equal_inputs(case, data.draw(problems(case.family, same_shape=True)))
    assert_close(evaluate(case, problem), case.value_at_equal(problem), 0.0, case.atol(problem), case.name)


# --------------------------------------------------------------------------------------------- large and low precision


@cases()
@given(data=st.data())
def test_finite_for_inputs_up_to_1e4_in_float32_and_bfloat16(case, data):
    problem = data.draw(problems(case.family, scale=LARGE))
    for dtype in ("float32", "bfloat16"):
        value = evaluate(case, problem, dtype)
        assert np.isfinite(value).all(), (case.name, dtype)
        assert (value >= -case.atol(problem)).all(), (case.name, dtype)
    if not is_loss_function(case):
        return  # the classes and per-position functions share the `*_loss` functions' arithmetic and gradients
    teacher = tensor(problem.teacher)
    grad = gradient(lambda s: ops.sum(case.compute(teacher, s, problem)), problem.student)
    assert np.isfinite(grad).all(), case.name


# --------------------------------------------------------------------------------------------- invariances


@cases(lambda case: case.softmax and not is_class(case))
@given(data=st.data())
def test_softmax_losses_ignore_constants_added_to_logits(case, data):
    problem = data.draw(problems(case.family))
    bound = 4.0 * max(SCALES)
    shifted = problem.replace(
        teacher=problem.teacher + data.draw(row_constants(problem.teacher.shape, bound)),
        student=problem.student + data.draw(row_constants(problem.student.shape, bound)),
    )
    if case.family == "top_k":
        assume(not has_top_k_tie(shifted))
    assert_close(evaluate(case, shifted), evaluate(case, problem), 1e-5, case.atol(shifted), case.name)


@cases(lambda case: case.invariance is not None and not is_class(case))
@given(data=st.data())
def test_feature_losses_keep_their_own_invariances(case, data):
    problem = data.draw(problems(case.family))
    moved = data.draw(case.invariance(problem))
    assert_close(evaluate(case, moved), evaluate(case, problem), 1e-5, case.atol(moved), case.name)


@cases(lambda case: case.symmetric and not is_class(case))
@given(data=st.data())
def test_symmetric_in_teacher_and_student(case, data):
    problem = data.draw(problems(case.family, same_shape=True)).replace(beta=0.5)
    swapped = problem.replace(teacher=problem.student, student=problem.teacher)
    assert_close(evaluate(case, swapped), evaluate(case, problem), 1e-5, case.atol(problem), case.name)


DUALS = [
    (
        "generalized_jsd",
        lambda t, s, pr: generalized_jsd(t, s, pr.beta, pr.temperature),
        lambda t, s, pr: generalized_jsd(s, t, 1.0 - pr.beta, pr.temperature),
    ),
    (
        "reverse_kl",
        lambda t, s, pr: reverse_kl(t, s, pr.temperature),
        lambda t, s, pr: soft_target_kl(s, t, pr.temperature),
    ),
]


@pytest.mark.parametrize("name, loss, dual", DUALS, ids=[d[0] for d in DUALS])
@given(data=st.data())
def test_divergences_swap_into_their_duals(name, loss, dual, data):
    """`JSD(beta)(p || q) = JSD(1 - beta)(q || p)`, and reverse KL is forward KL with the roles swapped."""
    problem = data.draw(problems("logits"))
    # Only where 1 - beta is exact: the endpoints are definitions, not limits (`generalized_jsd_loss`), so a
    # beta of 1e-100, whose complement rounds to 1.0, is nearly 0 while its "dual" is the full reverse KL.
    assume(1.0 - (1.0 - problem.beta) == problem.beta)
    t, s = tensor(problem.teacher), tensor(problem.student)
    actual = np.asarray(ops.convert_to_numpy(loss(t, s, problem)), np.float64)
    expected = np.asarray(ops.convert_to_numpy(dual(t, s, problem)), np.float64)
    assert_close(actual, expected, 1e-5, softmax_atol(problem), name)
