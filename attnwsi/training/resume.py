"""Runs that survive kills: a killed run, rerun with the same command and run directory, ends with exactly
the weights of the uninterrupted run (bit for bit on a CPU).

What that takes, beside Lightning's restoring of weights, optimizer, schedule, loop counters and the
best-checkpoint bookkeeping:
- the data's order and augmentation depend only on (seed, epoch, index) (`attnwsi.data.sampling`);
- torch's random state (dropout) is seeded at every training batch from (seed, epoch, batch, rank);
- `checkpoints/last.ckpt` is written atomically (a kill never leaves half a file that a rerun would trust)
  at the end of every epoch, every `every_n_steps` steps and every `every_minutes` minutes, and when the
  run is told to stop: SIGTERM, or SIGUSR1 (SLURM's pre-kill signal; under SLURM Lightning itself saves
  `hpc_ckpt_<n>.ckpt` and requeues the job). A kill between two saves loses the batches since the last
  one; the rerun redoes them, identically.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console

from attnwsi.data.sampling import item_seed
from attnwsi.models.checkpoints import CheckpointError, read_checkpoint, saved_settings

LAST_CHECKPOINT = "last.ckpt"


class Resumable(Callback):
    """Seeds every training batch and keeps `dirpath/last.ckpt` up to date (see the module docstring)."""

    def __init__(self, dirpath: str, seed: int, every_n_steps: int | None = None,
                 every_minutes: float | None = None):
        self.dirpath, self.seed = Path(dirpath), seed
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes
        self._saved_at = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_at = time.monotonic()
        if not SLURMEnvironment.detect():  # SIGUSR1 stops the run like SIGTERM (Lightning handles SLURM's)
            signal.signal(signal.SIGUSR1, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed(item_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        due_steps = self.every_n_steps and trainer.global_step % self.every_n_steps == 0
        due_time = self.every_minutes and time.monotonic() - self._saved_at >= 60 * self.every_minutes
        if due_steps or due_time:
            self.write_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write_last(trainer)  # after validation and the best checkpoint's bookkeeping

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # raised between two batches: a consistent state
            self.write_last(trainer)
            if trainer.is_global_zero:
                Console(stderr=True).print(f"stopped by a signal: {self.dirpath / LAST_CHECKPOINT} written; "
                                           "rerun the same command to resume", soft_wrap=True)

    def write_last(self, trainer: L.Trainer) -> None:
        path = self.dirpath / LAST_CHECKPOINT
        partial = path.with_name(f".{path.name}.partial")
        trainer.save_checkpoint(partial, weights_only=False)  # every process takes part; the first one writes
        if trainer.is_global_zero:
            os.replace(partial, path)
        trainer.strategy.barrier("last checkpoint written")
        self._saved_at = time.monotonic()


def resume_checkpoint(output_dir: str | Path, model: L.LightningModule) -> Path | None:
    """The checkpoint a rerun into `output_dir` resumes from: the newer of `checkpoints/last.ckpt` and
    SLURM's `hpc_ckpt_<n>.ckpt`, checked to be readable and of `model`'s class and shapes (a run rerun with
    settings that change the network, say another loss or backbone, cannot continue it); None when there is
    none."""
    output_dir = Path(output_dir)
    candidates = [p for p in (output_dir / "checkpoints" / LAST_CHECKPOINT, *output_dir.glob("hpc_ckpt_*.ckpt"))
                  if p.is_file()]
    if not candidates:
        return None
    path = max(candidates, key=lambda p: p.stat().st_mtime)
    checkpoint = read_checkpoint(path, type(model))
    own = model.state_dict()
    if any(name in own and own[name].shape != tensor.shape for name, tensor in checkpoint["state_dict"].items()):
        theirs = saved_settings(checkpoint, type(model))
        changed = {name: (theirs.get(name), value) for name, value in model.hparams.items()
                   if _plain(theirs.get(name)) != _plain(value)}
        raise CheckpointError(f"{path} was written by a network of other settings (there -> in this run: "
                              f"{changed}): rerun with its settings, or resume=false to train there afresh")
    Console().print(f"resuming from {path} (epoch {checkpoint['epoch']}, step {checkpoint['global_step']}); "
                    "resume=false starts afresh", soft_wrap=True)
    return path


def _plain(value):
    """Tuples as lists (a default may be a tuple where a config gives a list), to compare settings."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value
