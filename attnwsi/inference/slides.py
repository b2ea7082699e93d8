"""Predicting slides: a trained model over every sub-image of every slide, outputs written.

The model is an attention model's checkpoint, or a sliding-window one's (used with the aggregation its run
chose, `attnwsi.inference.sub_image_windows`): the same table, pictures, GeoJSON and page come out of both.

With slide files, each slide's tissue is found and cut into sub-images as `preprocess` does
(`<slide_id>_<k>`); with a manifest, its sub-images are used as they are and their labels are kept. Writes
into `out`, per slide as it goes: `heatmaps/<slide_id>/<sub_image_id>_mean.png` (and `_filter<k>.png`) and
`geojson/<slide_id>.geojson`, then its record `done/<slide_id>.json`; at the end `predictions.csv` (see
`attnwsi.inference.outputs`), `thumbnails/<slide_id>.jpg` and the page `index.html` (`attnwsi.inference.page`).
A slide that fails is reported in `failures` and skipped; a rerun skips the slides already done.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from attnwsi.console import UserError
from attnwsi.data.annotations import annotation_file, slide_lesions
from attnwsi.data.layout import DataRoot
from attnwsi.data.manifest import read_sub_images
from attnwsi.data.slides import SlideError, SubImage, group_by_slide, open_slide, read_region, slide_files
from attnwsi.data.tissue import DEFAULT_TISSUE, TissueParams, find_tissue, no_tissue_error
from attnwsi.inference.outputs import (
    HeatmapStyle,
    geojson_features,
    prediction_row,
    slide_row,
    window_geojson_features,
    write_geojson,
    write_heatmaps,
    write_window_heatmaps,
)
from attnwsi.inference.page import write_index
from attnwsi.inference.sub_image import predict_sub_image
from attnwsi.inference.sub_image_windows import WindowModel, load_predictor, predict_sub_image_windows
from attnwsi.inference.windows import aggregation_file
from attnwsi.io import file_identity, recorded, write_atomic, write_csv_atomic
from attnwsi.models.classifier import AttentionClassifier


@dataclass
class PredictResult:
    predictions: pd.DataFrame
    failures: dict[str, str]  # slide id -> reason


def slide_sub_images(slide, slide_id: str, path: str, default_mpp: float | None,
                     tissue: TissueParams) -> list[SubImage]:
    """The slide's tissue pieces as sub-images, as `preprocess` finds them (`<slide_id>_<k>`)."""
    pieces = find_tissue(slide, path, default_mpp, tissue)
    if not pieces.boxes:
        raise no_tissue_error(path)
    return [SubImage(f"{slide_id}_{k}", slide_id, path, box, pieces.level0_mpp) for k, box in enumerate(pieces.boxes)]


def predict_slide(model: AttentionClassifier | WindowModel, slide_id: str, path: str, sub_images: list[SubImage] | None,
                  out: Path, style: HeatmapStyle, default_mpp: float | None, tissue: TissueParams,
                  progress: Progress, annotations: str | Path | None = None) -> list[dict]:
    """One slide: its sub-image rows and slide row; writes its heatmaps (with the lesion outlines of
    `annotations/<slide_id>.geojson` where there is one) and its GeoJSON."""
    lesions = slide_lesions(annotations, slide_id, model.classes)
    slide = open_slide(path)
    try:
        if sub_images is None:
            sub_images = slide_sub_images(slide, slide_id, path, default_mpp, tissue)
        task = progress.add_task(f"  {slide_id}", total=len(sub_images))
        rows, features = [], []
        for sub_image in sub_images:
            if isinstance(model, WindowModel):
                p = predict_sub_image_windows(model, slide, sub_image, style.heatmap_px)
                features += window_geojson_features(p, model.classes)
                write_window_heatmaps(p, out / "heatmaps" / slide_id, style, model.classes, lesions)
            else:
                p = predict_sub_image(model, slide, sub_image, style.heatmap_px)
                features += geojson_features(p, model.classes, style.top_filters)
                write_heatmaps(p, out / "heatmaps" / slide_id, style, model.classes, lesions)
            rows.append(prediction_row(p, model.classes))
            progress.advance(task)
        progress.remove_task(task)
        rows.append(slide_row(rows, model.classes, slide.dimensions))
        write_thumbnail(slide, sub_images[0].level0_mpp, out / "thumbnails" / f"{slide_id}.jpg")
    finally:
        slide.close()
    write_geojson(features, out / "geojson" / f"{slide_id}.geojson")
    return rows


def predict(ckpt_path: str, out: str, slides: list[str] | None = None, manifest: str | None = None,
            split: str | None = None, default_mpp: float | None = None, device: str = "auto",
            inference_chunk: int | None = None, grid_shifts: bool | None = None, style: HeatmapStyle | None = None,
            tissue: TissueParams = DEFAULT_TISSUE, console: Console | None = None,
            overwrite: bool = False, annotations: str | None = None) -> PredictResult:
    """Predict every slide (or manifest sub-image) and write the outputs into `out` (see the module docstring).

    Lesion outlines are drawn on the heatmaps from `annotations` (QuPath GeoJSON per slide; with a manifest,
    by default its data root's `annotations/`). Each finished slide is recorded in `out/done/<slide_id>.json`;
    a rerun into the same `out` skips the slides whose record matches (same checkpoint, slide file,
    sub-images and settings), unless `overwrite`.
    """
    if (slides is None) == (manifest is None):
        raise UserError("give either slides=[...] or manifest=CSV")
    style = style or HeatmapStyle()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite and (out_dir / "done").exists():
        shutil.rmtree(out_dir / "done")
    model = load_predictor(ckpt_path, device, inference_chunk, grid_shifts)
    windows = isinstance(model, WindowModel)
    if manifest is not None:
        annotations = annotations or DataRoot(Path(manifest).parent).annotations
        given = group_by_slide(read_sub_images(manifest, split))
        jobs = {slide_id: (subs[0].slide_path, subs) for slide_id, subs in given.items()}
    else:
        jobs = {slide_id: (path, None) for slide_id, path in slide_files(slides).items()}
    rows, failures = [], {}
    with Progress(console=console) as progress:
        for slide_id, (path, sub_images) in progress.track(jobs.items(), description="slides"):
            annotation = annotation_file(annotations, slide_id)
            key = {"checkpoint": file_identity(ckpt_path), "slide": file_identity(path), "style": asdict(style),
                   "aggregation": file_identity(aggregation_file(ckpt_path)) if windows else None,
                   "sub_images": [asdict(s) for s in sub_images] if sub_images else None,
                   "default_mpp": default_mpp, "tissue": asdict(tissue), "grid_shifts": grid_shifts,
                   "annotations": file_identity(annotation) if annotation else None}
            try:
                slide_rows, _ = recorded(out_dir / "done" / f"{slide_id}.json", key, partial(
                    predict_slide, model, slide_id, path, sub_images, out_dir, style, default_mpp, tissue, progress,
                    annotations))
                rows += slide_rows
            except Exception as err:  # one bad slide must not stop the others; its reason is reported
                failures[slide_id] = str(err) if isinstance(err, (SlideError, ValueError)) else (
                    f"{path}: {type(err).__name__}: {err}")
    predictions = pd.DataFrame(rows)
    write_csv_atomic(predictions, out_dir / "predictions.csv")
    if len(predictions):
        write_index(out_dir, predictions, model.classes, "lesion" if isinstance(model, WindowModel) else "mean")
    return PredictResult(predictions, failures)


def write_thumbnail(slide, level0_mpp: float, path: Path, max_px: int = 512) -> None:
    """The whole slide, its longer side at `max_px`, as a JPEG (the predictions page's thumbnail)."""
    width, height = slide.dimensions
    picture = read_region(slide, (0, 0, width, height), level0_mpp, level0_mpp * max(width, height) / max_px)
    write_atomic(path, lambda tmp: Image.fromarray(picture).save(tmp, format="JPEG", quality=85))
