"""Does the tile grid's offset decide the misses? Test-time grid shifts on trained attention checkpoints.

The attention model cuts each image into a fixed grid of tiles (`attnwsi.data.grid.image_to_tiles`, centred).
The default's be_with_dysplasia misses are small lesions that this grid cuts in two or four
(experiments/pretrain/README.md, 2026-11-29, commit 88d434c; experiments/haystack/README.md, 2026-11-30,
commit 9a77252).
This scores each checkpoint on val and test with the grid as trained and with the grid moved by half a tile
down, right and both (`attnwsi.models.grid_shifts`), and with the class probabilities averaged over those
four grids (test-time augmentation by grid offset; what `model.grid_shifts=true` answers):

    python experiments/haystack/shifted_grids.py RUN/checkpoints/epoch_016.ckpt ... \
        --data-root $ATTNWSI_CACHE/haystack_n320_s0

Prints mean F1 per checkpoint, split and rule; writes the per-image probabilities to --out (a pickle per checkpoint
and split) and the scores to --out/shifted_grids.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from attnwsi.data.datamodule import SlideDataModule
from attnwsi.data.grid import image_to_tiles
from attnwsi.data.slides import SlideHandles, read_region
from attnwsi.inference.sub_image_windows import load_predictor
from attnwsi.metrics import table2_of_labels
from attnwsi.models.grid_shifts import shifted_grids

GRIDS = ("as trained", "down", "right", "down right")


def probabilities(model, data_root: str, split: str) -> pd.DataFrame:
    """Per image of the split: the label and the class probabilities under each grid offset."""
    hp = model.hparams
    data = SlideDataModule(data_root, model.classes, hp.tile_um, hp.tile_px)
    data.setup()
    slides, rows = SlideHandles(), []
    for sub_image in track(data.datasets[split].sub_images, f"{split} images"):
        image = read_region(slides(sub_image.slide_path), sub_image.box, sub_image.level0_mpp, data.mpp)
        row = {"sub_image_id": sub_image.sub_image_id, "label": model.classes.index(sub_image.label)}
        tiles, grid = image_to_tiles(image, hp.tile_px)
        for name, (view_tiles, view_grid) in zip(GRIDS, [(tiles, grid), *shifted_grids(tiles, grid)]):
            with torch.no_grad():
                logits, _ = model(view_tiles, view_grid)
            row[name] = logits.float().softmax(0).numpy()
        rows.append(row)
    return pd.DataFrame(rows)


def scores(table: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    labels = table["label"].to_numpy()
    rules = {name: np.stack(table[name]) for name in GRIDS}
    rules["mean of the 4 grids"] = np.mean([rules[name] for name in GRIDS], axis=0)  # model.grid_shifts=true
    return {rule: table2_of_labels(labels, p.argmax(1), classes)["mean"]["f1"] for rule, p in rules.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", type=Path, default=Path("outputs/shifted_grids"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for ckpt in args.checkpoints:
        model = load_predictor(str(ckpt), "cpu")
        name = f"{ckpt.parent.parent.name}/{ckpt.stem}"
        for split in ("val", "test"):
            table = probabilities(model, args.data_root, split)
            table.to_pickle(args.out / f"{ckpt.parent.parent.name}_{ckpt.stem}_{split}.pkl")
            results.append({"checkpoint": name, "split": split, **scores(table, model.classes)})
    frame = pd.DataFrame(results)
    frame.to_csv(args.out / "shifted_grids.csv", index=False)
    for split in ("val", "test"):
        part = frame[frame["split"] == split].drop(columns="split").set_index("checkpoint")
        part.loc["mean"] = part.mean()
        part.loc["lowest"] = part.iloc[:-1].min()
        table = Table(title=f"{split} mean F1 by tile-grid offset")
        table.add_column("checkpoint")
        for column in part.columns:
            table.add_column(column, justify="right")
        for index, values in part.iterrows():
            table.add_row(index, *(f"{v:.3f}" for v in values))
        Console().print(table)


if __name__ == "__main__":
    main()
