"""The sliding-window baseline end to end (the paper's section 4.2), as `python -m attnwsi.train` runs it
for experiments with `pipeline: attnwsi.training.sliding_window.train_sliding_window`.

1. Train the crop classifier on balanced lesion/normal crops; keep the checkpoint with the best
   validation crop accuracy.
2. Cut every validation and test sub-image into tissue windows and keep each window's class
   probabilities (`windows/<split>/<sub_image_id>.npz`: `corners` [N, 2] level-0 x, y; `probs` [N, C]).
3. Choose the aggregation rule and per-class thresholds on the validation sub-images for the best mean F1
   (`aggregation.json`), and apply them to the test sub-images.
4. Write `results.json` (the attention model's schema, "model": "sliding_window") and
   `predictions_test.csv`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from rich.progress import track

from attnwsi.data.crops import CropDataModule
from attnwsi.data.slides import SubImage
from attnwsi.inference.windows import aggregate, predict_windows, search_aggregation
from attnwsi.io import write_json_atomic, write_npz_atomic
from attnwsi.metrics import table2_of_predictions
from attnwsi.models.crop_classifier import CropClassifier
from attnwsi.training.run import fit, write_results

log = logging.getLogger(__name__)


def predict_split(model: CropClassifier, datamodule: CropDataModule, split: str,
                  out_dir: Path) -> dict[str, np.ndarray]:
    """Window probabilities of every sub-image of a split, by sub-image id; also saved under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = {}
    sub_images = datamodule.sub_images(split)
    for sub_image in track(sub_images, f"windows ({split})"):
        corners, window_probs = predict_windows(model, datamodule.windows(sub_image), datamodule.batch_size)
        write_npz_atomic(out_dir / f"{sub_image.sub_image_id}.npz", corners=corners, probs=window_probs)
        probs[sub_image.sub_image_id] = window_probs
    return probs


def apply_aggregation(probs: dict[str, np.ndarray], sub_images: list[SubImage], classes: list[str],
                      choice: dict) -> pd.DataFrame:
    """Per sub-image: sub_image_id, label, prediction, p_<class>.

    For the baseline p_<class> is the class's share of the sub-image's confident windows under the chosen
    thresholds (DeepSlide's class percentages; they sum to 1, or are all 0 when no window is confident),
    not a model's class probability as for the attention model.
    """
    records = []
    for sub_image in sub_images:
        label, fractions = aggregate(probs[sub_image.sub_image_id], classes, choice["rule"], choice["thresholds"],
                                     choice["min_windows"])
        records.append({"sub_image_id": sub_image.sub_image_id, "label": sub_image.label,
                        "prediction": classes[label], **{f"p_{c}": float(f) for c, f in zip(classes, fractions)}})
    return pd.DataFrame(records)


def train_sliding_window(cfg: DictConfig) -> dict:
    """Train, choose the aggregation on validation, test; write the run's files into cfg.paths.output_dir."""
    output_dir = Path(cfg.paths.output_dir)
    datamodule, model, trainer, checkpoint = fit(cfg)
    if checkpoint:
        model = CropClassifier.load_from_checkpoint(checkpoint, map_location=trainer.strategy.root_device)

    classes, search = model.classes, cfg.aggregation
    splits = ("val", "test") if cfg.test else ("val",)
    probs = {s: predict_split(model, datamodule, s, output_dir / "windows" / s) for s in splits}
    val_sub_images = datamodule.sub_images("val")
    labels = np.array([classes.index(s.label) for s in val_sub_images])
    choice = search_aggregation([probs["val"][s.sub_image_id] for s in val_sub_images], labels, classes,
                                list(search.thresholds), list(search.min_windows))
    log.info("aggregation chosen on validation: %s", choice)

    results = {"model": "sliding_window", "classes": classes, "checkpoint": checkpoint,
               "val": table2_of_predictions(apply_aggregation(probs["val"], val_sub_images, classes, choice),
                                            classes)}
    predictions = None
    if cfg.test:
        predictions = apply_aggregation(probs["test"], datamodule.sub_images("test"), classes, choice)
        results["test"] = table2_of_predictions(predictions, classes)
    output_dir.mkdir(parents=True, exist_ok=True)
    windows = {"crop_um": datamodule.crop_um, "crop_px": datamodule.crop_px,
               "stride_um": datamodule.stride_um, "min_tissue": datamodule.min_tissue}
    write_json_atomic(output_dir / "aggregation.json", {**choice, "windows": windows})
    write_results(output_dir, results, predictions)
    return results
