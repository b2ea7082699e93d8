"""The grid-attention head (the paper's section 3.2) and a mean-pooling ablation."""

from __future__ import annotations

import torch
from torch import nn


class GridAttention(nn.Module):
    """m attention maps over the feature grid, m attended feature vectors, one linear classifier.

    V = conv(U)                                  m filters of size C x d x d, zero padding (d-1)/2
    alpha_k(i, j) = exp V_k(i, j) / sum_{h,w} exp V_k(h, w)          eq. (1), softmax over the grid
    z_k = sum_{h,w} alpha_k(h, w) * U(:, h, w)                       eq. (2), one vector per filter
    logits = fc(dropout(concat(z_1 ... z_m)))
    """

    def __init__(self, num_classes: int, in_channels: int = 512, num_filters: int = 64, kernel_size: int = 3,
                 dropout: float = 0.5):
        super().__init__()
        self.attention_conv = nn.Conv2d(in_channels, num_filters, kernel_size, padding=kernel_size // 2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_filters * in_channels, num_classes)
        nn.init.kaiming_normal_(self.attention_conv.weight, nonlinearity="relu")  # He, as the paper
        nn.init.zeros_(self.attention_conv.bias)
        nn.init.xavier_uniform_(self.fc.weight)  # Glorot, as the paper
        nn.init.zeros_(self.fc.bias)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feature_map U [N, C, H', W'] -> (logits [N, classes], attention_maps [N, m, H', W'])."""
        raw = self.attention_conv(feature_map)  # V [N, m, H', W']
        attention_maps = torch.softmax(raw.flatten(2), dim=-1).view_as(raw)  # eq. (1)
        z = self.attended(attention_maps, feature_map)
        return self.fc(self.dropout(z.flatten(1))), attention_maps

    @staticmethod
    def attended(attention_maps: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        """z_k = sum_{h,w} alpha_k(h, w) U(:, h, w), eq. (2): maps [N, m, H', W'], U [N, C, H', W'] -> [N, m, C]."""
        return torch.einsum("nkhw,nchw->nkc", attention_maps, feature_map)


class MeanPool(nn.Module):
    """Ablation: global average pooling over the grid instead of attention (one uniform "map")."""

    def __init__(self, num_classes: int, in_channels: int = 512, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, height, width = feature_map.shape
        uniform = feature_map.new_full((n, 1, height, width), 1.0 / (height * width))
        return self.fc(self.dropout(feature_map.mean(dim=(2, 3)))), uniform
