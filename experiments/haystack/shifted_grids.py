"""Test mean F1 of an attention checkpoint with the tile grid at several offsets at test time.

The haystack's hardest test images hold a lesion of 28-30 um, half a tile: the fixed grid often splits it
between two or four tiles, while the sliding window's half-tile stride always has one window around it. This
asks whether averaging the class probabilities over four grids (offsets 0 and half a tile, down and across)
would recover such lesions without retraining:

    python experiments/haystack/shifted_grids.py CKPT [CKPT ...] --data-root $ATTNWSI_CACHE/haystack_n320_s0

Prints, per checkpoint, the test mean F1 and per-class F1 with the training grid alone and with the mean over
the four grids.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from attnwsi.data.datamodule import SlideDataModule
from attnwsi.data.grid import BACKGROUND, image_to_tiles
from attnwsi.data.slides import read_region
from attnwsi.inference.sub_image import load_model
from attnwsi.metrics import table2_of_labels


def shifted_probabilities(model, dataset, sub_image) -> np.ndarray:
    """Softmax [4, classes] for the grid offsets (0, 0), (0, t/2), (t/2, 0), (t/2, t/2) (rows, columns)."""
    tile = model.hparams.tile_px
    image = read_region(dataset._slides(sub_image.slide_path), sub_image.box, sub_image.level0_mpp, dataset.mpp)
    height, width = image.shape[:2]
    probabilities = []
    for top, left in [(0, 0), (0, tile // 2), (tile // 2, 0), (tile // 2, tile // 2)]:
        # a canvas one tile larger keeps the grid's centring, so the content moves by (top, left) against it
        canvas = np.full((height + tile, width + tile, 3), BACKGROUND, np.uint8)
        canvas[top:top + height, left:left + width] = image
        tiles, grid = image_to_tiles(image if (top, left) == (0, 0) else canvas, tile)
        logits, _ = model(tiles, grid)
        probabilities.append(torch.softmax(logits, 0).numpy())
    return np.stack(probabilities)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data-root", required=True)
    args = parser.parse_args()
    for ckpt in args.checkpoints:
        model = load_model(ckpt, "cpu")
        datamodule = SlideDataModule(args.data_root, model.classes, model.hparams.tile_um, model.hparams.tile_px)
        datamodule.setup()
        dataset = datamodule.datasets["test"]
        with torch.no_grad():
            probabilities = np.stack([shifted_probabilities(model, dataset, s) for s in dataset.sub_images])
        labels = np.array([dataset.class_index[s.label] for s in dataset.sub_images])
        for name, probs in [("training grid", probabilities[:, 0]), ("mean of 4 grids", probabilities.mean(1))]:
            table = table2_of_labels(labels, probs.argmax(1), model.classes)
            per_class = " ".join(f"{c} {v['f1']:.2f}" for c, v in table["per_class"].items())
            print(f"{ckpt}: {name}: mean F1 {table['mean']['f1']:.3f} ({per_class})")


if __name__ == "__main__":
    main()
