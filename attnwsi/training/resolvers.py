"""The OmegaConf resolvers our configs use (`${data_root_classes:DIR}`); importing this module registers them.

`attnwsi.training.run` imports it, so every process that composes or runs such a config has it: the
commands (`train`, `pretrain`) before Hydra reads their config, and a SLURM job, which unpickles the task.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from attnwsi.data.manifest import data_root_classes

OmegaConf.register_new_resolver("data_root_classes", data_root_classes, replace=True)
