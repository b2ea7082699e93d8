"""The OmegaConf resolvers our configs use (`${data_root_classes:DIR}`); importing this module registers them.

The commands that compose such configs (`train`, `pretrain`) import it before Hydra reads their config.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from attnwsi.data.manifest import data_root_classes

OmegaConf.register_new_resolver("data_root_classes", data_root_classes, replace=True)
