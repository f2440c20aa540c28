"""How a teacher rates the completions a student writes itself: what on-policy distillation optimises, measured."""

import contextlib

import numpy as np

from keras_kd.on_policy.checks import check_causal_lm_pair
from keras_kd.on_policy.config import OnPolicy
from keras_kd.on_policy.sequences import PromptTokenizer, training_batch
from keras_kd.on_policy.writer import CompletionWriter


def score_completions(
    student, teacher, prompts, max_new_tokens=32, greedy=False, temperature=1.0, top_p=None, seed=None, batch_size=8
):
    """The student completes `prompts` itself; the teacher scores every completion token.

    The student writes at most `max_new_tokens` tokens per prompt with KerasHub's compiled `generate`
    (greedy, or sampled at `temperature` with optional `top_p`, as `keras_kd.OnPolicy` samples during
    training), stopping at its tokenizer's end token. Over the completion tokens `y_t` (the end token
    included), with `p_s`, `p_t` the student's and the teacher's next-token distributions at
    temperature 1 over the whole vocabulary:

    - `reverse_kl = mean_t KL(p_s(. | y_<t) || p_t(. | y_<t))`: the per-token divergence that on-policy
      distillation with `soft_loss="reverse_kl"` minimises, on the student's own text;
    - `teacher_nll = mean_t -log p_t(y_t | y_<t)`: how likely the teacher finds the student's tokens;
    - `student_nll = mean_t -log p_s(y_t | y_<t)`.

    Args:
        student: a KerasHub `CausalLM` whose preprocessor tokenizes the prompts (as in `fit` with
            `on_policy`).
        teacher: a KerasHub `CausalLM` with the student's vocabulary.
        prompts: a list of strings.
        max_new_tokens: the completion's length at most, in tokens.
        greedy: complete with the most likely token instead of sampling.
        temperature: the sampler's temperature (ignored when `greedy`).
        top_p: nucleus sampling's probability mass, or None (ignored when `greedy`).
        seed: seeds the sampler (ignored when `greedy`).
        batch_size: prompts per `generate` call. Prompts of similar length batched together waste
            fewer generated slots: every row runs to the batch's longest prompt plus `max_new_tokens`.

    Returns:
        A dict: `reverse_kl`, `teacher_nll`, `student_nll` (floats, nats per token), `completion_length`
        (mean tokens per prompt, end token included), `tokens` (completion tokens scored) and
        `completions` (each prompt's completion as text, end token left out).

    Example:

    >>> import keras_hub, keras_kd
    >>> vocabulary = {"<|endoftext|>": 0, "a": 1, "b": 2, "\u0120": 3, "\u0120a": 4, "\u0120b": 5}
    >>> tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["\u0120 a", "\u0120 b"])
    >>> def causal_lm(num_layers):
    ...     backbone = keras_hub.models.GPT2Backbone(
    ...         vocabulary_size=6, num_layers=num_layers, num_heads=1, hidden_dim=8, intermediate_dim=16,
    ...         max_sequence_length=16)
    ...     preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=12)
    ...     return keras_hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)
    >>> teacher, student = causal_lm(2), causal_lm(1)
    >>> scores = keras_kd.on_policy.score_completions(student, teacher, ["a b", "b a a"], max_new_tokens=4, seed=0)
    >>> sorted(scores)
    ['completion_length', 'completions', 'reverse_kl', 'student_nll', 'teacher_nll', 'tokens']
    >>> scores["reverse_kl"] >= 0, 0 < scores["completion_length"] <= 4, len(scores["completions"])
    (True, True, 2)
    """
    policy = OnPolicy(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    check_causal_lm_pair(teacher, student, policy.max_new_tokens, "score_completions")
    vocabularies = {"teacher": teacher.backbone.vocabulary_size, "student": student.backbone.vocabulary_size}
    if vocabularies["teacher"] != vocabularies["student"]:
        raise ValueError(
            f"score_completions compares next-token distributions, but the teacher has a vocabulary of "
            f"{vocabularies['teacher']} tokens and the student one of {vocabularies['student']}. Build the student "
            "with the teacher's tokenizer (keras_kd.hub.student_from_teacher)."
        )
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts) or not len(prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {type(prompts).__name__}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")

    import keras_hub

    tokenizer = PromptTokenizer(student, policy.max_new_tokens)
    sampler = keras_hub.samplers.GreedySampler() if greedy else policy.sampler()
    writer = CompletionWriter(student, sampler, policy.max_new_tokens, tokenizer.stop_token_ids)
    sums = {"reverse_kl": 0.0, "teacher_nll": 0.0, "student_nll": 0.0, "tokens": 0.0}
    completions = []
    with writer.installed():
        for start in range(0, len(prompts), batch_size):
            sequences, completion = writer(tokenizer.prompts(prompts[start : start + batch_size]))
            x, y, weights = training_batch(sequences, completion)
            batch = token_scores(_logits(student, x), _logits(teacher, x), y, weights)
            for key in sums:
                sums[key] += batch[key]
            completions.extend(_texts(tokenizer, sequences["token_ids"], completion))
    tokens = sums.pop("tokens")
    scores = {key: value / tokens for key, value in sums.items()}
    return {**scores, "completion_length": tokens / len(prompts), "tokens": int(tokens), "completions": completions}


def token_scores(student_logits, teacher_logits, labels, weights):
    """Sums over the weighted positions: `reverse_kl`, `teacher_nll`, `student_nll` and `tokens` (the weights' sum).

    Logits `(batch, positions, vocabulary)`, labels and weights `(batch, positions)`; float64 sums of
    float32 log-softmaxes.
    """
    weights = np.asarray(weights, "float64")
    log_s, log_t = _log_softmax(student_logits), _log_softmax(teacher_logits)
    kl = np.sum(np.exp(log_s) * (log_s - log_t), axis=-1, dtype="float64")
    labels = np.asarray(labels, "int64")[..., None]
    teacher_nll = -np.take_along_axis(log_t, labels, axis=-1)[..., 0]
    student_nll = -np.take_along_axis(log_s, labels, axis=-1)[..., 0]
    return {
        "reverse_kl": float(np.sum(kl * weights)),
        "teacher_nll": float(np.sum(teacher_nll * weights)),
        "student_nll": float(np.sum(student_nll * weights)),
        "tokens": float(weights.sum()),
    }


def _log_softmax(logits):
    logits = np.asarray(logits, "float32")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


@contextlib.contextmanager
def _without_preprocessor(model):
    preprocessor = model.preprocessor
    model.preprocessor = None
    try:
        yield model
    finally:
        model.preprocessor = preprocessor


def _logits(model, x):
    # predict_on_batch runs the compiled predict step, without autograd on PyTorch; the inputs are token ids.
    with _without_preprocessor(model):
        return np.asarray(model.predict_on_batch(x))


def _texts(tokenizer, token_ids, completion):
    stops = set(tokenizer.stop_token_ids)
    rows = [[int(i) for i in ids[marks] if int(i) not in stops] for ids, marks in zip(token_ids, completion)]
    texts = []
    for row in rows:
        text = tokenizer.tokenizer.detokenize([row])[0] if row else ""
        text = np.asarray(text).item() if not isinstance(text, str) else text
        texts.append(text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text))
    return texts
