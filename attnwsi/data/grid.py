"""An image as a grid of non-overlapping tiles (the paper's section 3.1), where those tiles lie, and the
training augmentation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from attnwsi.data.slides import Box

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
    left, top, right, bottom = grid_region((height, width), (rows, cols), tile_px)
    # the grid as a strided view of the image [rows, cols, 3, tile_px, tile_px], copied once into the tiles
    row_stride, col_stride, channel_stride = image.strides
    view = np.lib.stride_tricks.as_strided(
        image[top:, left:], (rows, cols, 3, tile_px, tile_px),
        (tile_px * row_stride, tile_px * col_stride, channel_stride, row_stride, col_stride), writeable=False)
    tiles = np.empty((rows * cols, 3, tile_px, tile_px), np.uint8)
    tiles.reshape(rows, cols, 3, tile_px, tile_px)[...] = view
    return torch.from_numpy(tiles), (rows, cols)


def grid_region(image_size: tuple[int, int], grid: tuple[int, int], tile_px: int) -> tuple[int, int, int, int]:
    """The pixels (x0, y0, x1, y1) of an image [height, width] that `image_to_tiles` cuts into its tile grid.

    The grid is centred (the left-over border split evenly); an image smaller than a tile is padded at its
    bottom and right, so there the grid reaches beyond the image.
    """
    height, width = (max(side, tile_px) for side in image_size)
    rows, cols = grid
    top, left = (height - rows * tile_px) // 2, (width - cols * tile_px) // 2
    return left, top, left + cols * tile_px, top + rows * tile_px


def tile_boxes(box: Box, image_size: tuple[int, int], grid: tuple[int, int], tile_px: int) -> np.ndarray:
    """Each tile's square on the slide, [T, 4] (x0, y0, x1, y1) in level-0 px, row-major; clipped to `box`.

    `image_size` is the (height, width) of the level-0 `box` as read (`read_region` maps the box exactly
    onto the image's pixels).
    """
    x, y, width, height = box
    scale_x, scale_y = width / image_size[1], height / image_size[0]
    left, top = grid_region(image_size, grid, tile_px)[:2]
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    x0 = x + (left + cols.ravel() * tile_px) * scale_x
    y0 = y + (top + rows.ravel() * tile_px) * scale_y
    boxes = np.stack([x0, y0, x0 + tile_px * scale_x, y0 + tile_px * scale_y], axis=1)
    return np.clip(boxes, [x, y, x, y], [x + width, y + height, x + width, y + height])


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
