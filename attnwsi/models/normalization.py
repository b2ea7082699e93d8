"""Input normalization inside the model, so that a checkpoint holds its own and tiles arrive as uint8."""

from __future__ import annotations

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
