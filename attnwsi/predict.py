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
GeoJSON, a sub-image annotation is classified by its prediction and measures its p_<class>. A slide takes the
highest-risk class predicted for any of its sub-images (`attnwsi.inference.outputs`). A model trained with
`grid_shifts` answers with the probabilities averaged over four tile grids (`grid_shifts=false`: one grid, a
quarter of the extractor's work); the maps are those of the sub-image's own grid.

The heatmaps keep the sub-image's aspect ratio: the tile grid covers the sub-image's centre
(`image_to_tiles` splits the left-over border evenly), and the thin border outside it is drawn without
colour. A slide that fails is reported and skipped; the command then exits with status 1.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from attnwsi.console import entry_point, print_skipped_slides
from attnwsi.data.tissue import TissueParams
from attnwsi.inference.outputs import HeatmapStyle
from attnwsi.inference.slides import predict


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@entry_point
def main(cfg: DictConfig) -> None:
    console = Console()
    options = OmegaConf.to_container(cfg, resolve=True)
    slides = options.pop("slides")
    tissue = TissueParams(**options.pop("tissue"))
    style = HeatmapStyle(**{key: options.pop(key) for key in ("top_filters", "heatmap_px", "colormap", "alpha")})
    result = predict(**options, slides=[slides] if isinstance(slides, str) else slides, style=style,
                     tissue=tissue, console=console)
    predictions = result.predictions
    n_slides = int((predictions["level"] == "slide").sum()) if len(predictions) else 0
    console.print(f"{cfg.out}/predictions.csv: {n_slides} slides")
    print_skipped_slides(console, result.failures, n_slides=n_slides + len(result.failures))
    if result.failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
