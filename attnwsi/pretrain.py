"""python -m attnwsi.pretrain [data.root=DATA] [model.backbone=NAME] [key=value ...]

Self-supervised pretraining (SimCLR by default, or ssl=vicreg; conf/ssl/) of the grid extractor's trunk on
the tissue tiles of a data set's development split, no labels: `trunk.safetensors` and `pretrain.json` in the
run directory, and a linear probe of what the trunk learnt when the data set has lesion annotations
(`attnwsi.training.pretrain`). Rerunning into the same `hydra.run.dir` resumes from its last checkpoint.
Use the trunk with `python -m attnwsi.train model.pretrained=true model.weights_path=RUN/trunk.safetensors`.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from attnwsi.console import entry_point
from attnwsi.training.pretrain import pretrain
from attnwsi.training.run import instantiate_group


@hydra.main(version_base="1.3", config_path="../conf", config_name="pretrain")
@entry_point
def main(cfg: DictConfig) -> None:
    pretrain(cfg.data, cfg.ssl, cfg.trainer, Path(cfg.paths.output_dir), cfg.seed,
             callbacks=instantiate_group(cfg.get("callbacks")), loggers=instantiate_group(cfg.get("logger")))


if __name__ == "__main__":
    main()
