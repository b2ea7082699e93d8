"""Reading slides through tiffslide at a physical resolution (micrometres per pixel), not at a "level"."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tiffslide
from PIL import Image

# File name endings of the slide formats tiffslide reads; `.ome.tiff` counts as one extension.
SLIDE_SUFFIXES = (".ome.tiff", ".ome.tif", ".svs", ".tiff", ".tif", ".ndpi", ".scn", ".bif", ".qptiff")


class SlideError(RuntimeError):
    """A slide that cannot be used, with a message that names the file and the fix."""


def slide_id_of(path: str | Path) -> str:
    """A slide's id: its file name without the extension (`a.ome.tiff` -> `a`, `b.v2.svs` -> `b.v2`)."""
    name = Path(path).name
    for suffix in SLIDE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def open_slide(path: str | Path) -> tiffslide.TiffSlide:
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: no such slide file; check the slide folder and the label sheet's `path`")
    try:
        return tiffslide.TiffSlide(path)
    except Exception as err:  # tiffslide raises many kinds for unreadable files
        raise SlideError(f"{path}: tiffslide cannot read this slide ({type(err).__name__}: {err}); "
                         "convert it to a tiled pyramidal TIFF or check that the file is complete") from err


def slide_mpp(slide: tiffslide.TiffSlide, path: str | Path, fallback: float | None = None) -> float:
    """Level-0 micrometres per pixel: from the slide itself, else `fallback` (label sheet or command line).

    A missing fallback may be None or NaN (an empty cell of the label sheet's `mpp` column).
    """
    mpp = slide.properties.get("tiffslide.mpp-x")
    if mpp:
        return float(mpp)
    if fallback is not None and math.isfinite(fallback) and fallback > 0:
        return float(fallback)
    raise SlideError(f"{path}: the slide does not record its pixel size (um/px); add an `mpp` column to the "
                     "label sheet for this slide, or pass `default_mpp=` on the command line")


def read_region(slide: tiffslide.TiffSlide, box: tuple[int, int, int, int], level0_mpp: float,
                mpp: float) -> np.ndarray:
    """The level-0 box (x, y, width, height) as RGB uint8 at `mpp` um/px.

    Reads from the pyramid level closest to (but not coarser than) the target resolution and resizes the
    rest of the way, so only the region, never a whole level-0 slide, is held in memory.
    """
    x, y, width, height = box
    downsample = mpp / level0_mpp
    level = slide.get_best_level_for_downsample(downsample)
    level_downsample = slide.level_downsamples[level]
    # The box on that level falls between its pixels. tiffslide starts reading at the pixel holding the
    # box's corner (it truncates x / downsample); the resize then crops at the exact fractional box, so a
    # region read from a coarser level is not shifted by up to one of its pixels.
    left, top = x / level_downsample, y / level_downsample
    right, bottom = (x + width) / level_downsample, (y + height) / level_downsample
    origin_x, origin_y = int(left), int(top)
    size = (max(1, math.ceil(right) - origin_x), max(1, math.ceil(bottom) - origin_y))
    region = slide.read_region((x, y), level, size, as_array=True)[..., :3]
    target = (max(1, round(width / downsample)), max(1, round(height / downsample)))
    crop = (left - origin_x, top - origin_y, right - origin_x, bottom - origin_y)
    if target != size or crop != (0, 0, *size):
        resized = Image.fromarray(region).resize(target, Image.Resampling.BILINEAR, crop, reducing_gap=2.0)
        region = np.asarray(resized)
    return np.ascontiguousarray(region)


def print_skipped_slides(console, failures: dict[str, str], n_slides: int) -> None:
    """Tell the user which slides a run skipped, each with its reason (nothing when none failed)."""
    if failures:
        console.print(f"[red]{len(failures)} of {n_slides} slides failed and were skipped:[/red]")
        for slide_id, reason in failures.items():
            console.print(f"  [red]{slide_id}[/red]: {reason}")
