"""The paper's Table 2 metrics from a confusion matrix, on torchmetrics (so they sync across processes).

Per class, one-vs-rest: accuracy (TP + TN) / N, recall TP / (TP + FN), precision TP / (TP + FP),
F1 = 2 PR / (P + R); "mean" is the unweighted mean over classes. A ratio with nothing to count is 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

METRICS = ("accuracy", "recall", "precision", "f1")


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den is 0 (den may be a count or a sum of ratios, such as P + R below 1)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def table2(confusion: torch.Tensor, classes: list[str]) -> dict:
    """confusion[true, predicted] -> {"per_class": {cls: {metric: v}}, "mean": {metric: v}, "n": N}."""
    confusion = confusion.double()
    n = confusion.sum()
    tp = confusion.diag()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    tn = n - tp - fp - fn
    recall, precision = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    values = {
        "accuracy": _ratio(tp + tn, n.expand_as(tp)),
        "recall": recall,
        "precision": precision,
        "f1": _ratio(2 * precision * recall, precision + recall),
    }
    return {
        "per_class": {c: {m: float(values[m][i]) for m in METRICS} for i, c in enumerate(classes)},
        "mean": {m: float(values[m].mean()) for m in METRICS},
        "n": int(n),
        "confusion_matrix": confusion.long().tolist(),
    }


def table2_of_labels(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """The Table 2 dictionary of `table2` from image labels vs predictions (class indices)."""
    n = len(classes)
    confusion = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    return table2(torch.from_numpy(confusion), classes)


def class_indices(predictions, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) as class indices from a predictions table's `label` and `prediction` columns."""
    index = {c: i for i, c in enumerate(classes)}
    return tuple(predictions[column].map(index).to_numpy() for column in ("label", "prediction"))


def table2_of_predictions(predictions, classes: list[str]) -> dict:
    """The Table 2 dictionary of a predictions table (a DataFrame with `label` and `prediction` columns)."""
    return table2_of_labels(*class_indices(predictions, classes), classes)


class Table2Metrics(MulticlassConfusionMatrix):
    """A confusion matrix whose `compute` gives the Table 2 dictionary of `table2`."""

    def __init__(self, classes: list[str], **kwargs):
        super().__init__(num_classes=len(classes), **kwargs)
        self.classes = list(classes)

    def compute(self) -> dict:
        return table2(super().compute(), self.classes)


def flat_metrics(results: dict, prefix: str) -> dict[str, float]:
    """{prefix/f1_mean: ..., prefix/f1/<class>: ...} for loggers."""
    flat = {f"{prefix}/{m}_mean": v for m, v in results["mean"].items()}
    for cls, values in results["per_class"].items():
        flat.update({f"{prefix}/{m}/{cls}": v for m, v in values.items()})
    return flat


def format_table2(results: dict, title: str = "") -> str:
    """A markdown table like the paper's Table 2: one row per class and the mean, one column per metric."""
    lines = [f"{title} (n = {results['n']})", "", "| class | " + " | ".join(METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for cls, values in [*results["per_class"].items(), ("**mean**", results["mean"])]:
        lines.append(f"| {cls} | " + " | ".join(f"{values[m]:.2f}" for m in METRICS) + " |")
    return "\n".join(lines)
