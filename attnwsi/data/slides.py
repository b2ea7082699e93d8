"""Reading slides through tiffslide at a physical resolution (micrometres per pixel), not at a "level".

Boxes on a slide are (x, y, width, height) in level-0 pixels everywhere in the package (`Box`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiffslide
from PIL import Image

from attnwsi.console import UserError

# File name endings of the slide formats tiffslide reads; `.ome.tiff` counts as one extension.
SLIDE_SUFFIXES = (".ome.tiff", ".ome.tif", ".svs", ".tiff", ".tif", ".ndpi", ".scn", ".bif", ".qptiff")

Box = tuple[int, int, int, int]  # x, y, width, height in level-0 pixels


@dataclass(frozen=True)
class SubImage:
    """One image the models classify: a box of a slide (a tissue piece, or a cell of one), with its label.

    `level0_mpp` is the slide's level-0 pixel size (um/px); `label`, `split` and `patient_id` are known for
    the sub-images of a data set (a manifest row) and None for a new slide cut up by `predict`.
    """

    sub_image_id: str
    slide_id: str
    slide_path: str
    box: Box
    level0_mpp: float
    label: str | None = None
    split: str | None = None
    patient_id: str | None = None


class SlideError(UserError, RuntimeError):
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


def group_by_slide(sub_images: list[SubImage]) -> dict[str, list[SubImage]]:
    """Slide id -> its sub-images, slides in order of first appearance, each slide's sub-images in order."""
    by_slide: dict[str, list[SubImage]] = {}
    for sub_image in sub_images:
        by_slide.setdefault(sub_image.slide_id, []).append(sub_image)
    return by_slide


class SlideHandles:
    """Open slides by path, opened once per process and kept (for data sets read by DataLoader workers).

    Keyed by process id too: a handle inherited across fork shares its file offset with the parent.
    """

    def __init__(self):
        self._open: dict[tuple[int, str], tiffslide.TiffSlide] = {}

    def __call__(self, path: str) -> tiffslide.TiffSlide:
        key = (os.getpid(), path)
        if key not in self._open:
            self._open[key] = open_slide(path)
        return self._open[key]


def find_slide_files(slides_dir: Path) -> dict[str, list[Path]]:
    """The slide files directly in `slides_dir`, by slide id (several files may share an id)."""
    if not slides_dir.is_dir():
        raise FileNotFoundError(f"{slides_dir}: no such slide folder; check `slides=`")
    files: dict[str, list[Path]] = {}
    for path in sorted(slides_dir.iterdir()):
        if path.is_file() and path.name.lower().endswith(SLIDE_SUFFIXES):
            files.setdefault(slide_id_of(path), []).append(path)
    return files


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


def read_region(slide: tiffslide.TiffSlide, box: Box, level0_mpp: float,
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
