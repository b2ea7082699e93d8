"""Does the model look at the lesion? A localization score where lesion outlines are known (the synthetic haystack).

For every sub-image that touches a lesion: does its highest-attention tile touch a lesion, i.e. does the
tile's square intersect a lesion outline? The score is the fraction of those sub-images where it does, for
two readings of "highest attention": the argmax of the mean of the m attention maps (the mean map), and the
argmax of the mean map of the `top_filters` filters most relevant to the predicted class (the maps `predict`
draws; filters that speak for other classes, or for none, may well look elsewhere). For scale, the random
baseline is the same for a tile drawn uniformly at random: its expectation, the fraction of a sub-image's
tiles that touch a lesion, averaged over the sub-images (computed exactly, not sampled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track

from attnwsi.data.annotations import Lesion, slide_lesions
from attnwsi.data.slides import SubImage, open_slide
from attnwsi.inference.sub_image import predict_sub_image
from attnwsi.models.classifier import AttentionClassifier


@dataclass
class LocalizationResult:
    n: int  # sub-images that touch a lesion
    hits: int  # of those, how many have the highest tile of the mean map on a lesion
    score: float  # hits / n
    top_filters: int  # the relevant filters' map: the mean of this many filters' maps
    hits_filters: int  # how many have the highest tile of the relevant filters' map on a lesion
    score_filters: float  # hits_filters / n
    random_baseline: float  # the expected score of a uniformly random tile
    per_sub_image: dict[str, dict]  # sub_image_id -> {"hit": bool, "hit_filters": bool, "lesion_tile_fraction": float}


def tiles_on_lesions(tile_boxes: np.ndarray, lesions: list[Lesion]) -> np.ndarray:
    """[T] whether each tile's square (x0, y0, x1, y1, level-0 px) intersects a lesion outline."""
    return np.array([any(lesion.intersects((x0, y0, x1 - x0, y1 - y0)) for lesion in lesions)
                     for x0, y0, x1, y1 in tile_boxes])


def localize(attention_map: np.ndarray, tile_boxes: np.ndarray, lesions: list[Lesion]) -> tuple[bool, float]:
    """(whether the map's highest tile touches a lesion, the fraction of all tiles that do).

    `attention_map` [H', W'] and `tile_boxes` [H' W', 4] are both row-major over the grid.
    """
    on_lesion = tiles_on_lesions(tile_boxes, lesions)
    return bool(on_lesion[int(attention_map.argmax())]), float(on_lesion.mean())


def localization_score(model: AttentionClassifier, sub_images: list[SubImage], annotations_dir: str | Path,
                       top_filters: int = 3, console: Console | None = None) -> LocalizationResult:
    """The scores over the sub-images that touch a lesion of `annotations_dir/<slide_id>.geojson`."""
    per_sub_image = {}
    for sub_image in track(sub_images, "localization", console=console):
        lesions = slide_lesions(annotations_dir, sub_image.slide_id, model.classes) or []
        lesions = [lesion for lesion in lesions if lesion.intersects(sub_image.box)]
        if not lesions:
            continue
        slide = open_slide(sub_image.slide_path)
        try:
            prediction = predict_sub_image(model, slide, sub_image, heatmap_px=1)  # no heatmaps: a 1-px thumbnail
        finally:
            slide.close()
        explanation = prediction.explanation
        hit, fraction = localize(explanation.mean_map, prediction.tile_boxes, lesions)
        hit_filters, _ = localize(explanation.relevant_map(top_filters), prediction.tile_boxes, lesions)
        per_sub_image[sub_image.sub_image_id] = {"hit": hit, "hit_filters": hit_filters,
                                                 "lesion_tile_fraction": fraction}
    n = len(per_sub_image)
    hits = sum(r["hit"] for r in per_sub_image.values())
    hits_filters = sum(r["hit_filters"] for r in per_sub_image.values())
    baseline = float(np.mean([r["lesion_tile_fraction"] for r in per_sub_image.values()])) if n else float("nan")
    return LocalizationResult(n, hits, hits / n if n else float("nan"), top_filters, hits_filters,
                              hits_filters / n if n else float("nan"), baseline, per_sub_image)
