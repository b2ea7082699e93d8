"""python -m attnwsi.eval ckpt_path=CKPT data.root=DATA [split=test] [hydra.run.dir=DIR]

A trained checkpoint (the attention model's or the sliding window's) on a split of a data root: prints the
paper's Table 2 and writes `results.json` (`train`'s schema, with that split only) and
`predictions_<split>.csv` into its run directory (`attnwsi.training.evaluate`).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from attnwsi.console import entry_point
from attnwsi.training.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@entry_point
def main(cfg: DictConfig) -> float:
    results = evaluate(cfg.ckpt_path, cfg.data.root, cfg.split, Path(cfg.paths.output_dir), cfg.data.batch_size,
                       cfg.data.num_workers, cfg.device, cfg.grid_shifts)
    return results[cfg.split]["mean"]["f1"]


if __name__ == "__main__":
    main()
