"""How the data reaches the model: the training data's order and random draws as functions of (seed, epoch,
index) alone, and DataLoader settings that keep a GPU fed (`loader_options`).

A run killed and resumed from a checkpoint must see exactly the data the uninterrupted run sees, so nothing
may depend on process-local counters, on worker random states or on how many epochs ran in this process:

- `EpochSampler` orders each epoch from (seed, epoch) (DistributedSampler's rule, one share per process)
  and hands the data set (epoch, index) pairs, from which it draws its augmentation (`item_rng`);
- `training_loader` positions the sampler where a restored fit loop resumes: in the restored epoch, past
  the batches the checkpointed run had already trained on (`resume_position`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from attnwsi.console import UserError


def item_rng(*keys: int) -> np.random.Generator:
    """The random draws of one item, e.g. (seed, epoch, index): the same in every process and on every rerun."""
    return np.random.default_rng(list(keys))


def item_seed(*keys: int) -> int:
    """A torch seed from keys such as (seed, epoch, index), for what draws from torch's random state."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


class EpochSampler(DistributedSampler):
    """One process's share of a data set, shuffled from (seed, epoch) (or in order), as (epoch, index) pairs.

    `skip_once(epoch, n)`: the next pass, if it is over `epoch`, leaves out its first n items (the batches a
    resumed run already trained on). Lightning calls `set_epoch` at the start of every epoch.
    """

    def __init__(self, dataset: Dataset, seed: int, shuffle: bool, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._skip: tuple[int, int] | None = None

    def skip_once(self, epoch: int, n: int) -> None:
        self._skip = (epoch, n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1]:]
        self._skip = None
        return iter([(self.epoch, i) for i in indices])


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning may resume mid-epoch (a loader with `state_dict`/`load_state_dict`).

    Its position is not kept in the loader but read from the restored fit loop (`training_loader`); the
    state is the sampler's seed, so that resuming with another seed is refused rather than silently mixed.
    """

    def state_dict(self) -> dict:
        return {"seed": self.sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.sampler.seed) != self.sampler.seed:
            raise UserError(f"the checkpoint was trained with seed={state['seed']}, this run has "
                             f"seed={self.sampler.seed}: resume with the same seed, or start afresh with resume=false")


def resume_position(trainer: L.Trainer | None) -> tuple[int, int]:
    """(the epoch a fit loop runs next, how many of its batches were already trained): (0, 0) for a new
    run; for a restored one, the checkpointed progress (mid-epoch or at an epoch's end)."""
    if trainer is None:
        return 0, 0
    loop = trainer.fit_loop
    epochs = loop.epoch_progress.current
    # at an epoch's end `processed` is already the next epoch while the batch counter still holds the last
    batches = loop.epoch_loop.batch_progress.current.processed if epochs.completed == epochs.processed else 0
    return epochs.processed, batches


MAX_DEFAULT_WORKERS = 8  # beyond this, more reader processes rarely help one GPU and cost memory


def loader_options(num_workers: int | None, trainer: L.Trainer | None) -> dict:
    """DataLoader settings for a data module's loaders:
    - `num_workers` reader processes; None: the CPUs this process may use, at most MAX_DEFAULT_WORKERS;
    - workers kept between epochs (`persistent_workers`: no new processes, slide handles stay open) and
      4 batches read ahead by each (`prefetch_factor`), so decoding overlaps the model's step;
    - pinned (page-locked) host memory when training on CUDA, for fast asynchronous copies to the GPU.
    """
    if num_workers is None:
        num_workers = min(MAX_DEFAULT_WORKERS, len(os.sched_getaffinity(0)))
    on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
    options = {"num_workers": num_workers, "pin_memory": on_cuda}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def training_loader(dataset: Dataset, seed: int, shuffle: bool, batch_size: int, trainer: L.Trainer | None,
                    collate_fn: Callable | None = None, **loader_options) -> ResumableLoader:
    """The training DataLoader: this process's share of `dataset`, ordered from (seed, epoch), positioned
    where the trainer's (possibly restored) fit loop resumes."""
    world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = EpochSampler(dataset, seed, shuffle, num_replicas=world_size, rank=rank)
    epoch, batches = resume_position(trainer)
    sampler.set_epoch(epoch)
    sampler.skip_once(epoch, batches * batch_size)
    return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, **loader_options)
