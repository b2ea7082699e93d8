"""The grid feature extractor (the paper's section 3.1): tiles -> feature map U [C, H', W'].

A backbone without its classifier (the paper's pre-activation ResNet-18, timm `resnetv2_18`, C = 512; or any
timm model, see `attnwsi.models.backbones`) is run on every tile; each tile's output is pooled into one
feature vector of C channels, and the vectors are laid back onto the grid. The paper's "3D convolution with
1x3x3 filters" is this: all tiles of a batch flattened into one batch of 2D images. The trunk is split in two:
a frozen part (stem and the first stages) and a trainable part (the last `trainable_stages` stages, then the
backbone's final norm and pooling). A stage is a residual stage of a ResNet or ConvNeXt, a block of a ViT.

BatchNorm policy: every BatchNorm layer uses its running statistics (ImageNet's when pretrained), in
training too; those of the trainable stages keep learning their affine weight and bias. So a tile's
features never depend on which other tiles share its batch: the extractor on T tiles equals T separate
calls, and chunked (streamed) computation gives exactly the gradients of the whole image. (Batch statistics
over the tiles of two slides would be dominated by slide-level correlations anyway.) A trunk trained from
scratch first estimates its running statistics from training tiles (`calibrate_batchnorm`); a self-supervised
trunk keeps those of its pretraining (on augmented views), which scored better on the haystack than
statistics recalibrated on plain tiles (test mean F1 0.900 / 0.914 against 0.892 / 0.894 on seeds 1 / 2:
experiments/pretrain/README.md, 2026-11-29, commit 88d434c). LayerNorm
(ConvNeXt, ViT) normalizes each tile (each token) on its own, so streaming is exact with it too.
"""

from __future__ import annotations

import torch
from torch import nn

from attnwsi.models.backbones import build_trunk
from attnwsi.models.normalization import calibrate_batchnorm


class GridExtractor(nn.Module):
    """Tiles [T, 3, h, w] -> features [T, C]; `feature_map` lays them out as U [C, H', W']."""

    def __init__(self, backbone: str = "resnetv2_18", pretrained: bool = False, weights_path: str | None = None,
                 trainable_stages: int = 1, channels_last: bool = False, compile: bool = False):
        super().__init__()
        trunk = build_trunk(backbone, pretrained, weights_path)
        stages = trunk.stages
        if not 0 <= trainable_stages <= len(stages):
            raise ValueError(f"model.trainable_stages must be in 0..{len(stages)} for {backbone}, "
                             f"got {trainable_stages}")
        split = len(stages) - trainable_stages
        self.out_channels = trunk.channels
        self.frozen = nn.Sequential(trunk.stem, *stages[:split])
        self.trainable = nn.Sequential(*stages[split:], *trunk.tail)
        self.frozen.requires_grad_(False)
        # channels_last: weights and tiles in NHWC, which GPU convolutions (tensor cores) prefer
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)
        if compile:  # torch.compile both parts in place (the state dict keeps its keys); where compiling fails
            torch._dynamo.config.suppress_errors = True  # (no compiler, an unsupported op) they run eagerly
            self.frozen.compile()
            self.trainable.compile()

    def train(self, mode: bool = True) -> GridExtractor:
        super().train(mode)
        for module in self.modules():  # the BatchNorm policy of the module docstring
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def calibrate_batchnorm(self, tile_batches) -> None:
        """Every BatchNorm's running statistics from (normalized) tile batches (`calibrate_batchnorm`)."""
        calibrate_batchnorm(self, tile_batches)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        tiles = tiles.contiguous(memory_format=self.memory_format)
        with torch.no_grad():
            frozen = self.frozen(tiles)
        return self.trainable(frozen)

    @staticmethod
    def feature_map(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Row-major tile features [H'*W', C] -> U [C, H', W']."""
        return features.t().reshape(features.shape[1], *grid)
