"""The tile grid moved by half a tile: where a trained model looks again before it answers (test-time
augmentation by grid offset, `AttentionClassifier.image_logits`)."""

from __future__ import annotations

import torch


def shifted_grids(tiles: torch.Tensor, grid: tuple[int, int]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """The image under a tile grid (tiles [T, 3, p, p], row-major) cut again on three grids moved by half a tile:
    down, right, and both; each as (tiles, grid).

    A lesion that the grid cuts in two or four lies whole, or nearly, in a tile of one of them. The image is the
    grid's own pixels (the thin border `image_to_tiles` leaves out stays out); a moved grid gains a row or a
    column of tiles, half of each background, on the side it moves to.
    """
    rows, cols = grid
    tile_px = tiles.shape[-1]
    image = tiles.reshape(rows, cols, 3, tile_px, tile_px).permute(2, 0, 3, 1, 4).reshape(3, rows * tile_px, -1)
    half = tile_px // 2
    views = []
    for down, right in ((half, 0), (0, half), (half, half)):
        new_rows, new_cols = rows + (down > 0), cols + (right > 0)
        canvas = tiles.new_full((3, new_rows * tile_px, new_cols * tile_px), 255)  # white, as the glass
        top, left = (tile_px - down) % tile_px, (tile_px - right) % tile_px  # the grid's lines move down/right
        canvas[:, top:top + rows * tile_px, left:left + cols * tile_px] = image
        views.append((canvas.reshape(3, new_rows, tile_px, new_cols, tile_px).permute(1, 3, 0, 2, 4)
                      .reshape(-1, 3, tile_px, tile_px), (new_rows, new_cols)))
    return views
