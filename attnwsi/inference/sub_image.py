"""One sub-image through a trained attention model: read at the model's resolution, tiled, explained.

The checkpoint alone is enough: classes, tile geometry (`tile_um` micrometres per tile, read at `tile_px`
pixels) and input normalization are in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attnwsi.data.grid import grid_region, image_to_tiles, tile_boxes
from attnwsi.data.slides import SubImage, read_region
from attnwsi.models.checkpoints import load_trained
from attnwsi.models.classifier import AttentionClassifier
from attnwsi.models.explain import Explanation, explain
from attnwsi.viz import Region, shrink


@dataclass
class SubImagePrediction:
    sub_image: SubImage
    explanation: Explanation
    tile_boxes: np.ndarray  # [T, 4] x0, y0, x1, y1 of each tile in level-0 px, row-major over the grid
    thumbnail: np.ndarray  # the sub-image, shrunk to the heatmap size
    grid_region: Region  # where the tile grid lies on the thumbnail

    @property
    def prediction(self) -> int:
        return self.explanation.prediction

    @property
    def probabilities(self) -> np.ndarray:
        return self.explanation.probabilities

    @property
    def n_tiles(self) -> int:
        return len(self.tile_boxes)


def load_model(ckpt_path: str, device: str = "auto", inference_chunk: int | None = None,
               grid_shifts: bool | None = None) -> AttentionClassifier:
    """The checkpoint's attention model in eval mode (one clear message for a truncated or foreign file)."""
    return load_trained(ckpt_path, {AttentionClassifier: for_inference(inference_chunk, grid_shifts)},
                        resolve_device(device))


def for_inference(inference_chunk: int | None, grid_shifts: bool | None = None) -> dict:
    """The settings a trained attention model is rebuilt with to predict: every weight is in its checkpoint (no
    ImageNet file is needed), it runs eagerly, `inference_chunk` tiles at a time and with or without
    `grid_shifts` (the model's `image_logits`) when given, else as it was trained."""
    return {"pretrained": False, "compile": False, **asked_settings(inference_chunk, grid_shifts)}


def asked_settings(inference_chunk: int | None, grid_shifts: bool | None) -> dict:
    """The attention model's inference settings a command was given: an `inference_chunk` of 0 or None and a
    `grid_shifts` of None are not asked (the checkpoint's own hold)."""
    settings = {}
    if inference_chunk:
        settings["inference_chunk"] = inference_chunk
    if grid_shifts is not None:  # False is a setting too
        settings["grid_shifts"] = grid_shifts
    return settings


def resolve_device(device: str) -> str:
    """`auto`: cuda where there is a GPU, else cpu; anything else as it is."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_mpp(model: AttentionClassifier) -> float:
    """The resolution (um/px) the model reads slides at."""
    return model.hparams.tile_um / model.hparams.tile_px


def thumbnail_mpp(sub_image: SubImage, heatmap_px: int) -> float:
    """The resolution (um/px) at which the sub-image's longer side is `heatmap_px` pixels, never finer than
    level 0."""
    return max(sub_image.level0_mpp, max(sub_image.box[2:]) * sub_image.level0_mpp / heatmap_px)


def scale_region(region: Region, scale: float, size: tuple[int, int]) -> Region:
    """An image region at another scale, within an image of `size` (height, width)."""
    x0, y0, x1, y1 = (round(v * scale) for v in region)
    return max(x0, 0), max(y0, 0), min(x1, size[1]), min(y1, size[0])


def predict_sub_image(model: AttentionClassifier, slide, sub_image: SubImage, heatmap_px: int) -> SubImagePrediction:
    """Read the sub-image at the model's resolution, cut it into tiles, and run the model on them.

    The thumbnail (for heatmaps) has its longer side at `heatmap_px` pixels, read again from the slide when
    that is finer than the model's resolution (so that cells are visible), never finer than level 0."""
    tile_px = model.hparams.tile_px
    image = read_region(slide, sub_image.box, sub_image.level0_mpp, model_mpp(model))
    tiles, grid = image_to_tiles(image, tile_px)
    image_size = image.shape[:2]
    mpp = thumbnail_mpp(sub_image, heatmap_px)
    if mpp < model_mpp(model):
        thumbnail = shrink(read_region(slide, sub_image.box, sub_image.level0_mpp, mpp), heatmap_px)
    else:
        thumbnail = shrink(image, heatmap_px)
    del image  # only the tiles and the thumbnail are kept
    explanation = explain(model, tiles, grid)
    region = scale_region(grid_region(image_size, grid, tile_px), thumbnail.shape[0] / image_size[0],
                          thumbnail.shape[:2])
    return SubImagePrediction(sub_image, explanation, tile_boxes(sub_image.box, image_size, grid, tile_px),
                              thumbnail, region)
