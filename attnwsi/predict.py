"""python -m attnwsi.predict ckpt_path=CKPT (slides=[A.svs,B.tiff,DIR] | manifest=CSV [split=test]) out=DIR

Runs a trained AttentionClassifier over slides from its checkpoint alone: classes, tile geometry (`tile_um`
micrometres per tile, read at `tile_px` pixels) and input normalization are in the checkpoint. With `slides=`
(files, or folders of them), each slide's tissue is found and cut into sub-images as `preprocess` does; with
`manifest=` (a `preprocess` manifest.csv), its sub-images are used as they are and their labels are kept.
Writes into OUT:

| file | what |
|---|---|
| `predictions.csv` | a row per sub-image (`level` sub_image) and per slide (`level` slide), see below |
| `heatmaps/<slide_id>/<sub_image_id>_mean.png` | the mean attention map over the sub-image (also `_filter<k>.png`) |
| `geojson/<slide_id>.geojson` | for QuPath: tiles as detections with attention measurements; sub-images, annotations |

`predictions.csv` columns: level, slide_id, sub_image_id, decided_by, slide_path, x, y, width, height (the
level-0 box; a slide row: the whole slide), n_tiles, label (from a manifest), prediction, p_<class>. In the
GeoJSON, a sub-image annotation is classified by its prediction and measures its p_<class>.

A slide is predicted by the highest-risk rule: it takes the highest-risk class (risk = the order of the
classes) predicted for any of its sub-images, and the probabilities of the sub-image that decided it (of
those predicting that class, the most confident one; named in `decided_by`).

Maps are shown and measured as in the paper's Figure 5, each normalized to a maximum of 1 within its
sub-image; `attention_mean` is the mean of the m maps. The heatmaps keep the sub-image's aspect ratio: the
tile grid covers the sub-image's centre (`image_to_tiles` splits the left-over border evenly), and the thin
border outside it is drawn without colour. A slide that fails is reported and skipped; the command then
exits with status 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from attnwsi.data.grid import image_to_tiles
from attnwsi.data.manifest import find_slide_files, write_atomic, write_csv_atomic
from attnwsi.data.slides import SlideError, open_slide, print_skipped_slides, read_region, slide_id_of, slide_mpp
from attnwsi.data.tissue import DEFAULT_TISSUE, Box, TissueParams, sub_image_boxes, tissue_mask
from attnwsi.models.classifier import AttentionClassifier
from attnwsi.viz import Explanation, Region, explain, normalize_map, overlay, shrink

console = Console()


@dataclass
class SubImage:
    """A box (x, y, width, height in level-0 pixels) of a slide whose level-0 pixel size is `level0_mpp`."""

    sub_image_id: str
    slide_id: str
    slide_path: str
    box: Box
    level0_mpp: float
    label: str | None = None


@dataclass
class SubImagePrediction:
    sub_image: SubImage
    explanation: Explanation
    tile_boxes: np.ndarray  # [T, 4] x0, y0, x1, y1 of each tile in level-0 px, row-major over the grid
    thumbnail: np.ndarray  # the sub-image, shrunk to the heatmap size
    grid_region: Region  # where the tile grid lies on the thumbnail


@dataclass
class Options:
    """How the outputs look (see conf/predict.yaml)."""

    top_filters: int = 3
    heatmap_px: int = 1024
    colormap: str = "jet"
    alpha: float = 0.5


@dataclass
class PredictResult:
    predictions: pd.DataFrame
    failures: dict[str, str]  # slide id -> reason


# ------------------------------------------------------------------------------------------ the model


def load_model(ckpt_path: str, device: str = "auto", inference_chunk: int | None = None) -> AttentionClassifier:
    """The checkpoint's model in eval mode. Its weights are all in the checkpoint, so no ImageNet file is needed."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AttentionClassifier.load_from_checkpoint(ckpt_path, map_location=device, pretrained=False)
    if inference_chunk:
        model.hparams.inference_chunk = inference_chunk
    return model.eval()


def model_mpp(model: AttentionClassifier) -> float:
    """The resolution (um/px) the model reads slides at."""
    return model.hparams.tile_um / model.hparams.tile_px


# ------------------------------------------------------------------------------------------ geometry


def grid_region(image_size: tuple[int, int], grid: tuple[int, int], tile_px: int) -> Region:
    """The pixels (x0, y0, x1, y1) of an image [height, width] that `image_to_tiles` cuts into its tile grid.

    The grid is centred (the left-over border split evenly); an image smaller than a tile is padded at its
    bottom and right, so there the grid reaches beyond the image.
    """
    height, width = (max(side, tile_px) for side in image_size)
    rows, cols = grid
    top, left = (height - rows * tile_px) // 2, (width - cols * tile_px) // 2
    return left, top, left + cols * tile_px, top + rows * tile_px


def tile_boxes(box: Box, image_size: tuple[int, int], grid: tuple[int, int], tile_px: int) -> np.ndarray:
    """Each tile's square on the slide, [T, 4] (x0, y0, x1, y1) in level-0 px, row-major; clipped to `box`.

    `image_size` is the (height, width) of the level-0 `box` as read (`read_region` maps the box exactly
    onto the image's pixels).
    """
    x, y, width, height = box
    scale_x, scale_y = width / image_size[1], height / image_size[0]
    left, top = grid_region(image_size, grid, tile_px)[:2]
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    x0 = x + (left + cols.ravel() * tile_px) * scale_x
    y0 = y + (top + rows.ravel() * tile_px) * scale_y
    boxes = np.stack([x0, y0, x0 + tile_px * scale_x, y0 + tile_px * scale_y], axis=1)
    return np.clip(boxes, [x, y, x, y], [x + width, y + height, x + width, y + height])


def scale_region(region: Region, scale: float, size: tuple[int, int]) -> Region:
    """An image region at another scale, within an image of `size` (height, width)."""
    x0, y0, x1, y1 = (round(v * scale) for v in region)
    return max(x0, 0), max(y0, 0), min(x1, size[1]), min(y1, size[0])


# ------------------------------------------------------------------------------------------ one sub-image


def predict_sub_image(model: AttentionClassifier, slide, sub_image: SubImage, heatmap_px: int) -> SubImagePrediction:
    """Read the sub-image at the model's resolution, cut it into tiles, and run the model on them."""
    tile_px = model.hparams.tile_px
    image = read_region(slide, sub_image.box, sub_image.level0_mpp, model_mpp(model))
    tiles, grid = image_to_tiles(image, tile_px)
    image_size = image.shape[:2]
    thumbnail = shrink(image, heatmap_px)
    del image  # only the tiles and the thumbnail are kept
    explanation = explain(model, tiles, grid)
    region = scale_region(grid_region(image_size, grid, tile_px), thumbnail.shape[0] / image_size[0],
                          thumbnail.shape[:2])
    return SubImagePrediction(sub_image, explanation, tile_boxes(sub_image.box, image_size, grid, tile_px),
                              thumbnail, region)


def prediction_row(p: SubImagePrediction, classes: list[str]) -> dict:
    sub = p.sub_image
    x, y, width, height = sub.box
    row = dict(level="sub_image", slide_id=sub.slide_id, sub_image_id=sub.sub_image_id, decided_by="",
               slide_path=sub.slide_path, x=x, y=y, width=width, height=height, n_tiles=len(p.tile_boxes),
               label=sub.label or "", prediction=classes[p.explanation.prediction])
    row.update({f"p_{c}": float(v) for c, v in zip(classes, p.explanation.probabilities)})
    return row


def slide_row(rows: list[dict], classes: list[str], slide_size: tuple[int, int]) -> dict:
    """The slide's row by the highest-risk rule over its sub-image rows (see the module docstring)."""
    predicted = classes[max(classes.index(r["prediction"]) for r in rows)]
    deciding = max((r for r in rows if r["prediction"] == predicted), key=lambda r: r[f"p_{predicted}"])
    labels = [r["label"] for r in rows if r["label"]]
    return dict(deciding, level="slide", sub_image_id="", decided_by=deciding["sub_image_id"], x=0, y=0,
                width=slide_size[0], height=slide_size[1], n_tiles=sum(r["n_tiles"] for r in rows),
                label=max(labels, key=classes.index) if labels else "")


def write_heatmaps(p: SubImagePrediction, folder: Path, options: Options) -> None:
    """`<sub_image_id>_mean.png` and `<sub_image_id>_filter<k>.png` for the most relevant filters."""
    folder.mkdir(parents=True, exist_ok=True)
    explanation = p.explanation
    maps = {"mean": explanation.mean_map}
    maps.update({f"filter{k:02d}": explanation.attention_maps[k] for k in explanation.top_filters(options.top_filters)})
    for name, attention in maps.items():
        picture = overlay(p.thumbnail, normalize_map(attention), p.grid_region, options.colormap, options.alpha)
        Image.fromarray(picture).save(folder / f"{p.sub_image.sub_image_id}_{name}.png", compress_level=1)  # fast


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


# ------------------------------------------------------------------------------------------ slides


def detect_sub_images(slide, slide_id: str, path: str, default_mpp: float | None,
                      tissue: TissueParams) -> list[SubImage]:
    """The slide's tissue pieces as sub-images, as `preprocess` finds them (`<slide_id>_<k>`)."""
    level0_mpp = slide_mpp(slide, path, default_mpp)
    whole = (0, 0, *slide.dimensions)
    mask = tissue_mask(read_region(slide, whole, level0_mpp, tissue.mask_mpp), tissue.mask_mpp, tissue)
    boxes = sub_image_boxes(mask, slide.dimensions, level0_mpp, tissue)
    if not boxes:
        raise SlideError(f"{path}: no tissue found; lower tissue.min_saturation or tissue.min_area_um2")
    return [SubImage(f"{slide_id}_{k}", slide_id, path, box, level0_mpp) for k, box in enumerate(boxes)]


def slide_files(slides: list[str]) -> dict[str, str]:
    """Slide id -> file, for slide files and folders of slide files."""
    files: dict[str, str] = {}
    for given in slides:
        path = Path(given)
        found = [p for group in find_slide_files(path).values() for p in group] if path.is_dir() else [path]
        for file in found:
            slide_id = slide_id_of(file)
            if slide_id in files:
                raise ValueError(f"two slides named {slide_id!r}: {files[slide_id]} and {file}; rename one")
            files[slide_id] = str(file)
    return files


def manifest_sub_images(manifest: str, split: str | None) -> dict[str, list[SubImage]]:
    """Slide id -> its sub-images, from a `preprocess` manifest (optionally one split)."""
    rows = pd.read_csv(manifest, dtype={"sub_image_id": str, "slide_id": str, "label": str})
    if split is not None:
        rows = rows[rows["split"] == split]
    by_slide: dict[str, list[SubImage]] = {}
    for row in rows.itertuples(index=False):
        box = (int(row.x), int(row.y), int(row.width), int(row.height))
        sub_image = SubImage(row.sub_image_id, row.slide_id, row.slide_path, box, float(row.mpp), row.label)
        by_slide.setdefault(row.slide_id, []).append(sub_image)
    return by_slide


def predict_slide(model: AttentionClassifier, slide_id: str, path: str, sub_images: list[SubImage] | None,
                  out: Path, options: Options, default_mpp: float | None, tissue: TissueParams,
                  progress: Progress) -> list[dict]:
    """One slide: its sub-image rows and slide row; writes its heatmaps and its GeoJSON."""
    slide = open_slide(path)
    try:
        if sub_images is None:
            sub_images = detect_sub_images(slide, slide_id, path, default_mpp, tissue)
        task = progress.add_task(f"  {slide_id}", total=len(sub_images))
        rows, features = [], []
        for sub_image in sub_images:
            p = predict_sub_image(model, slide, sub_image, options.heatmap_px)
            rows.append(prediction_row(p, model.classes))
            features += geojson_features(p, model.classes, options.top_filters)
            write_heatmaps(p, out / "heatmaps" / slide_id, options)
            progress.advance(task)
        progress.remove_task(task)
        rows.append(slide_row(rows, model.classes, slide.dimensions))
    finally:
        slide.close()
    collection = json.dumps({"type": "FeatureCollection", "features": features})
    (out / "geojson").mkdir(parents=True, exist_ok=True)
    write_atomic(out / "geojson" / f"{slide_id}.geojson", lambda tmp: tmp.write_text(collection))
    return rows


def predict(ckpt_path: str, out: str, slides: list[str] | None = None, manifest: str | None = None,
            split: str | None = None, default_mpp: float | None = None, device: str = "auto",
            inference_chunk: int | None = None, options: Options | None = None,
            tissue: TissueParams = DEFAULT_TISSUE) -> PredictResult:
    """Predict every slide (or manifest sub-image) and write the outputs into `out` (see the module docstring)."""
    if (slides is None) == (manifest is None):
        raise ValueError("give either slides=[...] or manifest=CSV")
    options = options or Options()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(ckpt_path, device, inference_chunk)
    if manifest is not None:
        given = manifest_sub_images(manifest, split)
        jobs = {slide_id: (subs[0].slide_path, subs) for slide_id, subs in given.items()}
    else:
        jobs = {slide_id: (path, None) for slide_id, path in slide_files(slides).items()}
    rows, failures = [], {}
    with Progress(console=console) as progress:
        for slide_id, (path, sub_images) in progress.track(jobs.items(), description="slides"):
            try:
                rows += predict_slide(model, slide_id, path, sub_images, out_dir, options, default_mpp, tissue,
                                      progress)
            except Exception as err:  # one bad slide must not stop the others; its reason is reported
                failures[slide_id] = str(err) if isinstance(err, (SlideError, ValueError)) else (
                    f"{path}: {type(err).__name__}: {err}")
    predictions = pd.DataFrame(rows)
    write_csv_atomic(predictions, out_dir / "predictions.csv")
    return PredictResult(predictions, failures)


def report(result: PredictResult, out: str) -> None:
    slides = result.predictions[result.predictions["level"] == "slide"] if len(result.predictions) else []
    console.print(f"{out}/predictions.csv: {len(slides)} slides")
    print_skipped_slides(console, result.failures, n_slides=len(slides) + len(result.failures))


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    options = OmegaConf.to_container(cfg, resolve=True)
    slides = options.pop("slides")
    if isinstance(slides, str):
        slides = [slides]
    tissue = TissueParams(**options.pop("tissue"))
    style = Options(**{key: options.pop(key) for key in ("top_filters", "heatmap_px", "colormap", "alpha")})
    result = predict(**options, slides=slides, options=style, tissue=tissue)
    report(result, cfg.out)
    if result.failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
