"""python -m attnwsi.synth out=DIR n_slides=N seed=S : write a synthetic haystack data set.

With kind=real_tiles source=SET, a haystack built from real H&E tiles instead (attnwsi/data/real_tiles.py).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from attnwsi.console import UserError, entry_point
from attnwsi.data.real_tiles import CLASSES as REAL_TILE_CLASSES
from attnwsi.data.real_tiles import RealTileSpec, generate_real_tiles
from attnwsi.data.synthetic import CLASSES as HAYSTACK_CLASSES
from attnwsi.data.synthetic import HaystackSpec, generate_haystack

HAYSTACK_ONLY = ("mpp", "slide_px", "decoy_prob", "lesion_px", "max_lesion_fraction")
REAL_TILES_ONLY = ("source", "tiles_dir", "source_mpp", "positive_fraction", "tumour_tiles", "tumour_share",
                   "pieces", "min_piece_tiles", "test_fraction", "val_fraction", "orient")


@hydra.main(version_base="1.3", config_path="../conf", config_name="synth")
@entry_point
def main(cfg: DictConfig) -> None:
    options = OmegaConf.to_container(cfg, resolve=True)
    out, workers, kind = options.pop("out"), options.pop("workers"), options.pop("kind", "haystack")
    if kind == "haystack":
        for key in REAL_TILES_ONLY:
            options.pop(key, None)
        with Console().status(f"writing {options['n_slides']} slides into {out}"):
            generate_haystack(out, HaystackSpec(**options), workers=workers)
    elif kind == "real_tiles":
        for key in HAYSTACK_ONLY:
            options.pop(key, None)
        if options["classes"] == HAYSTACK_CLASSES:  # the config's default list: the real tiles' own classes
            options["classes"] = list(REAL_TILE_CLASSES)
        spec = RealTileSpec(**options)
        with Console().status(f"writing {spec.n_slides} slides of {spec.source} tiles into {out}"):
            generate_real_tiles(out, spec, workers=workers)
        Console().print(f"{out}: slides/, annotations/, labels.csv (with the splits), tiles_used.csv, "
                        f"tile_splits.csv; train with classes=[{','.join(spec.classes)}]", markup=False)
        return
    else:
        raise UserError(f"kind={kind!r}: pick haystack (procedural slides) or real_tiles (real H&E tiles)")
    Console().print(f"{out}: slides/, annotations/, labels.csv")


if __name__ == "__main__":
    main()
