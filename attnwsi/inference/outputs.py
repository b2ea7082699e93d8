"""What `predict` writes for a sub-image and a slide: table rows, the slide rule, heatmaps and QuPath GeoJSON.

A slide is predicted by the highest-risk rule: it takes the highest-risk class (risk = the order of the
classes) predicted for any of its sub-images, and the probabilities of the sub-image that decided it (of
those predicting that class, the most confident one; named in `decided_by`).

Maps are shown and measured as in the paper's Figure 5, each normalized to a maximum of 1 within its
sub-image; `attention_mean` is the mean of the m maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnwsi.data.annotations import Lesion
from attnwsi.inference.sub_image import SubImagePrediction
from attnwsi.inference.sub_image_windows import WindowPrediction
from attnwsi.io import write_json_atomic, write_png_atomic
from attnwsi.viz import ALPHA, COLORMAP, heatmap_picture, normalize_map


@dataclass
class HeatmapStyle:
    """How the outputs look (see conf/predict.yaml)."""

    top_filters: int = 3
    heatmap_px: int = 1024
    colormap: str = COLORMAP
    alpha: float = ALPHA


def prediction_row(p: SubImagePrediction | WindowPrediction, classes: list[str]) -> dict:
    """A sub-image's row of `predictions.csv` (`n_tiles`: the attention model's tiles, or the sliding window's
    tissue windows)."""
    sub = p.sub_image
    x, y, width, height = sub.box
    row = dict(level="sub_image", slide_id=sub.slide_id, sub_image_id=sub.sub_image_id, decided_by="",
               slide_path=sub.slide_path, x=x, y=y, width=width, height=height, n_tiles=p.n_tiles,
               label=sub.label or "", prediction=classes[p.prediction])
    row.update({f"p_{c}": float(v) for c, v in zip(classes, p.probabilities)})
    return row


def slide_row(rows: list[dict], classes: list[str], slide_size: tuple[int, int]) -> dict:
    """The slide's row by the highest-risk rule over its sub-image rows (see the module docstring)."""
    predicted = classes[max(classes.index(r["prediction"]) for r in rows)]
    deciding = max((r for r in rows if r["prediction"] == predicted), key=lambda r: r[f"p_{predicted}"])
    labels = [r["label"] for r in rows if r["label"]]
    return dict(deciding, level="slide", sub_image_id="", decided_by=deciding["sub_image_id"], x=0, y=0,
                width=slide_size[0], height=slide_size[1], n_tiles=sum(r["n_tiles"] for r in rows),
                label=max(labels, key=classes.index) if labels else "")


def write_heatmaps(p: SubImagePrediction, folder: Path, style: HeatmapStyle, classes: list[str],
                   lesions: list[Lesion] | None = None) -> None:
    """`<sub_image_id>_mean.png` and `<sub_image_id>_filter<k>.png` for the most relevant filters: the
    sub-image and its overlay side by side, with the tile grid, a colour bar and the `lesions`' outlines."""
    folder.mkdir(parents=True, exist_ok=True)
    explanation = p.explanation
    maps = {"mean": explanation.mean_map}
    maps.update({f"filter{k:02d}": explanation.attention_maps[k] for k in explanation.top_filters(style.top_filters)})
    outlines = thumbnail_outlines(p, lesions)
    predicted = explanation.prediction
    label = f", label {p.sub_image.label}" if p.sub_image.label else ""
    for name, attention in maps.items():
        title = (f"{p.sub_image.sub_image_id}: {name} attention; predicted {classes[predicted]} "
                 f"({explanation.probabilities[predicted]:.2f}){label}")
        picture = heatmap_picture(p.thumbnail, normalize_map(attention), p.grid_region, title, outlines,
                                  style.colormap, style.alpha)
        write_png_atomic(folder / f"{p.sub_image.sub_image_id}_{name}.png", picture, compress_level=1)  # fast


def write_window_heatmaps(p: WindowPrediction, folder: Path, style: HeatmapStyle, classes: list[str],
                          lesions: list[Lesion] | None = None) -> None:
    """The sliding window's maps: `<sub_image_id>_lesion.png`, each tissue window's probability of any lesion
    (1 - p(normal)), and `<sub_image_id>_<class>.png`, its probability of the predicted class when that is a
    lesion; the sub-image and the overlay side by side, windows drawn as their central stride squares."""
    folder.mkdir(parents=True, exist_ok=True)
    maps = {"lesion": ("lesion probability", 1 - p.window_map[..., 0])}
    if p.prediction > 0:
        maps[classes[p.prediction]] = (f"p({classes[p.prediction]})", p.window_map[..., p.prediction])
    label = f", label {p.sub_image.label}" if p.sub_image.label else ""
    empty = p.window_map.sum(-1) == 0  # no tissue window there: no colour
    for name, (caption, values) in maps.items():
        title = (f"{p.sub_image.sub_image_id}: {p.n_tiles} windows; predicted {classes[p.prediction]} "
                 f"({p.probabilities[p.prediction]:.2f} of the confident windows){label}")
        picture = heatmap_picture(p.thumbnail, np.where(empty, 0, values), p.map_region, title,
                                  thumbnail_outlines(p, lesions), style.colormap, style.alpha, caption=caption,
                                  bar_label=f"{caption} per window")
        write_png_atomic(folder / f"{p.sub_image.sub_image_id}_{name}.png", picture, compress_level=1)


def thumbnail_outlines(p: SubImagePrediction | WindowPrediction, lesions: list[Lesion] | None) -> list[np.ndarray]:
    """The lesions' outlines in the sub-image thumbnail's pixels."""
    x, y, width, height = p.sub_image.box
    scale = np.array([p.thumbnail.shape[1] / width, p.thumbnail.shape[0] / height])
    return [(outline - (x, y)) * scale for lesion in lesions or [] for outline in lesion.outlines]


def square(x0: float, y0: float, x1: float, y1: float) -> dict:
    corners = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [[[round(float(u), 2), round(float(v), 2)] for u, v in corners]]}


def geojson_features(p: SubImagePrediction, classes: list[str], top_filters: int) -> list[dict]:
    """The sub-image as a QuPath annotation classified by its prediction, and one detection per tile.

    A tile's measurements: `attention_mean` and `attention_filter<k>` for the most relevant filters, each
    map normalized to a maximum of 1 within the sub-image.
    """
    explanation = p.explanation
    x, y, width, height = p.sub_image.box
    measurements = {"attention_mean": normalize_map(explanation.mean_map).ravel()}
    for k in explanation.top_filters(top_filters):
        measurements[f"attention_filter{k:02d}"] = normalize_map(explanation.attention_maps[k]).ravel()
    annotation = {"type": "Feature", "geometry": square(x, y, x + width, y + height),
                  "properties": {"objectType": "annotation", "name": p.sub_image.sub_image_id,
                                 "classification": {"name": classes[explanation.prediction]},
                                 "measurements": {f"p_{c}": float(v)
                                                  for c, v in zip(classes, explanation.probabilities)}}}
    tiles = [{"type": "Feature", "geometry": square(*tile),
              "properties": {"objectType": "detection",
                             "measurements": {name: round(float(v[t]), 4) for name, v in measurements.items()}}}
             for t, tile in enumerate(p.tile_boxes)]
    return [annotation, *tiles]


def window_geojson_features(p: WindowPrediction, classes: list[str]) -> list[dict]:
    """The sub-image as a QuPath annotation classified by the sliding window's label (measuring the classes'
    shares of its confident windows), and one detection per tissue window measuring its p_<class>."""
    x, y, width, height = p.sub_image.box
    annotation = {"type": "Feature", "geometry": square(x, y, x + width, y + height),
                  "properties": {"objectType": "annotation", "name": p.sub_image.sub_image_id,
                                 "classification": {"name": classes[p.prediction]},
                                 "measurements": {f"p_{c}": float(v) for c, v in zip(classes, p.probabilities)}}}
    windows = [{"type": "Feature", "geometry": square(*box),
                "properties": {"objectType": "detection", "classification": {"name": classes[int(probs.argmax())]},
                               "measurements": {f"p_{c}": round(float(v), 4) for c, v in zip(classes, probs)}}}
               for box, probs in zip(p.window_boxes, p.window_probabilities)]
    return [annotation, *windows]


def write_geojson(features: list[dict], path: Path) -> None:
    """A FeatureCollection that QuPath imports (drag the file onto the slide)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"type": "FeatureCollection", "features": features}, indent=None)
