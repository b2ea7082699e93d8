"""The sliding-window baseline (the paper's section 4.2, after DeepSlide): a crop classifier and the rules
that turn its window predictions into one label per image.

Each window of an image gets class probabilities from the crop classifier. A window is *confident* for a
class when that class is its top class and the top probability is above the class's threshold. Two rules
turn the confident windows of an image into its label:

- `deepslide`: the class with the largest share of the confident windows (DeepSlide's rule); on a tie the
  first tied class in class order, so an image with no confident window is normal (`classes[0]`);
- `highest_risk`: the highest-risk class (classes are in increasing risk) with at least `min_windows`
  confident windows; normal when no lesion class has that many.

The thresholds (one per class) and the rule are chosen on the validation split for the best mean F1.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from attnwsi.metrics import table2_of_labels
from attnwsi.models.extractor import _torchvision_weights_file

RULES = ("deepslide", "highest_risk")


class CropClassifier(L.LightningModule):
    """torchvision ResNet-18 on crops, trained with cross-entropy on the crops' lesion classes.

    Without ImageNet weights the network has torchvision's initialization, which is the paper's: He
    (Kaiming) normal for convolutions, unit weight and zero bias for BatchNorm. `pretrained` loads the
    ImageNet weights from a local file (nothing is downloaded). Adam with weight decay; the learning rate
    decays by `lr_decay` after each epoch (DeepSlide's defaults: 1e-3, 1e-4, 0.95). Crops arrive as uint8
    and are normalized inside the model by `mean`, `std` (0..1), replaced by the data set's own pixel
    statistics at the start of training when `dataset_normalization`, so a checkpoint is self-contained.
    """

    def __init__(self, classes: list[str], crop_um: float, crop_px: int, pretrained: bool = False,
                 weights_path: str | None = None, mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 std: tuple[float, float, float] = (0.5, 0.5, 0.5), dataset_normalization: bool = True,
                 lr: float = 1e-3, weight_decay: float = 1e-4, lr_decay: float = 0.95):
        super().__init__()
        self.save_hyperparameters()
        self.classes = list(classes)
        self.net = torchvision.models.resnet18(weights=None)
        if pretrained:
            state = torch.load(_torchvision_weights_file("resnet18", weights_path), map_location="cpu")
            self.net.load_state_dict(state)
        self.net.fc = nn.Linear(self.net.fc.in_features, len(classes))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        # ModuleDict keys may not shadow nn.Module attributes such as `train`
        self.accuracy = nn.ModuleDict({f"{split}_acc": MulticlassAccuracy(len(classes), average="micro")
                                       for split in ("train", "val")})

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops [B, 3, h, w] -> class logits [B, C]."""
        return self.net((crops.float() / 255.0 - self.mean) / self.std)

    @torch.inference_mode()
    def predict_proba(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops [B, 3, h, w] -> class probabilities [B, C] (on the CPU), in evaluation mode."""
        self.eval()
        return self(crops.to(self.device)).float().softmax(1).cpu()

    def on_fit_start(self) -> None:
        stats = getattr(getattr(self.trainer, "datamodule", None), "pixel_stats", None)
        if self.hparams.dataset_normalization and stats:
            self.mean.copy_(torch.tensor(stats["mean"]).view(1, 3, 1, 1))
            self.std.copy_(torch.tensor(stats["std"]).view(1, 3, 1, 1))

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        crops, labels = batch
        logits = self(crops)
        loss = F.cross_entropy(logits, labels)
        accuracy = self.accuracy[f"{split}_acc"]
        accuracy(logits.argmax(1), labels)
        self.log(f"{split}/loss", loss, on_step=split == "train", on_epoch=True, prog_bar=True)
        self.log(f"{split}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=hp.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


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
