"""Tissue tiles of a data set's sub-images, held in memory: what self-supervised pretraining learns from and
what the linear probe of a trunk reads.

Every sub-image is read once at the model's resolution (`tile_um / tile_px` um/px) and cut into its tile grid
as the attention model sees it; tiles that are mostly glass are dropped. Where the slide's lesions are
annotated, a tile is labelled like a sub-image (`sub_image_label`: the highest-risk lesion its square touches,
else normal); elsewhere its label is unknown (-1). No label is used for pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from rich.progress import track
from torch.utils.data import DataLoader, TensorDataset

from attnwsi.data.annotations import slide_lesions, sub_image_label
from attnwsi.data.crops import tissue_fraction
from attnwsi.data.datamodule import SlideDataModule
from attnwsi.data.grid import image_to_tiles, tile_boxes
from attnwsi.data.slides import SubImage, open_slide, read_region


@dataclass
class Tiles:
    tiles: torch.Tensor  # [N, 3, tile_px, tile_px] uint8
    labels: torch.Tensor  # [N] class index, -1 where the lesions are not known
    sub_image: torch.Tensor  # [N] index of the sub-image each tile comes from

    def take(self, index: torch.Tensor) -> Tiles:
        """The tiles at `index` (indices into the N tiles), with their labels and sub-images."""
        return Tiles(self.tiles[index], self.labels[index], self.sub_image[index])


def tissue_tiles(sub_images: list[SubImage], mpp: float, tile_px: int, classes: list[str],
                 annotations_dir: str | Path | None = None, min_tissue: float = 0.5,
                 progress: bool = False) -> Tiles:
    """The tiles of the sub-images with at least `min_tissue` tissue (`tissue_fraction`), with their labels."""
    tiles, labels, owners = [], [], []
    for index, sub_image in enumerate(track(sub_images, "reading tiles") if progress else sub_images):
        slide = open_slide(sub_image.slide_path)
        try:
            image = read_region(slide, sub_image.box, sub_image.level0_mpp, mpp)
        finally:
            slide.close()
        grid_tiles, grid = image_to_tiles(image, tile_px)
        keep = tissue_fraction(grid_tiles.permute(0, 2, 3, 1).numpy()) >= min_tissue
        lesions = slide_lesions(annotations_dir, sub_image.slide_id, classes)
        if lesions is None:
            tile_labels = np.full(len(grid_tiles), -1)
        else:
            boxes = tile_boxes(sub_image.box, image.shape[:2], grid, tile_px)
            tile_labels = np.array([classes.index(sub_image_label((x0, y0, x1 - x0, y1 - y0), lesions, classes, ""))
                                    for x0, y0, x1, y1 in boxes])
        tiles.append(grid_tiles[torch.from_numpy(keep)])
        labels.append(torch.from_numpy(tile_labels[keep]))
        owners.append(torch.full((int(keep.sum()),), index))
    if not tiles or not sum(len(t) for t in tiles):
        raise ValueError("no tissue tiles in these sub-images; check the data root and data.tile_um")
    return Tiles(torch.cat(tiles), torch.cat(labels).long(), torch.cat(owners))


class TileDataModule(L.LightningDataModule):
    """The tissue tiles of a data set's development split (train + val sub-images; never test), shuffled.

    `slides` is the data set's `SlideDataModule` (it generates the haystack when needed and reads the
    manifest); `pixel_stats` are its statistics, for the model's input normalization. Items are (tiles,)
    batches of uint8 tiles; the last incomplete batch is dropped (contrastive losses want full batches).
    """

    def __init__(self, slides: SlideDataModule, batch_size: int = 256, num_workers: int = 0,
                 min_tissue: float = 0.5, max_tiles: int | None = None, seed: int = 0):
        super().__init__()
        self.slides = slides
        self.batch_size, self.num_workers = batch_size, num_workers
        self.min_tissue, self.max_tiles, self.seed = min_tissue, max_tiles, seed
        self.tiles: Tiles | None = None

    @property
    def pixel_stats(self) -> dict | None:
        return self.slides.pixel_stats

    def prepare_data(self) -> None:
        self.slides.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.tiles is not None:
            return
        self.slides.setup(stage)
        development = self.slides.datasets["train"].sub_images + self.slides.datasets["val"].sub_images
        self.tiles = tissue_tiles(development, self.slides.mpp, self.slides.tile_px, self.slides.classes,
                                  self.slides.root.annotations, self.min_tissue, progress=True)
        if self.max_tiles is not None and len(self.tiles.tiles) > self.max_tiles:
            keep = torch.randperm(len(self.tiles.tiles), generator=torch.Generator().manual_seed(self.seed))
            self.tiles = self.tiles.take(keep[: self.max_tiles].sort().values)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.tiles.tiles), batch_size=min(self.batch_size, len(self.tiles.tiles)),
                          shuffle=True, drop_last=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
