"""python -m attnwsi.train [+experiment=NAME] [key=value ...]

Trains, picks the checkpoint with the lowest validation loss, tests it, prints the paper's Table 2 and
writes `results.json` (and the test predictions) into the run directory. The config's `pipeline` names the
function that runs the experiment: `attnwsi.training.run.train_attention` (the default) or
`attnwsi.training.sliding_window.train_sliding_window` (the baseline of section 4.2).

Rerun into the same run directory (`hydra.run.dir`, or a multirun's `hydra.sweep.dir`), it resumes from
`checkpoints/last.ckpt` or, when `results.json` is there, does nothing (`attnwsi.training.resume`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from attnwsi.console import entry_point
from attnwsi.training.run import finished_results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@entry_point
def main(cfg: DictConfig) -> float:
    results = finished_results(cfg) or hydra.utils.get_method(cfg.pipeline)(cfg)
    return results["val"]["mean"]["f1"]  # what a sweep maximises: validation, never test, chooses


if __name__ == "__main__":
    main()
