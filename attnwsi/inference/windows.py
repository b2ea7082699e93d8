"""The sliding-window baseline's inference (the paper's section 4.2, after DeepSlide): class probabilities for
the windows of an image, and the rules that turn them into one label per image.

Each window of an image gets class probabilities from the crop classifier (`predict_windows`). A window is
*confident* for a class when that class is its top class and the top probability is above the class's
threshold. Two rules turn the confident windows of an image into its label:

- `deepslide`: the class with the largest share of the confident windows (DeepSlide's rule); on a tie the
  first tied class in class order, so an image with no confident window is normal (`classes[0]`);
- `highest_risk`: the highest-risk class (classes are in increasing risk) with at least `min_windows`
  confident windows; normal when no lesion class has that many.

The thresholds (one per class) and the rule are chosen on the validation split for the best mean F1.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from attnwsi.console import UserError
from attnwsi.metrics import table2_of_labels
from attnwsi.models.crop_classifier import CropClassifier

RULES = ("deepslide", "highest_risk")


def aggregation_file(ckpt_path: str | Path) -> Path:
    """Where a sliding-window checkpoint's aggregation is: `aggregation.json` beside the run's `checkpoints/`."""
    return Path(ckpt_path).resolve().parent.parent / "aggregation.json"


def read_aggregation(ckpt_path: str | Path) -> dict:
    """The aggregation a checkpoint's training run chose on validation (`aggregation_file`: {"rule",
    "thresholds", "min_windows", "windows": {crop_um, crop_px, stride_um, min_tissue}}); a sliding-window
    checkpoint is evaluated and used with it."""
    path = aggregation_file(ckpt_path)
    if not path.exists():
        raise UserError(f"{path}: not found; the sliding-window checkpoint {ckpt_path} is used with the "
                        "aggregation its training run chose: keep it in its run folder's checkpoints/, beside "
                        "that run's aggregation.json")
    return json.loads(path.read_text())


def predict_windows(model: CropClassifier, windows: Iterable[tuple[np.ndarray, torch.Tensor]],
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of every window of one image.

    `windows` yields (corners [n, 2], windows uint8 [n, 3, h, w]) in pieces (rows of windows); pieces are
    gathered until they hold at least `batch_size` windows, then classified together. Returns corners
    [N, 2] (int64) and probabilities [N, C] (float32).
    """
    corners = [np.zeros((0, 2), np.int64)]  # (empty starts, for an image without tissue windows)
    probs = [np.zeros((0, len(model.classes)), np.float32)]
    pending = []
    for xy, crops in windows:
        corners.append(xy)
        pending.append(crops)
        if sum(len(c) for c in pending) >= batch_size:
            probs.append(model.predict_proba(torch.cat(pending)).numpy())
            pending = []
    if pending:
        probs.append(model.predict_proba(torch.cat(pending)).numpy())
    return np.concatenate(corners), np.concatenate(probs)


# ----------------------------------------------------------------------------------------- aggregation


def confident_counts(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per class, the windows whose top class it is with a top probability above its threshold: [C]."""
    top, confidence = probs.argmax(1), probs.max(1)
    confident = confidence > thresholds[top]
    return np.bincount(top[confident], minlength=probs.shape[1])


def class_fractions(counts: np.ndarray) -> np.ndarray:
    """Each class's share of the confident windows (sums to 1; all 0 when no window is confident)."""
    total = counts.sum(-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros(counts.shape, float), where=total > 0)


def apply_rule(counts: np.ndarray, rule: str, min_windows: int | None = None) -> np.ndarray:
    """Image labels (class indices) from confident-window counts [..., C] by `rule` (module docstring)."""
    if rule == "deepslide":
        return class_fractions(counts).argmax(-1)  # argmax takes the first of tied classes
    if rule == "highest_risk":
        present = counts >= min_windows
        present[..., 0] = True  # normal is the fall-back
        return counts.shape[-1] - 1 - present[..., ::-1].argmax(-1)  # the last present class
    raise ValueError(f"unknown aggregation rule {rule!r}; choose one of {RULES}")


def search_aggregation(window_probs: list[np.ndarray], labels: np.ndarray, classes: list[str],
                       thresholds: list[float], min_windows: list[int]) -> dict:
    """The rule and per-class thresholds with the best mean F1 on these images (the validation split).

    Every combination of one threshold per class from `thresholds` is tried with both rules (the
    `highest_risk` rule also with every `min_windows`); the first best one in that order wins. Returns
    {"rule", "thresholds": {class: t}, "min_windows" (None for `deepslide`), "val_mean_f1"}.
    """
    grid = np.asarray(thresholds, float)
    # counts[i, c, k]: windows of image i confident for class c at threshold grid[k]
    counts = np.stack([np.stack([confident_counts(p, np.full(len(classes), t)) for t in grid], -1)
                       for p in window_probs])
    candidates = [("deepslide", None)] + [("highest_risk", k) for k in min_windows]
    best = {"val_mean_f1": -1.0}
    for choice in itertools.product(range(len(grid)), repeat=len(classes)):
        image_counts = counts[:, np.arange(len(classes)), choice]
        for rule, k in candidates:
            mean_f1 = table2_of_labels(labels, apply_rule(image_counts, rule, k), classes)["mean"]["f1"]
            if mean_f1 > best["val_mean_f1"]:
                best = {"rule": rule, "thresholds": {c: float(grid[j]) for c, j in zip(classes, choice)},
                        "min_windows": k, "val_mean_f1": mean_f1}
    return best


def aggregate(probs: np.ndarray, classes: list[str], rule: str, thresholds: dict[str, float],
              min_windows: int | None = None) -> tuple[int, np.ndarray]:
    """One image's label (class index) and its classes' shares of its confident windows."""
    counts = confident_counts(probs, np.array([thresholds[c] for c in classes]))
    return int(apply_rule(counts, rule, min_windows)), class_fractions(counts)
