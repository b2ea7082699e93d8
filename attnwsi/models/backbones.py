"""Backbones (trunks) and their weight files: nothing is downloaded at run time.

`build_trunk` cuts a network into what the grid extractor needs: a stem, a list of stages and a tail (the
network's final norm and pooling, giving C features per tile). Any timm model works whose layout is one of:
stages (`stem`, `stages`: ResNetV2, ConvNeXt, EfficientNet-like nets with stages), ResNet layers (`layer1`..`layer4`),
or transformer blocks (ViT: `patch_embed`, `blocks`; a stage is one block). `model.backbone=resnet18` is
torchvision's ResNet-18.

Weights: `pretrained=True` loads a file: `weights_path` (a timm/HF checkpoint, or a `trunk.safetensors` of
`python -m attnwsi.pretrain`), else the Hugging Face cache (timm models) or the torch hub cache (torchvision).
A missing file is one `PretrainedWeightsMissing` error that says where to put it. Names may be
`hf-hub:org/name` (a model on the Hugging Face hub, from the local cache only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from timm.layers import global_pool_nlc
from timm.models import load_state_dict
from torch import nn

from attnwsi.console import UserError

# The paper's default: the pre-activation ResNet-18 with these ImageNet weights (timm, on the HF hub).
TIMM_WEIGHTS = {"resnetv2_18": "resnetv2_18.ra4_e3600_r224_in1k"}
TORCHVISION_WEIGHTS = {"resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1}


class PretrainedWeightsMissing(UserError, FileNotFoundError):
    """No weights file on this machine for a pretrained backbone; the message says where to put one."""


@dataclass
class Trunk:
    """A backbone cut for the grid extractor: stem, stages, then the tail modules that give [N, channels]."""

    stem: nn.Module
    stages: list[nn.Module]
    tail: list[nn.Module]
    channels: int


def build_trunk(backbone: str, pretrained: bool, weights_path: str | None = None) -> Trunk:
    """The backbone (a timm model name, `hf-hub:org/name`, or torchvision's `resnet18`) without its classifier."""
    if backbone in TORCHVISION_WEIGHTS:
        net = torchvision_resnet(backbone, pretrained, weights_path)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        tail = [nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        return Trunk(stem, [net.layer1, net.layer2, net.layer3, net.layer4], tail, net.fc.in_features)
    net = timm_trunk(backbone)
    if pretrained:
        load_weights(net, timm_weights_file(backbone, net, weights_path), backbone)
    return cut(net, backbone)


def timm_trunk(backbone: str) -> nn.Module:
    """timm's model `backbone` without a classifier (num_classes=0), randomly initialized."""
    try:
        return timm.create_model(backbone, pretrained=False, num_classes=0)
    except RuntimeError as err:  # an unknown name
        raise ValueError(f"model.backbone={backbone}: {err}; use a name of timm.list_models(), "
                         "`hf-hub:org/name`, or torchvision's resnet18") from err
    except OSError as err:  # hf-hub: its config.json is not in the Hugging Face cache
        raise PretrainedWeightsMissing(f"model.backbone={backbone}: not in the Hugging Face cache ({err}); fill "
                                       "it once on a machine with network (timm.create_model(name))") from err


def cut(net: nn.Module, backbone: str) -> Trunk:
    """Stem, stages and tail of a timm model, by its layout (see the module docstring)."""
    if hasattr(net, "stages") and hasattr(net, "stem"):
        if isinstance(getattr(net, "norm", None), nn.Module):  # ResNetV2: the final pre-activation norm
            tail = [net.norm, nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        else:  # ConvNeXt and the like: the head pools, normalizes and flattens (its classifier is Identity)
            tail = [getattr(net, "norm_pre", nn.Identity()), net.head]
        return Trunk(net.stem, list(net.stages), tail, net.num_features)
    if hasattr(net, "layer4"):  # timm ResNet
        stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
        return Trunk(stem, [net.layer1, net.layer2, net.layer3, net.layer4], [net.global_pool], net.num_features)
    if hasattr(net, "blocks") and hasattr(net, "patch_embed"):  # ViT: a stage is one transformer block
        return Trunk(ViTStem(net, backbone), list(net.blocks), [net.norm, ViTPool(net)], net.num_features)
    raise ValueError(f"model.backbone={backbone}: its layout (stages, ResNet layers or ViT blocks) is not one the "
                     "grid extractor knows how to cut into frozen and trainable stages")


class ViTStem(nn.Module):
    """A ViT's forward_features before its blocks: patch embedding, class token, position embedding."""

    def __init__(self, net: nn.Module, backbone: str):
        super().__init__()
        if net.reg_token is not None or net.no_embed_class or net.dynamic_img_size or net.attn_pool is not None:
            raise ValueError(f"model.backbone={backbone}: ViTs with register tokens, separate class-token "
                             "embeddings, dynamic image sizes or attention pooling are not supported")
        self.patch_embed, self.cls_token, self.pos_embed = net.patch_embed, net.cls_token, net.pos_embed
        self.pos_drop, self.patch_drop, self.norm_pre = net.pos_drop, net.patch_drop, net.norm_pre

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(tiles)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm_pre(self.patch_drop(self.pos_drop(x + self.pos_embed)))


class ViTPool(nn.Module):
    """A ViT's pooling of its tokens into one feature vector (its forward_head before the classifier)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.fc_norm, self.pool_type, self.num_prefix_tokens = net.fc_norm, net.global_pool, net.num_prefix_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(global_pool_nlc(tokens, pool_type=self.pool_type, num_prefix_tokens=self.num_prefix_tokens))


def load_weights(net: nn.Module, file: str, backbone: str) -> None:
    """The file's tensors into `net`, all of them present: a classifier in the file is left out."""
    state = load_state_dict(file)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"{file}: not weights of model.backbone={backbone}: {len(missing)} of its tensors are "
                         f"missing (e.g. {missing[:3]}); give a checkpoint of this backbone")
    net.load_state_dict({key: state[key] for key in own})


def timm_weights_file(backbone: str, net: nn.Module, weights_path: str | None) -> str:
    """The weights file: `weights_path`, else the Hugging Face cache's copy of the model's pretrained tag."""
    if weights_path:
        if not Path(weights_path).exists():
            raise PretrainedWeightsMissing(f"model.weights_path={weights_path}: no such file")
        return weights_path
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    name = TIMM_WEIGHTS.get(backbone, backbone)
    repo = backbone[len("hf-hub:"):] if backbone.startswith("hf-hub:") else (
        f"timm/{name}" if backbone in TIMM_WEIGHTS else net.pretrained_cfg.get("hf_hub_id") or f"timm/{name}")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return cached
    raise PretrainedWeightsMissing(
        f"No ImageNet weights for {name} on this machine (nothing is downloaded at run time). "
        f"Either pass model.weights_path=/path/to/model.safetensors (from huggingface.co/{repo}), or fill the "
        f"Hugging Face cache at {HF_HUB_CACHE} once on a machine with network: "
        f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\". "
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


def torchvision_resnet(name: str, pretrained: bool, weights_path: str | None = None) -> nn.Module:
    """torchvision's network `name` (its own initialization), with ImageNet weights from a local file if
    `pretrained`."""
    net = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        net.load_state_dict(torch.load(torchvision_weights_file(name, weights_path), map_location="cpu"))
    return net
