"""The grid feature extractor (the paper's section 3.1): tiles -> feature map U [512, H', W'].

A pre-activation ResNet-18 (timm `resnetv2_18`) without its pooling-and-FC head is run on every tile; each
tile's 512-channel output is average-pooled into one feature vector, and the vectors are laid back onto the
grid. The paper's "3D convolution with 1x3x3 filters" is this: all tiles of a batch flattened into one batch
of 2D images. The trunk is split in two: a frozen part (stem and the first residual stages) and a trainable
part (the last `trainable_stages` stages and the final pre-activation norm).

BatchNorm policy: every BatchNorm layer uses its running statistics (ImageNet's when pretrained), in
training too; those of the trainable stages keep learning their affine weight and bias. So a tile's
features never depend on which other tiles share its batch: the extractor on T tiles equals T separate
calls, and chunked (streamed) computation gives exactly the gradients of the whole image. (Batch statistics
over the tiles of two slides would be dominated by slide-level correlations anyway.) A trunk trained from
scratch first estimates its running statistics from training tiles (`calibrate_batchnorm`).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

TIMM_WEIGHTS = {"resnetv2_18": "resnetv2_18.ra4_e3600_r224_in1k"}
TORCHVISION_WEIGHTS = {"resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1}


class PretrainedWeightsMissing(FileNotFoundError):
    pass


def _timm_weights_file(name: str, weights_path: str | None) -> str:
    if weights_path:
        if not Path(weights_path).exists():
            raise PretrainedWeightsMissing(f"model.weights_path={weights_path}: no such file")
        return weights_path
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    repo = f"timm/{TIMM_WEIGHTS[name]}"
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return cached
    raise PretrainedWeightsMissing(
        f"No ImageNet weights for {TIMM_WEIGHTS[name]} on this machine (nothing is downloaded at run time). "
        f"Either pass model.weights_path=/path/to/model.safetensors (from huggingface.co/{repo}), or fill the "
        f"Hugging Face cache at {HF_HUB_CACHE} once on a machine with network: "
        f"python -c \"import timm; timm.create_model('{TIMM_WEIGHTS[name]}', pretrained=True)\". "
        "Or train from scratch with model.pretrained=false.")


def _torchvision_weights_file(name: str, weights_path: str | None) -> str:
    if weights_path and Path(weights_path).exists():
        return weights_path
    url = TORCHVISION_WEIGHTS[name].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if weights_path is None and cached.exists():
        return str(cached)
    raise PretrainedWeightsMissing(
        f"No ImageNet weights for torchvision {name} at {weights_path or cached} (nothing is downloaded at run "
        f"time). Put {url} there, pass model.weights_path=FILE, or use model.pretrained=false.")


def build_trunk(backbone: str, pretrained: bool, weights_path: str | None = None) -> tuple[nn.Module, list, nn.Module]:
    """(stem, [residual stages], final norm) of a ResNet-18 without its head."""
    if backbone in TIMM_WEIGHTS:
        kwargs = {}
        if pretrained:
            kwargs = {"pretrained": True,
                      "pretrained_cfg_overlay": {"file": _timm_weights_file(backbone, weights_path)}}
        net = timm.create_model(TIMM_WEIGHTS[backbone] if pretrained else backbone, num_classes=0, **kwargs)
        return net.stem, list(net.stages), net.norm
    if backbone in TORCHVISION_WEIGHTS:
        net = getattr(torchvision.models, backbone)(weights=None)
        if pretrained:
            state = torch.load(_torchvision_weights_file(backbone, weights_path), map_location="cpu")
            net.load_state_dict(state)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        return stem, [net.layer1, net.layer2, net.layer3, net.layer4], nn.Identity()
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {[*TIMM_WEIGHTS, *TORCHVISION_WEIGHTS]}")


class GridExtractor(nn.Module):
    """Tiles [T, 3, h, w] -> features [T, 512]; `feature_map` lays them out as U [512, H', W']."""

    out_channels = 512

    def __init__(self, backbone: str = "resnetv2_18", pretrained: bool = False, weights_path: str | None = None,
                 trainable_stages: int = 1):
        super().__init__()
        stem, stages, norm = build_trunk(backbone, pretrained, weights_path)
        if not 0 <= trainable_stages <= len(stages):
            raise ValueError(f"trainable_stages must be in 0..{len(stages)}, got {trainable_stages}")
        split = len(stages) - trainable_stages
        self.frozen = nn.Sequential(stem, *stages[:split])
        self.trainable = nn.Sequential(*stages[split:], norm, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.frozen.requires_grad_(False)

    def train(self, mode: bool = True) -> GridExtractor:
        super().train(mode)
        for module in self.modules():  # the BatchNorm policy of the module docstring
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    @torch.no_grad()
    def calibrate_batchnorm(self, tile_batches) -> None:
        """Estimate every BatchNorm's running statistics from (normalized) tile batches, then freeze them.

        For a trunk trained from scratch: its initial statistics (mean 0, variance 1) normalize nothing.
        """
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over all batches
            norm.train()
        for tiles in tile_batches:
            self.trainable(self.frozen(tiles))
        for norm in norms:
            norm.momentum = 0.1
            norm.eval()

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            frozen = self.frozen(tiles)
        return self.trainable(frozen)

    @staticmethod
    def feature_map(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Row-major tile features [H'*W', C] -> U [C, H', W']."""
        return features.t().reshape(features.shape[1], *grid)
