"""How fast do tiles reach the model? SlideDataModule-style reading vs raw decoding vs openslide.

    python experiments/io/bench_io.py [--slides A.svs B.tiff] [--cell-tiles 4] [--passes 2] [--repeats 3]

For each slide and each reading resolution, the sub-images are the tissue boxes that `build_manifest` finds,
split into cells of at most `--cell-tiles` x `--cell-tiles` model tiles; the list is repeated to at least
`--min-sub-images` per pass (an "epoch"). Each sub-image is read at the resolution and cut into 224-px tiles:

  loader         SubImageDataset in a torch DataLoader (workers=2, batches of 2), as the data module reads
  in-process     SubImageDataset called directly (one process)
  openslide      openslide-python reads the same regions (same level choice), same resampling and tiling
  raw decode     tifffile + imagecodecs decode the TIFF tiles that cover the same regions (no resize, no
                 tiling): the floor that any reader of these files pays, one process

Rates are model tiles per second (the same tile count divided by each method's time), the median of
`--repeats` timed runs of `--passes` passes each, after one untimed pass that warms the page cache.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import tifffile
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from attnwsi.data.datamodule import SubImageDataset, collate_samples
from attnwsi.data.grid import image_to_tiles
from attnwsi.data.manifest import build_manifest, sub_images_of
from attnwsi.data.slides import MPP_TOLERANCE, resample
from attnwsi.data.tissue import TissueParams

REPO = Path(__file__).resolve().parents[2]
SLIDES = [REPO.parent / "shared/data/wsi/CMU-1-Small-Region.svs",
          REPO.parent / "shared/data/wsi/derived/CMU-1-Small-Region.pyramid.tiff"]
TILE_PX = 224
SETTINGS = {"0.5 um/px": 112.0, "1.1 um/px (paper)": 246.0}  # the side of a model tile, um


def sub_images(slide: Path, cell_um: float) -> pd.DataFrame:
    """The slide's tissue boxes, cut into cells of at most `cell_um`, as manifest rows."""
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "labels.csv"
        pd.DataFrame([dict(slide_id="s", patient_id="p", label="normal", path=str(slide), split="train")]
                     ).to_csv(labels, index=False)
        tissue = TissueParams(max_sub_image_um=cell_um)
        result = build_manifest(slide.parent, labels, ["normal"], tissue=tissue)
    if result.failures:
        raise RuntimeError(result.failures)
    return result.manifest


def timed(run, passes: int, repeats: int) -> float:
    """Median seconds per pass of `run()`, after one untimed pass."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(passes):
            run()
        times.append((time.perf_counter() - start) / passes)
    return statistics.median(times)


def level_box(box, level_downsample: float):
    """A level-0 box (x, y, w, h) as pixel bounds (x0, y0, x1, y1) on a level with that downsample."""
    x, y, w, h = box
    return (int(x / level_downsample), int(y / level_downsample),
            math.ceil((x + w) / level_downsample), math.ceil((y + h) / level_downsample))


def openslide_tiles(slide: openslide.OpenSlide, box, level0_mpp: float, mpp: float) -> int:
    """Read the region as `read_region` does (best level, box snapped to it, resampled unless within the
    tolerance) with openslide; the tile count."""
    x, y, w, h = box
    downsample = mpp / level0_mpp
    level = slide.get_best_level_for_downsample(downsample)
    level_downsample = slide.level_downsamples[level]
    x0, y0, x1, y1 = (round(v / level_downsample) for v in (x, y, x + w, y + h))
    region = np.asarray(slide.read_region((x, y), level, (x1 - x0, y1 - y0)).convert("RGB"))
    if abs(downsample / level_downsample - 1) > MPP_TOLERANCE:
        region = resample(region, (max(1, round(w / downsample)), max(1, round(h / downsample))))
    return len(image_to_tiles(region, TILE_PX)[0])


def raw_decode(tif: tifffile.TiffFile, level: int, boxes, level_downsample: float) -> int:
    """Decode every TIFF tile that the boxes touch on `level` (as often as they are touched); their count."""
    page = tif.series[0].levels[level].keyframe
    across = math.ceil(page.imagewidth / page.tilewidth)
    decode = page.decode  # first: building the decoder reads from the file
    handle, decoded = tif.filehandle, 0
    for box in boxes:
        x0, y0, x1, y1 = level_box(box, level_downsample)
        for row in range(y0 // page.tilelength, (min(y1, page.imagelength) - 1) // page.tilelength + 1):
            for col in range(x0 // page.tilewidth, (min(x1, page.imagewidth) - 1) // page.tilewidth + 1):
                index = row * across + col
                handle.seek(page.dataoffsets[index])
                data = handle.read(page.databytecounts[index])
                decode(data, index, jpegtables=page.jpegtables)
                decoded += 1
    return decoded


def bench_slide(path: Path, cell_tiles: int, min_sub_images: int, passes: int, repeats: int) -> list[dict]:
    results = []
    for setting, tile_um in SETTINGS.items():
        manifest = sub_images(path, cell_tiles * tile_um)
        manifest = pd.concat([manifest] * math.ceil(min_sub_images / len(manifest)), ignore_index=True)
        timings = bench_setting(path, manifest, tile_um / TILE_PX, passes, repeats)
        results.append(dict(slide=path.name, setting=setting, **timings))
    return results


def bench_setting(path: Path, manifest: pd.DataFrame, mpp: float, passes: int, repeats: int) -> dict:
    boxes = list(zip(manifest.x, manifest.y, manifest.width, manifest.height, strict=True))
    level0_mpp = float(manifest["mpp"].iloc[0])
    # Count the tiles with a dataset of its own: a slide handle opened here before the DataLoader forks
    # its workers would be shared by them (one file offset), and their reads would garble each other.
    counting = SubImageDataset(sub_images_of(manifest), ["normal"], mpp, TILE_PX)
    n_tiles = sum(len(counting[i].tiles) for i in range(len(counting)))
    dataset = SubImageDataset(sub_images_of(manifest), ["normal"], mpp, TILE_PX)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_samples,
                        persistent_workers=True)
    slide, tif = openslide.OpenSlide(path), tifffile.TiffFile(path)
    level = slide.get_best_level_for_downsample(mpp / level0_mpp)
    level_downsample = slide.level_downsamples[level]
    seconds = {
        "loader, 2 workers": timed(lambda: list(loader), passes, repeats),
        "in-process": timed(lambda: [dataset[i] for i in range(len(dataset))], passes, repeats),
        "openslide": timed(lambda: [openslide_tiles(slide, box, level0_mpp, mpp) for box in boxes], passes,
                           repeats),
        "raw decode": timed(lambda: raw_decode(tif, level, boxes, level_downsample), passes, repeats),
    }
    tiff_tiles = raw_decode(tif, level, boxes, level_downsample)
    slide.close()
    tif.close()
    return dict(level=level, sub_images=len(boxes), tiles=n_tiles, tiff_tiles=tiff_tiles,
                tiles_per_s={method: n_tiles / s for method, s in seconds.items()})


def report(results: list[dict]) -> Table:
    methods = list(results[0]["tiles_per_s"])
    ratios = {"loader / raw": ("loader, 2 workers", "raw decode"),
              "in-process / raw": ("in-process", "raw decode"),
              "openslide / raw": ("openslide", "raw decode"),
              "in-process / openslide": ("in-process", "openslide")}
    table = Table(title=f"Model tiles ({TILE_PX} px) per second, and ratios of these rates")
    for column in ["slide", "resolution", "level", "sub-images", "tiles", *methods, *ratios]:
        table.add_column(column, justify="left" if column in ("slide", "resolution") else "right")
    for r in results:
        rate = r["tiles_per_s"]
        table.add_row(r["slide"], r["setting"], str(r["level"]), str(r["sub_images"]), str(r["tiles"]),
                      *(f"{rate[m]:.0f}" for m in methods),
                      *(f"{rate[a] / rate[b]:.2f}" for a, b in ratios.values()))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", nargs="+", type=Path, default=SLIDES)
    parser.add_argument("--cell-tiles", type=int, default=4, help="largest sub-image side, in model tiles")
    parser.add_argument("--min-sub-images", type=int, default=48, help="sub-images per pass, at least")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = [r for path in args.slides
               for r in bench_slide(path, args.cell_tiles, args.min_sub_images, args.passes, args.repeats)]
    Console(width=220).print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
