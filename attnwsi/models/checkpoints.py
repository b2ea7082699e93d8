"""Reading a model checkpoint a user hands us (to resume, evaluate, predict, localize), with one clear message
for a file that is truncated, not a Lightning checkpoint, or a checkpoint of the other model."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import torch

from attnwsi.console import UserError


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong with it."""


def read_checkpoint(path: str | Path, model_class: type[L.LightningModule]) -> dict:
    """The checkpoint at `path` (on the CPU), checked to be one of `model_class`."""
    checkpoint = load_checkpoint(path)
    class_of(checkpoint, path, [model_class])
    return checkpoint


def load_trained(path: str | Path, overrides: dict[type[L.LightningModule], dict], device: str) -> L.LightningModule:
    """The trained model in the checkpoint at `path` (read once), in eval mode on `device`.

    `overrides` maps each model class the caller accepts to the settings that replace the saved ones (e.g.
    `pretrained=False`: every weight is in the checkpoint).
    """
    checkpoint = load_checkpoint(path)
    model_class = class_of(checkpoint, path, list(overrides))
    model = model_class(**{**checkpoint["hyper_parameters"], **overrides[model_class]})
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()


def class_of(checkpoint: dict, path: str | Path,
             model_classes: list[type[L.LightningModule]]) -> type[L.LightningModule]:
    """The first of `model_classes` whose settings the checkpoint (read from `path`) holds."""
    for model_class in model_classes:
        if not missing_settings(checkpoint, model_class):
            return model_class
    if len(model_classes) == 1:
        raise CheckpointError(f"{path} is not a checkpoint of {model_classes[0].__name__} (it lacks its settings "
                              f"{missing_settings(checkpoint, model_classes[0])}): it belongs to another model or "
                              "experiment")
    raise CheckpointError(f"{path} is not a checkpoint of {[c.__name__ for c in model_classes]}")


def load_checkpoint(path: str | Path) -> dict:
    """A readable Lightning checkpoint, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated zip, a pickle of something else, a text file ...
        raise CheckpointError(f"{path} cannot be read as a checkpoint (truncated, or not a checkpoint: {error}). "
                              "Use another checkpoint; to resume, delete it and rerun") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(checkpoint):
        raise CheckpointError(f"{path} is not a checkpoint of attnwsi (no state_dict or hyper_parameters in it)")
    return checkpoint


def _settings_of(model_class: type[L.LightningModule]) -> dict[str, inspect.Parameter]:
    """`model_class`'s settings: the parameters of its constructor, with their defaults."""
    return {name: p for name, p in inspect.signature(model_class.__init__).parameters.items() if name != "self"}


def saved_settings(checkpoint: dict, model_class: type[L.LightningModule]) -> dict:
    """The settings the checkpoint's model was built with: its hyper-parameters, and `model_class`'s defaults
    for settings it does not hold (added since it was written). A required setting it lacks stays absent."""
    defaults = {name: p.default for name, p in _settings_of(model_class).items() if p.default is not p.empty}
    return {**defaults, **checkpoint["hyper_parameters"]}


def missing_settings(checkpoint: dict, model_class: type[L.LightningModule]) -> list[str]:
    """The settings `model_class` requires that the checkpoint's hyper-parameters lack (none: it is one)."""
    return [name for name, p in _settings_of(model_class).items()
            if p.default is p.empty and name not in checkpoint["hyper_parameters"]]
