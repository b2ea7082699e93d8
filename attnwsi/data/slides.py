"""Reading slides through tiffslide at a physical resolution (micrometres per pixel), not at a "level".

Boxes on a slide are (x, y, width, height) in level-0 pixels everywhere in the package (`Box`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
import tiffslide

from attnwsi.console import UserError

# File name endings of the slide formats tiffslide reads; `.ome.tiff` counts as one extension.
SLIDE_SUFFIXES = (".ome.tiff", ".ome.tif", ".svs", ".tiff", ".tif", ".ndpi", ".scn", ".bif", ".qptiff")

Box = tuple[int, int, int, int]  # x, y, width, height in level-0 pixels

# A stored pyramid level whose pixel size is within 2 % of the one asked for is read as it is, not resampled:
# scanners differ by more than that from their nominal 0.25 / 0.5 um/px (0.2525, 0.4942, 0.499...), and
# resampling by a hair blurs every pixel and took a third of the reading time (experiments/io).
MPP_TOLERANCE = 0.02
READER = 2  # the version of `read_region`'s pixels: bump it when they change, so that nothing derived from
           # the old pixels (the tile cache's entries, a cached self-supervised trunk) is reused

cv2.setNumThreads(1)  # regions are small; reading runs in parallel across DataLoader workers instead


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


def read_region(slide: tiffslide.TiffSlide, box: Box, level0_mpp: float, mpp: float,
                tolerance: float = MPP_TOLERANCE) -> np.ndarray:
    """The level-0 box (x, y, width, height) as RGB uint8 at `mpp` um/px.

    Reads from the pyramid level closest to (but not coarser than, beyond `tolerance`) the target resolution,
    so only the region, never a whole level-0 slide, is held in memory; the box is snapped to that level's
    pixel grid. Where the level's pixel size is within `tolerance` (relative) of `mpp`, the region is
    returned as stored, without resampling: its pixels are the level's (e.g. 0.499 um/px for 0.5 asked).
    Otherwise it is resampled to `mpp` (`resample`); pass `tolerance=0` where the pixel count must follow
    from `mpp` exactly (crops).
    """
    x, y, width, height = box
    downsample = mpp / level0_mpp
    # a level a hair coarser than asked counts as that resolution: a pyramid's "4x" level is often 4.004x
    # (odd sizes halved), and skipping it for the finer one makes a 2x resampling of every pixel
    level = slide.get_best_level_for_downsample(downsample * (1 + tolerance))
    level_downsample = slide.level_downsamples[level]
    # the box on that level, snapped to its pixel grid (by at most half a pixel of that level)
    x0, y0 = round(x / level_downsample), round(y / level_downsample)
    region = read_level(slide, level, x0, y0, max(1, round(width / level_downsample)),
                        max(1, round(height / level_downsample)))
    if abs(downsample / level_downsample - 1) <= tolerance:
        return region
    return resample(region, (max(1, round(width / downsample)), max(1, round(height / downsample))))


def read_level(slide: tiffslide.TiffSlide, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """The pixels [y, y + height) x [x, x + width) of a pyramid level, RGB uint8; white beyond its edges.

    Tiled RGB levels (SVS, pyramidal TIFF, OME-TIFF...) are read by decoding the TIFF tiles the region touches
    straight from the file (tifffile, imagecodecs), each into its place: tiffslide's own `read_region` goes
    through zarr's asynchronous machinery and took 1.6 times as long per region (experiments/io). Other
    layouts are read through tiffslide.
    """
    page = _tiled_rgb_page(slide, level)
    if page is None:
        downsample = slide.level_downsamples[level]
        location = (math.ceil(x * downsample), math.ceil(y * downsample))  # tiffslide divides and truncates
        return np.ascontiguousarray(slide.read_region(location, level, (width, height), as_array=True)[..., :3])
    region = np.full((height, width, 3), 255, np.uint8)
    tile_w, tile_h = page.tilewidth, page.tilelength
    x1, y1 = min(x + width, page.imagewidth), min(y + height, page.imagelength)
    if x1 <= max(x, 0) or y1 <= max(y, 0):
        return region
    across = math.ceil(page.imagewidth / tile_w)
    indices = [row * across + col for row in range(max(y, 0) // tile_h, (y1 - 1) // tile_h + 1)
               for col in range(max(x, 0) // tile_w, (x1 - 1) // tile_w + 1)]
    segments = slide.ts_tifffile.filehandle.read_segments(
        [page.dataoffsets[i] for i in indices], [page.databytecounts[i] for i in indices], indices, sort=True)
    decode = page.decode
    for data, index in segments:
        tile, (_, _, tile_y, tile_x, _), _ = decode(data, index, jpegtables=page.jpegtables)
        if tile is None:  # a tile the scanner left empty
            continue
        top, left = max(tile_y, y), max(tile_x, x)
        bottom, right = min(tile_y + tile_h, y1), min(tile_x + tile_w, x1)
        region[top - y:bottom - y, left - x:right - x] = tile[0, top - tile_y:bottom - tile_y,
                                                               left - tile_x:right - tile_x, :3]
    return region


def _tiled_rgb_page(slide: tiffslide.TiffSlide, level: int) -> tifffile.TiffPage | None:
    """The TIFF page of a level stored as tiles of interleaved 8-bit RGB(A) samples, else None."""
    if slide.properties["tiffslide.series-axes"] != "YXS":
        return None
    try:
        series = slide.ts_tifffile.series[slide.properties["tiffslide.series-index"]]
    except Exception:  # tiffslide backed by kerchunk, not a file
        return None
    page = series.levels[level].keyframe
    contiguous = page.planarconfig == tifffile.PLANARCONFIG.CONTIG
    if page.is_tiled and contiguous and page.dtype == np.uint8 and page.samplesperpixel >= 3:
        return page
    return None


def resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 image resized to `size` (width, height), with OpenCV.

    Shrinks by the whole factor first (a factor within MPP_TOLERANCE of a whole number counts as it) by
    averaging blocks of pixels, the last rows and columns that do not fill a block dropped; then the rest of
    the way bilinearly (a factor up to 1.5, or an enlargement) or by area averaging (INTER_AREA, 1.5 to 2:
    anti-aliased; it is 3 to 6 times slower). Every output pixel lies within one pixel of its exact place.
    Unfiltered bilinear shrinking by ~2 (what the remainder would be without the rounding) aliases: on the
    haystack, a linear probe of tile pixel statistics fell from 0.69 to 0.52 (experiments/io/README.md).
    """
    height, width = image.shape[:2]
    ratio = min(width / size[0], height / size[1])  # input pixels per output pixel
    factor = max(1, min(int(ratio * (1 + MPP_TOLERANCE)), height, width))
    if factor > 1:
        height, width = height // factor * factor, width // factor * factor
        image = cv2.resize(image[:height, :width], (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    if image.shape[1::-1] != size:
        # bilinear's two-pixel reach still covers every input pixel when shrinking by up to 1.5
        interpolation = cv2.INTER_AREA if ratio / factor > 1.5 else cv2.INTER_LINEAR
        image = cv2.resize(image, size, interpolation=interpolation)
    return image
