"""What the model learns, shown while it trains: attention maps and confusion matrices.

Pictures go to every logger that takes images: W&B (images, plus a Table of the attention examples) and
TensorBoard. A CSVLogger takes no images, so with one the pictures are written as PNGs into the run
directory instead: `attention_maps/<stage>/<sub_image_id>.png` and `confusion_matrix/<stage>.png`, where <stage> is
`epoch_XXX` for the validation while fitting, and `validate` / `test` for `Trainer.validate` / `Trainer.test`.
The per-class Table 2 metrics themselves are logged by the model (`val/f1/<class>`, `val/recall/<class>`, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from attnwsi.io import write_png_atomic
from attnwsi.models.classifier import AttentionClassifier
from attnwsi.models.explain import explain
from attnwsi.viz import (
    ALPHA,
    COLORMAP,
    attention_panel,
    confusion_matrix_image,
    explanation_panels,
    normalize_map,
    overlay,
    shrink,
    tiles_to_image,
)

# ------------------------------------------------------------------------------------------ pictures


def stage_name(trainer: L.Trainer) -> str:
    """`epoch_XXX` while fitting, else what the trainer does (`validate`, `test`)."""
    if trainer.state.fn == TrainerFn.FITTING:
        return f"epoch_{trainer.current_epoch:03d}"
    return trainer.state.fn.value


def log_picture(trainer: L.Trainer, key: str, picture: np.ndarray, caption: str, png_path: Path) -> None:
    """One RGB picture to every logger that takes images; to `png_path` (in the run directory) for a CSVLogger."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [picture], step=trainer.global_step, caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, picture, trainer.global_step, dataformats="HWC")
        elif isinstance(logger, CSVLogger):
            png_path.parent.mkdir(parents=True, exist_ok=True)
            write_png_atomic(png_path, picture)


def pick_examples(labels: Sequence[str], classes: list[str], per_class: int) -> list[int]:
    """Indices of the first `per_class` images of each class, in data-set order (absent classes are skipped)."""
    labels = list(labels)
    return [i for cls in classes for i in [j for j, label in enumerate(labels) if label == cls][:per_class]]


class AttentionMapLogger(Callback):
    """At the end of validation, the attention maps of a fixed set of validation sub-images.

    The set is the first `per_class` validation sub-images of every class (in manifest order), chosen once.
    Each is shown as one picture: the image (its tile grid, shrunk to `thumbnail_px`), the mean attention map
    and the maps of the `top_filters` filters most relevant to the predicted class
    (`attnwsi.models.explain.filter_relevance`: each filter's exact share of the predicted class's evidence),
    each map normalized to a
    maximum of 1 as in the paper's Figure 5 and alpha-blended over the image with a matplotlib colormap.
    With a WandbLogger they also go into a Table: image, label, prediction, probabilities, mean-map overlay.
    """

    def __init__(self, per_class: int = 1, top_filters: int = 3, thumbnail_px: int = 384, colormap: str = COLORMAP,
                 alpha: float = ALPHA, every_n_epochs: int = 1):
        self.per_class, self.top_filters, self.thumbnail_px = per_class, top_filters, thumbnail_px
        self.colormap, self.alpha, self.every_n_epochs = colormap, alpha, every_n_epochs
        self.examples: list[int] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not isinstance(pl_module, AttentionClassifier):
            return
        if trainer.state.fn == TrainerFn.FITTING and trainer.current_epoch % self.every_n_epochs:
            return
        dataset = trainer.val_dataloaders.dataset
        if self.examples is None:
            self.examples = pick_examples(dataset.labels, pl_module.classes, self.per_class)
        png_dir = Path(trainer.default_root_dir) / "attention_maps" / stage_name(trainer)
        table_rows = []
        for index in self.examples:
            sample = dataset[index]
            explanation = explain(pl_module, sample.tiles, sample.grid)
            image = shrink(tiles_to_image(sample.tiles, sample.grid), self.thumbnail_px)
            label, predicted = pl_module.classes[sample.label], pl_module.classes[explanation.prediction]
            caption = (f"{sample.sub_image_id}: label {label}, predicted {predicted} "
                       f"({explanation.probabilities[explanation.prediction]:.2f})")
            panels = explanation_panels(image, explanation, self.top_filters, self.colormap, self.alpha)
            picture = attention_panel(panels, caption, colormap=self.colormap)
            log_picture(trainer, f"val/attention_maps/{sample.sub_image_id}", picture, caption,
                        png_dir / f"{sample.sub_image_id}.png")
            mean_overlay = overlay(image, normalize_map(explanation.mean_map), colormap=self.colormap,
                                   alpha=self.alpha)
            table_rows.append((sample.sub_image_id, image, label, predicted, explanation.probabilities.tolist(),
                               mean_overlay))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                log_wandb_table(logger, pl_module.classes, table_rows, trainer.global_step)


def log_wandb_table(logger: WandbLogger, classes: list[str], rows: list[tuple], step: int) -> None:
    """The attention examples as a W&B Table: sub_image_id, image, label, prediction, p_<class>..., overlay.

    `rows` hold (sub_image_id, image, label, prediction, probabilities, mean-map overlay).
    """
    import wandb

    columns = ["sub_image_id", "image", "label", "prediction", *(f"p_{c}" for c in classes), "overlay"]
    data = [[sub_image_id, wandb.Image(image), label, prediction, *probabilities, wandb.Image(mean_overlay)]
            for sub_image_id, image, label, prediction, probabilities, mean_overlay in rows]
    logger.log_table("val/attention_table", columns=columns, data=data, step=step)


class ConfusionMatrixLogger(Callback):
    """The confusion matrix of every validation (and test) run, as a picture (rows: true, columns: predicted)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not isinstance(pl_module, AttentionClassifier):
            return
        results = pl_module.results[split]
        stage = stage_name(trainer)
        title = f"{split}, {stage} (n = {results['n']})"
        picture = confusion_matrix_image(results["confusion_matrix"], pl_module.classes, title)
        png_path = Path(trainer.default_root_dir) / "confusion_matrix" / f"{stage}.png"
        log_picture(trainer, f"{split}/confusion_matrix", picture, title, png_path)
