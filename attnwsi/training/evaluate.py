"""A trained checkpoint of either model on a split of a data root: the paper's Table 2, `results.json` in
`train`'s schema and the split's predictions (`python -m attnwsi.eval`).

The model's classes, tile or crop geometry and input normalization come from the checkpoint. The
sliding-window model also needs the aggregation its training run chose on validation (`aggregation.json`
beside the run's `checkpoints/` folder).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pandas as pd

from attnwsi.console import UserError
from attnwsi.data.crops import CropDataModule
from attnwsi.data.datamodule import SlideDataModule
from attnwsi.inference.sub_image_windows import WindowModel, load_predictor
from attnwsi.io import write_csv_atomic
from attnwsi.metrics import table2_of_predictions
from attnwsi.models.classifier import AttentionClassifier
from attnwsi.training.run import write_results
from attnwsi.training.sliding_window import apply_aggregation, predict_split

SPLITS = ("val", "test")


def evaluate(ckpt_path: str, data_root: str, split: str, output_dir: Path, batch_size: int = 2,
             num_workers: int = 0, device: str = "auto", grid_shifts: bool | None = None) -> dict:
    """Evaluate the checkpoint on `split` of `data_root`; writes results.json and predictions_<split>.csv.
    `grid_shifts`: the attention model's (`AttentionClassifier.image_logits`); None: as it was trained."""
    if split not in SPLITS:
        raise UserError(f"split={split}: evaluate on one of {list(SPLITS)}")
    model = load_predictor(ckpt_path, "cpu", grid_shifts=grid_shifts)
    if isinstance(model, WindowModel):
        results, predictions = evaluate_sliding_window(model, data_root, split, output_dir, num_workers)
    else:
        results, predictions = evaluate_attention(model, data_root, split, batch_size, num_workers, device)
    results = {**results, "checkpoint": str(ckpt_path), "data_root": str(data_root)}
    write_results(output_dir, results, None)
    write_csv_atomic(predictions, output_dir / f"predictions_{split}.csv")
    return results


def evaluate_attention(model: AttentionClassifier, data_root: str, split: str, batch_size: int, num_workers: int,
                       device: str) -> tuple[dict, pd.DataFrame]:
    hp = model.hparams
    datamodule = SlideDataModule(data_root, model.classes, hp.tile_um, hp.tile_px, batch_size=batch_size,
                                 num_workers=num_workers)
    datamodule.setup()
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    trainer = L.Trainer(accelerator="auto" if device == "auto" else device, devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.test(model, dataloaders=loader, verbose=False)  # the test step collects every prediction
    return {"model": hp.head, "classes": model.classes, split: model.results["test"]}, model.test_predictions


def evaluate_sliding_window(window_model: WindowModel, data_root: str, split: str, output_dir: Path,
                            num_workers: int) -> tuple[dict, pd.DataFrame]:
    model, choice = window_model.crop_classifier, window_model.aggregation
    datamodule = CropDataModule(data_root, model.classes, model.hparams.crop_um, model.hparams.crop_px,
                                choice["windows"]["stride_um"], choice["windows"]["min_tissue"],
                                num_workers=num_workers)
    datamodule.slides.setup()
    probs = predict_split(model, datamodule, split, output_dir / "windows" / split)
    predictions = apply_aggregation(probs, datamodule.sub_images(split), model.classes, choice)
    return ({"model": "sliding_window", "classes": model.classes,
             split: table2_of_predictions(predictions, model.classes)}, predictions)
