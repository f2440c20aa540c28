"""`benchmarks/minilm_embeddings.py`'s metric functions against small hand-computed examples.

NumPy only: no model is loaded, so this runs in well under a second on any backend.
"""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import minilm_embeddings  # noqa: E402


def test_l2_normalize_and_mean_cosine():
    np.testing.assert_allclose(minilm_embeddings.l2_normalize([[3.0, 4.0], [0.0, 0.0]]), [[0.6, 0.8], [0.0, 0.0]])
    a = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[5.0, 0.0], [1.0, 0.0], [0.0, -3.0]])
    # Row by row: cos 1, cos 45 degrees, cos 90 degrees; the scale of a row does not matter.
    expected = (1.0 + np.sqrt(0.5) + 0.0) / 3
    assert minilm_embeddings.mean_cosine(a, b) == pytest.approx(expected)
    assert minilm_embeddings.mean_cosine(a, 7 * a) == pytest.approx(1.0)


def line_embeddings():
    """Five points on the unit circle at 0, 10, 25, 100 and 110 degrees (no ties), labels 0 0 1 1 1."""
    angles = np.radians([0.0, 10.0, 25.0, 100.0, 110.0])
    return np.stack([np.cos(angles), np.sin(angles)], axis=1), np.array([0, 0, 1, 1, 1])


def test_ranking_leaves_the_query_out():
    embeddings, _ = line_embeddings()
    order = minilm_embeddings.ranking(embeddings, embeddings, exclude_self=True)
    # Query at 0 degrees: 10, 25, 100, 110 degrees. Query at 100 degrees: 110, 25, 10, 0 degrees.
    assert order.tolist()[0] == [1, 2, 3, 4]
    assert order.tolist()[3] == [4, 2, 1, 0]
    assert order.shape == (5, 4)
    assert not (order == np.arange(5)[:, None]).any()


def test_retrieval_metrics_by_hand():
    embeddings, labels = line_embeddings()
    # Relevance of each query's ranking (same label), worked out from the angles:
    # q0 (0 deg, label 0): 10 25 100 110 -> 1 0 0 0   (1 relevant)
    # q1 (10, label 0):    0 25 100 110  -> 1 0 0 0
    # q2 (25, label 1):    10 0 100 110  -> 0 0 1 1   (2 relevant)
    # q3 (100, label 1):   110 25 10 0   -> 1 1 0 0
    # q4 (110, label 1):   100 25 10 0   -> 1 1 0 0
    rows = {
        0: [1, 0, 0, 0],
        1: [1, 0, 0, 0],
        2: [0, 0, 1, 1],
        3: [1, 1, 0, 0],
        4: [1, 1, 0, 0],
    }
    relevant = np.array([rows[i] for i in range(5)], bool)
    order = minilm_embeddings.ranking(embeddings, embeddings, exclude_self=True)
    np.testing.assert_array_equal(labels[order] == labels[:, None], relevant)

    k = 2
    metrics = minilm_embeddings.retrieval_metrics(embeddings, labels, k=k)
    # recall@2: q0 1/1, q1 1/1, q2 0/2, q3 2/2, q4 2/2.
    assert metrics["recall_at_k"] == pytest.approx((1 + 1 + 0 + 1 + 1) / 5)
    # precision@2: q0 1/2, q1 1/2, q2 0/2, q3 2/2, q4 2/2.
    assert metrics["precision_at_k"] == pytest.approx((0.5 + 0.5 + 0 + 1 + 1) / 5)
    # Average precision: q0, q1 1; q2 (1/3 + 2/4) / 2; q3, q4 (1/1 + 2/2) / 2 = 1.
    assert metrics["map"] == pytest.approx((1 + 1 + (1 / 3 + 2 / 4) / 2 + 1 + 1) / 5)
    assert metrics["queries"] == 5
    assert metrics["mean_relevant"] == pytest.approx((1 + 1 + 2 + 2 + 2) / 5)
    # A perfect ranking finds every relevant item in the top 2 here (at most 2 per query).
    assert metrics["max_recall_at_k"] == pytest.approx(1.0)
    # With k=1 it finds one: 1/1, 1/1, 1/2, 1/2, 1/2.
    assert minilm_embeddings.retrieval_metrics(embeddings, labels, k=1)["max_recall_at_k"] == pytest.approx(0.7)


def test_retrieval_skips_queries_without_relevant_items():
    embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1])  # the label-1 article has nothing relevant: left out of the means
    metrics = minilm_embeddings.retrieval_metrics(embeddings, labels, k=1)
    assert metrics["queries"] == 2
    assert metrics["recall_at_k"] == pytest.approx(1.0)
    assert metrics["precision_at_k"] == pytest.approx(1.0)
    assert metrics["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no query"):
        minilm_embeddings.retrieval_metrics(embeddings, [0, 1, 2], k=1)


def test_map_of_a_worst_ranking():
    # One query whose two relevant items come last among four: AP = (1/3 + 2/4) / 2.
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [-1.0, 0.2], [-1.0, 0.1]])
    labels = np.array([0, 1, 1, 0, 0])
    order = minilm_embeddings.ranking(embeddings, embeddings, exclude_self=True)
    assert order[0].tolist() == [2, 1, 3, 4]
    average_precision_0 = (1 / 3 + 2 / 4) / 2
    metrics = minilm_embeddings.retrieval_metrics(embeddings, labels, k=4)
    # recall@4 is 1 for every query (all other items are in the top 4).
    assert metrics["recall_at_k"] == pytest.approx(1.0)
    relevant = labels[order] == labels[:, None]
    precision = np.cumsum(relevant, 1) / np.arange(1, 5)
    by_numpy = ((precision * relevant).sum(1) / relevant.sum(1)).mean()
    assert metrics["map"] == pytest.approx(by_numpy)
    assert ((precision * relevant).sum(1) / relevant.sum(1))[0] == pytest.approx(average_precision_0)


def test_knn_vote_and_accuracy():
    angles = np.radians([0.0, 5.0, 10.0, 90.0, 95.0, 180.0])
    train = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    train_labels = np.array([0, 0, 1, 1, 1, 2])
    test = np.array([[1.0, 0.02], [0.0, 1.0], [-1.0, 0.0]])
    # k=3 neighbours: test 0 -> train 0, 1, 2 (labels 0 0 1: vote 0); test 1 -> 3, 4, 2 (1 1 1: 1);
    # test 2 -> 5, 4, 3 (2 1 1: 1).
    predictions = minilm_embeddings.knn_predict(train, train_labels, test, k=3)
    assert predictions.tolist() == [0, 1, 1]
    assert minilm_embeddings.knn_accuracy(train, train_labels, test, [0, 1, 2], k=3) == pytest.approx(2 / 3)
    # k=1 is the nearest neighbour's label.
    assert minilm_embeddings.knn_predict(train, train_labels, test, k=1).tolist() == [0, 1, 2]


def test_knn_tie_goes_to_the_nearest_label():
    train = np.array([[1.0, 0.0], [0.9, 0.5], [0.5, 0.9], [0.0, 1.0]])
    # Neighbours of [1, 0.1] by cosine: 0, 1, 2, 3 with labels 7 3 3 7 -> a 2-2 tie at k=4; label 7 is nearest.
    assert minilm_embeddings.knn_predict(train, [7, 3, 3, 7], np.array([[1.0, 0.1]]), k=4).tolist() == [7]
    assert minilm_embeddings.knn_predict(train, [3, 7, 7, 3], np.array([[1.0, 0.1]]), k=4).tolist() == [3]


def test_mean_and_spread_and_cells():
    assert minilm_embeddings.mean_and_spread([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert minilm_embeddings.mean_and_spread([0.5]) == (0.5, 0.0)
    assert minilm_embeddings.format_cell([0.9, 0.92, 0.94], 2, percent=True) == "92.00 ± 2.00 %"
    assert minilm_embeddings.format_cell([0.12346], 4) == "0.1235"


def fake_record(seed, accuracy_offset=0.0):
    """A record shaped like `main`'s, for one seed, with made-up numbers."""
    metrics = {"cosine_to_teacher": 0.8, "recall_at_k": 0.05, "max_recall_at_k": 0.056, "precision_at_k": 0.9}
    metrics.update(map=0.8, queries=445, mean_relevant=89.0, knn_accuracy=0.95)
    config = {"seeds": [seed], "k": 5, "student_layers": [2], "classify_layers": [2], "general_epochs": 3}
    config.update(sequence_length=64, general_lr=2e-4, batch_size=32, speed_rounds=7, task_epochs=2, task_lr=1e-4)
    config.update(temperature=2.0, alpha=0.5, teacher_epochs=2, teacher_lr=1e-4, relational=False, task_cosine=False)
    general = dict(metrics, cosine_to_teacher=0.9 + seed / 100, history={"loss": [1.0, 0.5]})
    return {
        "config": config,
        "backend": "torch",
        "articles": {"train": 1780, "held_out": 445, "classes": ["a", "b", "c", "d", "e"]},
        "parameters": {"teacher": 22_700_000, "students": {"2": 15_600_000}},
        "speed": {"2": {"median_speedup": 3.0}},
        "embeddings": {"teacher": dict(metrics, cosine_to_teacher=1.0), "copied_2": metrics},
        "teacher_classifier": {"accuracy": 0.97},
        "runs": [
            {
                "seed": seed,
                "general": {"2": general},
                "classify": {"2": {"scratch": 0.9, "task_kd": 0.92 + accuracy_offset, "general_task_kd": 0.93}},
                "timings_s": {"general_2": 100.0 + seed},
            }
        ],
        "timings_s": {"load_teacher": 3.0, "total_s": 1000.0},
    }


def test_merge_and_report():
    merged = minilm_embeddings.merge_records([fake_record(0), fake_record(1, accuracy_offset=0.02)])
    assert merged["config"]["seeds"] == [0, 1]
    assert [run["seed"] for run in merged["runs"]] == [0, 1]
    assert merged["timings_s"]["total_s"] == 2000.0
    text = minilm_embeddings.report(merged)
    assert "| student, general distillation (3 epochs) | 2 | 15.6 M | 3.00x | 0.9050 ± 0.0071 |" in text
    assert "| student, task KD | 2 | 93.00 ± 1.41 % | 92.00 94.00 |" in text
    assert "a perfect ranking has recall@5 0.0560" in text
    summary = minilm_embeddings.summary(merged)
    assert summary["classify"]["2"]["scratch"] == pytest.approx((0.9, 0.0))
    with pytest.raises(SystemExit, match="differ in"):
        other = fake_record(2)
        other["config"]["general_epochs"] = 1
        minilm_embeddings.merge_records([fake_record(0), other])
