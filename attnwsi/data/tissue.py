"""Tissue detection on a low-resolution overview: a tissue mask, its pieces, one sub-image box per piece.

Stained tissue is coloured and glass is grey-white, so the mask thresholds colour saturation (Otsu's
threshold, kept within a sensible range), bridges small gaps, fills small holes and drops specks. All sizes
are physical (um, um^2), so the same settings work whatever the scanner's resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from attnwsi.data.slides import Box, SlideError, SubImage, open_slide, read_region, slide_mpp


@dataclass(frozen=True)
class TissueParams:
    """How tissue is found. Lengths in um, areas in um^2 (square micrometres)."""

    mask_mpp: float = 4.0  # resolution (um/px) of the overview the mask is computed on
    min_saturation: float = 0.05  # Otsu's threshold on saturation (0..1) is kept within these bounds, so an
    max_saturation: float = 0.15  # overview that is nearly all glass, or all tissue, still splits sensibly
    closing_um: float = 8.0  # gaps narrower than about twice this, within a piece, are bridged
    max_hole_um2: float = 20_000.0  # holes smaller than this (tears, small lumina) count as tissue
    min_area_um2: float = 10_000.0  # pieces smaller than this (dust, debris) are dropped
    margin_um: float = 16.0  # added around each piece's box, then clipped to the slide
    max_sub_image_um: float | None = None  # boxes larger than this are split into a grid of sub-images


DEFAULT_TISSUE = TissueParams()


def tissue_mask(image: np.ndarray, mpp: float, params: TissueParams = DEFAULT_TISSUE) -> np.ndarray:
    """A boolean tissue mask of an RGB uint8 image read at `mpp` um/px."""
    saturation = ndimage.median_filter(rgb2hsv(image)[..., 1], size=3)  # the median removes JPEG speckle
    threshold = threshold_otsu(saturation) if np.ptp(saturation) > 0 else 0.0
    mask = saturation > np.clip(threshold, params.min_saturation, params.max_saturation)
    mask = _closing(mask, radius=round(params.closing_um / mpp))
    mask |= _small_components(~mask, max_px=params.max_hole_um2 / mpp**2)  # fill the small holes
    return mask & ~_small_components(mask, max_px=params.min_area_um2 / mpp**2)  # drop the specks


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a disk; the slide's edge is not treated as background."""
    if radius < 1:
        return mask
    padded = np.pad(mask, radius, mode="edge")
    return ndimage.binary_closing(padded, disk(radius))[radius:-radius, radius:-radius]


def _small_components(mask: np.ndarray, max_px: float) -> np.ndarray:
    """The 8-connected components of `mask` with fewer than `max_px` pixels."""
    components, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(components.ravel())
    small = sizes < max_px
    small[0] = False  # label 0 is outside `mask`
    return small[components]


def sub_image_boxes(mask: np.ndarray, slide_size: tuple[int, int], level0_mpp: float,
                    params: TissueParams = DEFAULT_TISSUE) -> list[Box]:
    """One level-0 box per tissue piece of `mask` (a mask over the whole slide), with a margin.

    `slide_size` is the level-0 (width, height). Boxes are clipped to the slide. With
    `params.max_sub_image_um`, a larger box is split into an even grid of cells no larger than that, and
    the cells holding none of the piece are dropped. Pieces come in raster order of their first pixel.
    """
    width, height = slide_size
    scale_x, scale_y = width / mask.shape[1], height / mask.shape[0]
    margin = round(params.margin_um / level0_mpp)
    pieces, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = []
    for index, (rows, cols) in enumerate(ndimage.find_objects(pieces), start=1):
        x0 = max(0, math.floor(cols.start * scale_x) - margin)
        y0 = max(0, math.floor(rows.start * scale_y) - margin)
        x1 = min(width, math.ceil(cols.stop * scale_x) + margin)
        y1 = min(height, math.ceil(rows.stop * scale_y) + margin)
        box = (x0, y0, x1 - x0, y1 - y0)
        if params.max_sub_image_um is None:
            boxes.append(box)
            continue
        piece = pieces == index
        for cell in _grid_cells(box, max_px=params.max_sub_image_um / level0_mpp):
            cx, cy, cw, ch = cell
            rows_in_mask = slice(math.floor(cy / scale_y), math.ceil((cy + ch) / scale_y))
            cols_in_mask = slice(math.floor(cx / scale_x), math.ceil((cx + cw) / scale_x))
            if piece[rows_in_mask, cols_in_mask].any():
                boxes.append(cell)
    return boxes


def _grid_cells(box: Box, max_px: float) -> list[Box]:
    """`box` cut into an even grid of cells no larger than `max_px` on a side, row by row."""
    x, y, width, height = box
    xs = np.linspace(x, x + width, math.ceil(width / max_px) + 1).round().astype(int)
    ys = np.linspace(y, y + height, math.ceil(height / max_px) + 1).round().astype(int)
    return [(int(x0), int(y0), int(x1 - x0), int(y1 - y0))
            for y0, y1 in zip(ys[:-1], ys[1:], strict=True) for x0, x1 in zip(xs[:-1], xs[1:], strict=True)]


@dataclass
class TissuePieces:
    """A slide's tissue: its level-0 pixel size, its mask (at `mask_mpp`) and one box per tissue piece."""

    level0_mpp: float
    mask: np.ndarray
    boxes: list[Box]


def find_tissue(slide, path, fallback_mpp: float | None, params: TissueParams = DEFAULT_TISSUE) -> TissuePieces:
    """The tissue pieces of a whole slide, as `preprocess` and `predict` cut slides into sub-images.

    `fallback_mpp` is the level-0 pixel size for a slide that records none (see `slide_mpp`).
    """
    level0_mpp = slide_mpp(slide, path, fallback_mpp)
    overview = read_region(slide, (0, 0, *slide.dimensions), level0_mpp, params.mask_mpp)
    mask = tissue_mask(overview, params.mask_mpp, params)
    return TissuePieces(level0_mpp, mask, sub_image_boxes(mask, slide.dimensions, level0_mpp, params))


def no_tissue_error(path) -> SlideError:
    return SlideError(f"{path}: no tissue found; check the slide (and its QA picture), or lower "
                      "tissue.min_saturation or tissue.min_area_um2")


def tissue_pixel_stats(sub_images: list[SubImage], mpp: float = 2.0, params: TissueParams = DEFAULT_TISSUE) -> dict:
    """Per-channel mean and std (0..1) over the tissue pixels of sub-images, read at `mpp`.

    Returns {"mean": [r, g, b], "std": [r, g, b], "n_pixels": N}. Tissue is `tissue_mask` of each sub-image.
    """
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for sub_image in sub_images:
        slide = open_slide(sub_image.slide_path)
        image = read_region(slide, sub_image.box, sub_image.level0_mpp, mpp)
        slide.close()
        pixels = image[tissue_mask(image, mpp, params)] / 255.0
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
        count += len(pixels)
    if count == 0:
        raise ValueError("no tissue pixels in the development (train/val) sub-images; check the slides and "
                         "the tissue settings (tissue.min_saturation)")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist(), "n_pixels": int(count)}


# Outline colours of the QA picture; a box's label colour is its class's place in the risk order.
TISSUE_COLOR = (0, 90, 255)
CLASS_COLORS = [(0, 150, 0), (230, 160, 0), (230, 90, 0), (200, 0, 0), (150, 0, 150), (0, 150, 150)]


def qa_picture(overview: np.ndarray, mask: np.ndarray, slide_size: tuple[int, int], classes: list[str],
               sub_images: list[tuple[Box, str]], lesions: list[tuple[Box, str]]) -> Image.Image:
    """The overview with the tissue outline (blue), sub-image boxes (thick, named) and lesion boxes (thin).

    `sub_images` and `lesions` pair a level-0 box with a class name; the colour is the class's risk rank.
    """
    height, width = overview.shape[:2]
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    picture = overview.copy()
    picture[mask & ~ndimage.binary_erosion(mask, iterations=2)] = TISSUE_COLOR
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    scale = width / slide_size[0]
    for boxes, line_width in ((sub_images, 3), (lesions, 1)):
        for (x, y, w, h), name in boxes:
            color = CLASS_COLORS[classes.index(name) % len(CLASS_COLORS)]
            x0, y0, x1, y1 = x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1
            draw.rectangle([x0, y0, x1, y1], outline=color, width=line_width)
            if line_width > 1:
                draw.text((x0 + 5, y0 + 4), name, fill=color)
    return image
