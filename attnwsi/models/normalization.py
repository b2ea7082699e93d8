"""Normalization: the input's (inside the model, so that a checkpoint holds its own and tiles arrive as uint8)
and BatchNorm statistics estimated from data (for a trunk whose statistics describe nothing yet)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class InputNormalization(nn.Module):
    """uint8 (or 0..255 float) images [N, 3, h, w] -> (x / 255 - mean) / std, per channel (mean, std in 0..1).

    `mean` and `std` are buffers, saved with the model; `set_stats` replaces them by a data set's own
    statistics (`stats.json`: {"mean": [r, g, b], "std": [r, g, b]}).
    """

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def set_stats(self, stats: dict) -> None:
        self.mean.copy_(torch.tensor(stats["mean"]).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(stats["std"]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.mean) / self.std


@torch.no_grad()
def calibrate_batchnorm(module: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Estimate every BatchNorm's running statistics as the average over `module(batch)` of the batches, then
    leave the BatchNorms in eval mode (they then use those statistics). Nothing else of `module` changes mode.

    For a trunk trained from scratch: its initial statistics (mean 0, variance 1) normalize nothing.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all batches
        norm.train()
    for batch in batches:
        module(batch)
    for norm in norms:
        norm.momentum = 0.1
        norm.eval()
