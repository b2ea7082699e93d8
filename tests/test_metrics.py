"""Table 2 metrics (one-vs-rest accuracy, recall, precision, F1 and their unweighted means)."""

import pytest
import torch

from attnwsi.metrics import Table2Metrics, table2

CLASSES = ["a", "b", "c"]
# rows: true class, columns: predicted class
CONFUSION = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 4]])


def test_table2_against_a_hand_computed_confusion_matrix():
    r = table2(CONFUSION, CLASSES)
    n = 16
    # class a: TP 5, FP 2, FN 1, TN 8
    assert r["per_class"]["a"]["accuracy"] == pytest.approx((5 + 8) / n)
    assert r["per_class"]["a"]["recall"] == pytest.approx(5 / 6)
    assert r["per_class"]["a"]["precision"] == pytest.approx(5 / 7)
    assert r["per_class"]["a"]["f1"] == pytest.approx(2 * 5 / (2 * 5 + 2 + 1))
    # class b: TP 3, FP 1, FN 3, TN 9
    assert r["per_class"]["b"]["accuracy"] == pytest.approx(12 / n)
    assert r["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert r["per_class"]["b"]["precision"] == pytest.approx(0.75)
    assert r["per_class"]["b"]["f1"] == pytest.approx(0.6)
    # class c: TP 4, FP 1, FN 0, TN 11
    assert r["per_class"]["c"]["accuracy"] == pytest.approx(15 / n)
    assert r["per_class"]["c"]["f1"] == pytest.approx(8 / 9)
    for m in ("accuracy", "recall", "precision", "f1"):
        assert r["mean"][m] == pytest.approx(sum(r["per_class"][c][m] for c in CLASSES) / 3)
    assert r["n"] == n


def test_a_class_never_predicted_scores_zero_not_nan():
    r = table2(torch.tensor([[2, 0], [1, 0]]), ["x", "y"])
    assert r["per_class"]["y"]["precision"] == 0.0
    assert r["per_class"]["y"]["f1"] == 0.0


def test_metric_accumulates_batches_like_the_confusion_matrix():
    metric = Table2Metrics(CLASSES)
    targets = torch.repeat_interleave(torch.arange(3), CONFUSION.sum(1))
    preds = torch.cat([torch.repeat_interleave(torch.arange(3), row) for row in CONFUSION])
    for p, t in zip(preds.split(5), targets.split(5)):
        metric.update(p, t)
    assert metric.compute() == table2(CONFUSION, CLASSES)


def test_f1_is_the_harmonic_mean_also_when_precision_plus_recall_is_below_one():
    # class a: TP 1, FN 3, FP 3 -> recall 1/4, precision 1/4, F1 1/4 (2PR would give 1/8)
    r = table2(torch.tensor([[1, 3, 0], [3, 4, 0], [0, 0, 5]]), CLASSES)
    assert r["per_class"]["a"]["recall"] == pytest.approx(0.25)
    assert r["per_class"]["a"]["precision"] == pytest.approx(0.25)
    assert r["per_class"]["a"]["f1"] == pytest.approx(0.25)
