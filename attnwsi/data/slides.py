"""Reading slides through tiffslide at a physical resolution (micrometres per pixel), not at a "level"."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tiffslide
from PIL import Image


class SlideError(RuntimeError):
    """A slide that cannot be used, with a message that names the file and the fix."""


def open_slide(path: str | Path) -> tiffslide.TiffSlide:
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: no such slide file; check the slide folder and the label sheet's path column")
    try:
        return tiffslide.TiffSlide(path)
    except Exception as err:  # tiffslide raises many kinds for unreadable files
        raise SlideError(f"{path}: tiffslide cannot read this slide ({type(err).__name__}: {err}); "
                         "convert it to a tiled pyramidal TIFF or check that the file is complete") from err


def slide_mpp(slide: tiffslide.TiffSlide, path: str | Path, fallback: float | None = None) -> float:
    """Level-0 micrometres per pixel: from the slide itself, else `fallback` (label sheet or command line)."""
    mpp = slide.properties.get("tiffslide.mpp-x")
    if mpp:
        return float(mpp)
    if fallback:
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
    size = (max(1, math.ceil(width / level_downsample)), max(1, math.ceil(height / level_downsample)))
    region = slide.read_region((x, y), level, size, as_array=True)[..., :3]
    target = (max(1, round(width / downsample)), max(1, round(height / downsample)))
    if target != size:
        region = np.asarray(Image.fromarray(region).resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0))
    return np.ascontiguousarray(region)
