"""One sub-image through the sliding-window baseline: its tissue windows classified, aggregated into one label.

A `WindowModel` is a crop classifier's checkpoint together with the aggregation its training run chose on
validation (`aggregation.json`: the rule, a threshold per class, the window geometry). For a sub-image, every
tissue window (`sub_image_windows`) gets class probabilities, and the rule turns the confident ones into the
sub-image's label; its "probabilities" are the classes' shares of the confident windows (DeepSlide's class
percentages), not a model's class probabilities as for the attention model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnwsi.data.crops import sub_image_windows, window_grid
from attnwsi.data.slides import SubImage, read_region
from attnwsi.inference.sub_image import asked_settings, for_inference, resolve_device, thumbnail_mpp
from attnwsi.inference.windows import aggregate, predict_windows, read_aggregation
from attnwsi.models.checkpoints import CheckpointError, load_trained
from attnwsi.models.classifier import AttentionClassifier
from attnwsi.models.crop_classifier import CropClassifier
from attnwsi.viz import Region, shrink


@dataclass
class WindowModel:
    crop_classifier: CropClassifier
    aggregation: dict  # aggregation.json

    @property
    def classes(self) -> list[str]:
        return self.crop_classifier.classes

    @property
    def windows(self) -> dict:
        """crop_um, crop_px, stride_um, min_tissue"""
        return self.aggregation["windows"]


@dataclass
class WindowPrediction:
    sub_image: SubImage
    prediction: int  # class index
    probabilities: np.ndarray  # [C] the classes' shares of the confident windows
    window_boxes: np.ndarray  # [N, 4] x0, y0, x1, y1 of each tissue window in level-0 px
    window_probabilities: np.ndarray  # [N, C] the crop classifier's class probabilities of each window
    window_map: np.ndarray  # [rows, cols, C] the windows' probabilities on the stride grid, 0 where no tissue
    thumbnail: np.ndarray  # the sub-image, its longer side at most heatmap_px
    map_region: Region  # where the stride grid of `window_map` lies on the thumbnail

    @property
    def n_tiles(self) -> int:
        return len(self.window_boxes)


def load_predictor(ckpt_path: str, device: str = "auto", inference_chunk: int | None = None,
                   grid_shifts: bool | None = None) -> AttentionClassifier | WindowModel:
    """Either model's checkpoint (read once), ready to predict: an attention model in eval mode, or a crop
    classifier with the aggregation its training run chose (`aggregation.json` beside `checkpoints/`).
    `inference_chunk` and `grid_shifts` are the attention model's settings: asked of a crop classifier, they
    are an error rather than silently ignored."""
    model = load_trained(ckpt_path, {AttentionClassifier: for_inference(inference_chunk, grid_shifts),
                                     CropClassifier: {"pretrained": False}}, resolve_device(device))
    if isinstance(model, CropClassifier):
        asked = [f"{name}={value}" for name, value in asked_settings(inference_chunk, grid_shifts).items()]
        if asked:
            raise CheckpointError(f"{ckpt_path} is a sliding-window checkpoint (a crop classifier), which answers "
                                  f"with its windows' aggregation: {', '.join(asked)} applies to attention "
                                  "checkpoints only; leave it out")
        return WindowModel(model, read_aggregation(ckpt_path))
    return model


def predict_sub_image_windows(model: WindowModel, slide, sub_image: SubImage, heatmap_px: int,
                              batch_size: int = 64) -> WindowPrediction:
    """Classify the sub-image's tissue windows and aggregate them (see the module docstring)."""
    geometry, classes = model.windows, model.classes
    windows = sub_image_windows(slide, sub_image, geometry["crop_um"], geometry["crop_px"], geometry["stride_um"],
                                geometry["min_tissue"])
    corners, probs = predict_windows(model.crop_classifier, windows, batch_size)
    choice = model.aggregation
    label, shares = aggregate(probs, classes, choice["rule"], choice["thresholds"], choice["min_windows"])
    # the windows on their stride grid (level-0 px)
    x, y, width, height = sub_image.box
    grid = window_grid(sub_image, geometry["crop_um"], geometry["crop_px"], geometry["stride_um"])
    rows = np.round((corners[:, 1] - y) / grid.stride).astype(int)
    cols = np.round((corners[:, 0] - x) / grid.stride).astype(int)
    window_map = np.zeros((grid.rows, grid.cols, len(classes)), np.float32)
    window_map[rows, cols] = probs
    mpp = thumbnail_mpp(sub_image, heatmap_px)
    thumbnail = shrink(read_region(slide, sub_image.box, sub_image.level0_mpp, mpp), heatmap_px)
    # each window drawn as the stride x stride square at its centre
    scale_x, scale_y = thumbnail.shape[1] / width, thumbnail.shape[0] / height
    offset = (grid.side - grid.stride) / 2
    region = (max(0, round(offset * scale_x)), max(0, round(offset * scale_y)),
              min(thumbnail.shape[1], round((offset + grid.cols * grid.stride) * scale_x)),
              min(thumbnail.shape[0], round((offset + grid.rows * grid.stride) * scale_y)))
    if region[2] <= region[0] or region[3] <= region[1]:  # a sub-image smaller than a window: colour all of it
        region = (0, 0, thumbnail.shape[1], thumbnail.shape[0])
    boxes = np.concatenate([corners, corners + grid.side], axis=1).astype(np.float64)
    return WindowPrediction(sub_image, label, shares, boxes, probs, window_map, thumbnail, region)

