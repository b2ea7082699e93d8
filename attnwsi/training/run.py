"""A training run from its config: build it, fit it, test the best checkpoint, write its results.

`build_run` instantiates the data module, model and trainer (with callbacks and loggers) of a run's config;
`fit` trains and returns the checkpoint with the best validation score; `write_results` writes
`results.json` (the paper's Table 2 for validation and test) and the test predictions, and prints the tables.
`train_attention` is the attention model's pipeline; the config's `pipeline` names the function to run
(`attnwsi.training.sliding_window.train_sliding_window` for the baseline).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import hydra
import lightning as L
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.markdown import Markdown

import attnwsi.training.resolvers  # noqa: F401  (${data_root_classes:...}, also in a SLURM job's process)
from attnwsi.console import UserError
from attnwsi.io import write_csv_atomic, write_json_atomic
from attnwsi.metrics import format_table2
from attnwsi.training.pretrain import cached_trunk, pretraining_asked
from attnwsi.training.resume import resume_checkpoint


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


def fit(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer, str]:
    """Build the run and train it, resuming from the run directory's last checkpoint when there is one (and
    `cfg.resume`); also returns the best checkpoint's path ("" without checkpointing)."""
    datamodule, model, trainer = build_run(cfg)
    ckpt_path = resume_checkpoint(cfg.paths.output_dir, model) if cfg.get("resume") else None
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # stopped by SIGTERM/SIGUSR1 after last.ckpt was written (training/resume.py)
        raise SystemExit(128 + signal.SIGTERM) from None
    checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    return datamodule, model, trainer, checkpoint


def train_attention(cfg: DictConfig) -> dict:
    """Train the attention model, then validate and test the checkpoint the checkpoint callback kept
    (the lowest validation loss, `conf/callbacks/default.yaml`).

    With `ssl=` a method, the trunk is first pretrained on the data set's own tiles (once, into the cache) and
    the model starts from it (`model.pretrained=true`, `model.weights_path` = that trunk).
    """
    if pretraining_asked(cfg):
        with open_dict(cfg):
            cfg.model.pretrained, cfg.model.weights_path = True, str(cached_trunk(cfg))
    datamodule, model, trainer, checkpoint = fit(cfg)
    ckpt_path = checkpoint or None
    results = {"model": model.hparams.head, "classes": model.classes, "checkpoint": checkpoint}
    trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    results["val"] = model.results["val"]
    if cfg.test:
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        results["test"] = model.results["test"]
    if trainer.is_global_zero:
        write_results(Path(cfg.paths.output_dir), results, model.test_predictions if cfg.test else None)
    return results


def finished_results(cfg: DictConfig) -> dict | None:
    """The results of a finished run in this run directory, when the run is to be resumed; None otherwise.
    A finished run with other settings (command-line overrides) there is an error, not a result."""
    path = Path(cfg.paths.output_dir) / "results.json"
    if not (cfg.get("resume") and path.exists()):
        return None
    results, overrides = json.loads(path.read_text()), run_overrides()
    if results.get("overrides", overrides) != overrides:
        raise UserError(f"{path} is the result of a run with other settings ({results['overrides']}, this one: "
                        f"{overrides}); give this run its own hydra.run.dir (hydra.sweep.dir), or "
                        "resume=false to train it there anew")
    Console().print(f"{path} exists: this run is finished, nothing to do (resume=false runs it again)",
                    soft_wrap=True)
    return results


def run_overrides() -> list[str] | None:
    """The run's command-line overrides (Hydra's task overrides), None outside Hydra: what tells runs apart."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def write_results(output_dir: Path, results: dict, predictions: pd.DataFrame | None) -> None:
    """`results.json` (with the run's `overrides`, added to `results`) and `predictions_test.csv` into the run
    directory; the Table 2 of each split printed."""
    output_dir.mkdir(parents=True, exist_ok=True)
    results["overrides"] = run_overrides()
    write_json_atomic(output_dir / "results.json", results)
    if predictions is not None:
        write_csv_atomic(predictions, output_dir / "predictions_test.csv")
    console = Console()
    for split in ("val", "test"):
        if split in results:
            console.print(Markdown(format_table2(results[split], f"{results['model']}: {split}")))
    console.print(f"results: {output_dir / 'results.json'}")
