"""Weights & Biases through Lightning's WandbLogger: offline when there is no login, never a prompt."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from attnwsi.io import write_text_atomic


def wandb_logger(**kwargs) -> WandbLogger:
    """Lightning's WandbLogger, offline when `wandb_offline()`; `kwargs` go to WandbLogger and `wandb.init`.

    The jobs of a Hydra multirun share one process: a run still open from the previous job is finished
    first, so every job gets its own W&B run (the last one is finished when the process exits). The run's
    id is kept in `<save_dir>/wandb_run_id.txt`, so a resumed run continues the same W&B run.
    """
    import wandb

    if wandb.run is not None:
        wandb.finish()
    id_file = Path(kwargs["save_dir"]) / "wandb_run_id.txt"
    if not id_file.exists():
        write_text_atomic(id_file, uuid.uuid4().hex[:8])
    return WandbLogger(offline=wandb_offline(), id=id_file.read_text().strip(), resume="allow", **kwargs)


def wandb_offline() -> bool:
    """Offline when WANDB_MODE says so, or when W&B has no credentials (looked up locally, never asked for)."""
    import wandb

    mode = os.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "dryrun"):
        return True
    if mode == "disabled":  # wandb.init makes a no-op run
        return False
    return not wandb.login(prompt=False, verify=False)
