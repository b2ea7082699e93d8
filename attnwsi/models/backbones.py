"""Backbones (trunks) and their weight files: nothing is downloaded at run time.

`build_trunk` gives the attention model's grid extractor its ResNet-18 cut into stem, residual stages and
final norm; `torchvision_resnet` is the whole torchvision network, as the crop classifier uses it. Pretrained
weights come from a local file (`weights_path`) or a cache filled beforehand; a missing file is one
`PretrainedWeightsMissing` error that says where to put it.
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
    """No weights file on this machine for a pretrained backbone; the message says where to put one."""


def timm_weights_file(name: str, weights_path: str | None) -> str:
    """The file of timm backbone `name`'s ImageNet weights: `weights_path`, else the Hugging Face cache."""
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


def torchvision_weights_file(name: str, weights_path: str | None) -> str:
    """The file of torchvision backbone `name`'s ImageNet weights: `weights_path`, else the torch hub cache."""
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
                      "pretrained_cfg_overlay": {"file": timm_weights_file(backbone, weights_path)}}
        net = timm.create_model(TIMM_WEIGHTS[backbone] if pretrained else backbone, num_classes=0, **kwargs)
        return net.stem, list(net.stages), net.norm
    if backbone in TORCHVISION_WEIGHTS:
        net = torchvision_resnet(backbone, pretrained, weights_path)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        return stem, [net.layer1, net.layer2, net.layer3, net.layer4], nn.Identity()
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {[*TIMM_WEIGHTS, *TORCHVISION_WEIGHTS]}")


def torchvision_resnet(name: str, pretrained: bool, weights_path: str | None = None) -> nn.Module:
    """torchvision's network `name` (its own initialization), with ImageNet weights from a local file if
    `pretrained`."""
    net = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        net.load_state_dict(torch.load(torchvision_weights_file(name, weights_path), map_location="cpu"))
    return net
