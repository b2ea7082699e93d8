"""A training loss that is no longer a number stops the run with one message, before anything is saved from it."""

from __future__ import annotations

import lightning as L
import torch

from attnwsi.console import UserError


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; the message names where and what to try."""


def check_finite(loss: torch.Tensor, module: L.LightningModule, batch_idx: int, what: str) -> None:
    """Raise `NonFiniteLoss` when `loss` is NaN or infinite; `what` names the batch's images."""
    if torch.isfinite(loss).all():
        return
    raise NonFiniteLoss(
        f"the training loss is {loss.item()} at epoch {module.current_epoch}, batch {batch_idx} (step "
        f"{module.global_step}), on {what}. Training stopped; the checkpoints written before are intact and "
        "none holds these weights. Try a lower model.lr, check those images and the data root's stats.json "
        "(a std of 0 divides by zero), or precision=32 if you train in 16-bit")
