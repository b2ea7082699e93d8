"""An image as a grid of non-overlapping tiles (the paper's section 3.1), and its training augmentation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

BACKGROUND = (255, 255, 255)  # what augmentation fills in: white, like the glass around the tissue


def image_to_tiles(image: np.ndarray, tile_px: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """An RGB uint8 image [H, W, 3] as tiles [T, 3, tile_px, tile_px] (uint8, row-major) and its grid (H', W').

    H' = floor(H / tile_px) and W' = floor(W / tile_px), as in the paper; the left-over border is split
    evenly between both sides. An image smaller than one tile is padded with background to one tile.
    """
    height, width = image.shape[:2]
    if height < tile_px or width < tile_px:
        padded = np.full((max(height, tile_px), max(width, tile_px), 3), BACKGROUND, np.uint8)
        padded[:height, :width] = image
        image, height, width = padded, padded.shape[0], padded.shape[1]
    rows, cols = height // tile_px, width // tile_px
    top, left = (height - rows * tile_px) // 2, (width - cols * tile_px) // 2
    crop = torch.from_numpy(np.array(image[top : top + rows * tile_px, left : left + cols * tile_px]))  # a copy
    tiles = crop.view(rows, tile_px, cols, tile_px, 3).permute(0, 2, 4, 1, 3).reshape(rows * cols, 3, tile_px, tile_px)
    return tiles.contiguous(), (rows, cols)


def augment(image: np.ndarray, rng: np.random.Generator, rotate: bool = True, flip: bool = True,
            scale: tuple[float, float] | None = (0.8, 1.2)) -> np.ndarray:
    """The paper's augmentation: random rotation by any angle and random scaling, plus flips.

    The canvas grows with the rotation so no tissue leaves the frame; new pixels are background.
    """
    pil = Image.fromarray(image)
    if flip and rng.random() < 0.5:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if scale is not None:
        factor = rng.uniform(*scale)
        pil = pil.resize((max(1, round(pil.width * factor)), max(1, round(pil.height * factor))),
                         Image.Resampling.BILINEAR)
    if rotate:
        pil = pil.rotate(rng.uniform(0, 360), Image.Resampling.BILINEAR, expand=True, fillcolor=BACKGROUND)
    elif flip:  # without free rotation, still use the square's symmetries
        pil = pil.rotate(90 * int(rng.integers(4)), expand=True)
    return np.asarray(pil)
