"""python -m attnwsi.localization ckpt_path=CKPT data_root=DIR [split=test] [top_filters=3] [device=auto]
    [out=FILE.json]

Does the model look at the lesion? For every sub-image of the split that touches an annotated lesion, whether
its highest-attention tile touches a lesion, by the mean map and by the map of the `top_filters` filters most
relevant to the predicted class, against a tile drawn at random (`attnwsi.inference.localization`).
`data_root` holds `manifest.csv` and `annotations/<slide_id>.geojson` (as the haystack's data root does).
Prints the score; with `out=`, also writes it (with per-sub-image details) as JSON.
"""

from __future__ import annotations

from dataclasses import asdict

import hydra
from omegaconf import DictConfig
from rich.console import Console

from attnwsi.console import entry_point
from attnwsi.data.layout import DataRoot
from attnwsi.data.manifest import read_sub_images
from attnwsi.inference.localization import LocalizationResult, localization_score
from attnwsi.inference.sub_image import load_model
from attnwsi.io import write_json_atomic


@hydra.main(version_base="1.3", config_path="../conf", config_name="localization")
@entry_point
def main(cfg: DictConfig) -> LocalizationResult:
    console = Console()
    model = load_model(cfg.ckpt_path, cfg.device, grid_shifts=cfg.grid_shifts)
    root = DataRoot(cfg.data_root)
    result = localization_score(model, read_sub_images(root.manifest, cfg.split), root.annotations,
                                cfg.top_filters, console)
    console.print(f"{cfg.split}: highest-attention tile on a lesion in {result.n} sub-images with a lesion: "
                  f"mean map {result.hits} ({result.score:.3f}), the {result.top_filters} most relevant filters "
                  f"{result.hits_filters} ({result.score_filters:.3f}); a random tile {result.random_baseline:.3f}",
                  soft_wrap=True)
    if cfg.out:
        write_json_atomic(cfg.out, asdict(result))
    return result


if __name__ == "__main__":
    main()
