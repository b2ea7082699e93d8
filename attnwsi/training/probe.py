"""Does a trunk see the lesions? A linear probe of tile features against the annotated lesion classes.

A multinomial logistic regression (class-balanced, L2-regularized, fitted with L-BFGS on standardized
features) learns a tile's lesion class from its features on the training tiles and is scored by balanced
accuracy (the mean of the per-class recalls: chance is 1 / classes, whatever the imbalance) on the
validation tiles. The same probe is run on the pretrained trunk, a randomly initialized trunk of the same
architecture (BatchNorm statistics estimated on the tiles, as training from scratch does) and 12 plain pixel
statistics per tile (per channel: mean, standard deviation, 10th and 90th percentile), so a user sees whether
pretraining helped before training on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnwsi.models.normalization import InputNormalization, calibrate_batchnorm


def pixel_statistics(tiles: torch.Tensor) -> torch.Tensor:
    """[N, 12]: per channel the mean, standard deviation, 10th and 90th percentile of uint8 tiles [N, 3, h, w]."""
    pixels = tiles.float().flatten(2) / 255.0
    quantiles = torch.quantile(pixels, torch.tensor([0.1, 0.9]), dim=2).permute(1, 0, 2).flatten(1)
    return torch.cat([pixels.mean(2), pixels.std(2), quantiles], dim=1)


def calibrated(backbone: nn.Module, normalization: InputNormalization, tiles: torch.Tensor,
               batch_size: int = 512) -> nn.Module:
    """The backbone with its BatchNorm statistics estimated on the tiles (as training from scratch does)."""
    calibrate_batchnorm(backbone, (normalization(chunk) for chunk in tiles.split(batch_size)))
    return backbone


@torch.no_grad()
def trunk_features(backbone: nn.Module, normalization: InputNormalization, tiles: torch.Tensor,
                   batch_size: int = 512) -> torch.Tensor:
    """Pooled features [N, C] of uint8 tiles, the backbone in eval mode."""
    backbone.eval()
    return torch.cat([backbone(normalization(chunk)) for chunk in tiles.split(batch_size)])


def balanced_accuracy(labels: torch.Tensor, predicted: torch.Tensor, n_classes: int) -> float:
    recalls = [(predicted[labels == c] == c).float().mean() for c in range(n_classes) if (labels == c).any()]
    return float(torch.stack(recalls).mean())


def probe_logits(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                 n_classes: int, l2: float = 1e-3, iterations: int = 200) -> torch.Tensor:
    """Class logits [N_val, n_classes] of the validation tiles from a class-balanced logistic regression fitted
    on the training tiles (standardized features, L2-regularized, L-BFGS)."""
    mean, std = train_features.mean(0), train_features.std(0).clamp(min=1e-6)
    x_train, x_val = (train_features - mean) / std, (val_features - mean) / std
    counts = torch.bincount(train_labels, minlength=n_classes).float()
    weights = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    linear = nn.Linear(x_train.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x_train), train_labels, weight=weights) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return linear(x_val)


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                 val_labels: torch.Tensor, n_classes: int, l2: float = 1e-3, iterations: int = 200) -> float:
    """Balanced accuracy on the validation tiles of a class-balanced logistic regression fitted on the training
    tiles (`probe_logits`)."""
    logits = probe_logits(train_features, train_labels, val_features, n_classes, l2, iterations)
    return balanced_accuracy(val_labels, logits.argmax(1), n_classes)
