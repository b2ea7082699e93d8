"""python -m attnwsi.train [+experiment=NAME] [key=value ...]

Trains, picks the checkpoint with the best validation mean F1, tests it, prints the paper's Table 2 and
writes `results.json` (and the test predictions) into the run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markdown import Markdown

from attnwsi.data.manifest import write_atomic, write_csv_atomic
from attnwsi.metrics import format_table2

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list:
    """Every `_target_` entry of a config group (callbacks, loggers) as an object."""
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def build_run(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Seed, then the data module, model and trainer (with callbacks and loggers) of a run's config."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = [c for c in instantiate_group(cfg.get("callbacks"))  # a learning-rate monitor needs a logger
                 if loggers or not isinstance(c, LearningRateMonitor)]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict:
    output_dir = Path(cfg.paths.output_dir)
    datamodule, model, trainer = build_run(cfg)
    trainer.fit(model, datamodule=datamodule)
    checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt_path = checkpoint or None
    results = {"model": model.hparams.head, "classes": model.classes, "checkpoint": checkpoint}
    trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    results["val"] = model.results["val"]
    if cfg.test:
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        results["test"] = model.results["test"]
    if trainer.is_global_zero:
        write_results(output_dir, results, model.test_predictions if cfg.test else None)
    return results


def write_results(output_dir: Path, results: dict, predictions) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    write_atomic(output_dir / "results.json", lambda tmp: tmp.write_text(text))
    if predictions is not None:
        write_csv_atomic(predictions, output_dir / "predictions_test.csv")
    console = Console()
    for split in ("val", "test"):
        if split in results:
            console.print(Markdown(format_table2(results[split], f"{results['model']}: {split}")))
    console.print(f"results: {output_dir / 'results.json'}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    if cfg.get("pipeline") == "sliding_window":  # the baseline of section 4.2 (imports this module's helpers)
        from attnwsi.sliding_window_pipeline import train_sliding_window

        results = train_sliding_window(cfg)
    else:
        results = train(cfg)
    return results.get("test", results["val"])["mean"]["f1"]


if __name__ == "__main__":
    main()
