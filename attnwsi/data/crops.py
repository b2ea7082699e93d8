"""Crops for the sliding-window baseline (the paper's section 4.2, after DeepSlide) and the windows it reads.

Training crops come from the annotations: a crop of a lesion class is drawn inside one of that class's
lesion boxes, a normal crop from tissue outside every lesion box. Each batch holds the classes in equal
numbers. Whole-slide inference cuts each sub-image into windows of the same size at a stride and keeps
the windows that are mostly tissue.

Sizes are physical: a crop covers `crop_um` x `crop_um` micrometres, read at `crop_px` x `crop_px` pixels
(`crop_um / crop_px` um/px), whatever the scanner's resolution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from attnwsi.data.annotations import slide_lesions
from attnwsi.data.datamodule import SlideDataModule
from attnwsi.data.layout import DataRoot
from attnwsi.data.sampling import item_seed, loader_options, training_loader
from attnwsi.data.slides import Box, SlideHandles, SubImage, group_by_slide, open_slide, read_region

log = logging.getLogger(__name__)

MAX_NORMAL_TRIES = 20  # draws of a normal crop before taking one that is mostly glass


def tissue_fraction(image: np.ndarray) -> np.ndarray:
    """The share of tissue pixels in an RGB uint8 image [H, W, 3] (or a batch [..., H, W, 3]).

    A pixel is tissue when it is coloured (max - min channel > 20) or dark (channel mean < 204): the
    near-white, grey glass around the tissue is neither. A fixed per-pixel rule, so that a single window
    can be judged on its own; `attnwsi.data.tissue.tissue_mask` (which finds the slide's tissue and the
    pixels of the data set's statistics) instead thresholds saturation at Otsu's level over a whole overview.
    """
    image = image.astype(np.int16)
    tissue = (image.max(-1) - image.min(-1) > 20) | (image.mean(-1) < 204)
    return tissue.mean(axis=(-2, -1))


def overlaps(a: Box, b: Box) -> bool:
    """Whether two (x, y, width, height) boxes share any area."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def crop_in_box(box: Box, side: int, generator: torch.Generator | None = None) -> Box:
    """A side x side crop at a uniformly random place inside `box`.

    Along an axis where the box is shorter than the crop, the crop instead holds the whole box, at a
    uniformly random place (as a window of whole-slide inference holds a small lesion anywhere).
    """
    x, y, width, height = box
    return (round(uniform(x, x + width - side, generator)), round(uniform(y, y + height - side, generator)),
            side, side)


@dataclass
class CropSource:
    """Where crops of one class come from: a box on a slide, and (for normal) the lesion boxes to avoid."""

    slide_path: str
    level0_mpp: float
    box: Box
    avoid: list[Box] = field(default_factory=list)


def crop_sources(sub_images: list[SubImage], classes: list[str],
                 annotations_dir: Path) -> dict[str, list[CropSource]]:
    """Per class, the places its crops come from, over the sub-images of one split.

    A lesion class: every lesion box of that class on these sub-images' slides. Normal (`classes[0]`):
    every sub-image whose lesions are known (its slide has an annotation file, or it is labelled normal),
    avoiding its slide's lesion boxes. Sub-images of abnormal slides without annotations give no crops.
    """
    sources: dict[str, list[CropSource]] = {c: [] for c in classes}
    by_slide = group_by_slide(sub_images)
    for slide_id in sorted(by_slide):
        slide_sub_images = by_slide[slide_id]
        first = slide_sub_images[0]
        lesions = slide_lesions(annotations_dir, slide_id, classes)
        boxes = [lesion.box for lesion in lesions or []]
        for lesion, box in zip(lesions or [], boxes):
            sources[lesion.name].append(CropSource(first.slide_path, first.level0_mpp, box))
        for sub_image in slide_sub_images:
            if lesions is not None or sub_image.label == classes[0]:
                sources[classes[0]].append(CropSource(sub_image.slide_path, sub_image.level0_mpp, sub_image.box,
                                                      boxes))
    return sources


class CropDataset(Dataset):
    """Balanced crops: item i is a crop of class `present[i % len(present)]` from a random source.

    `present` are the classes that have sources. Item keys are indices (item i is always the same crop,
    drawn from seed + i: validation) or (epoch, index) pairs from an `EpochSampler` (training: a new crop
    and augmentation every epoch, drawn from (seed, epoch, index) alone, so a resumed run sees the same).
    Items are (crop uint8 [3, crop_px, crop_px], class index).
    """

    def __init__(self, sources: dict[str, list[CropSource]], classes: list[str], crop_um: float, crop_px: int,
                 length: int, min_tissue: float, transform=None, seed: int = 0):
        self.sources, self.classes = sources, list(classes)
        self.present = [c for c in classes if sources[c]]
        self.crop_um, self.crop_px, self.length = crop_um, crop_px, length
        self.min_tissue, self.transform, self.seed = min_tissue, transform, seed
        self._slides = SlideHandles()

    def __len__(self) -> int:
        return self.length

    def read(self, source: CropSource, box: Box) -> np.ndarray:
        """The level-0 square `box` at exactly crop_px x crop_px pixels."""
        mpp = box[2] * source.level0_mpp / self.crop_px
        return read_region(self._slides(source.slide_path), box, source.level0_mpp, mpp, tolerance=0)

    def sample(self, cls: str, generator: torch.Generator | None) -> tuple[np.ndarray, Box, CropSource]:
        """A crop of class `cls`: its pixels, its level-0 box and its source.

        A normal crop is drawn again (from a new source) while it overlaps a lesion box of its slide or
        holds less than `min_tissue` tissue; after MAX_NORMAL_TRIES draws the last one clear of the lesions
        is taken even if it is mostly glass.
        """
        sources, last = self.sources[cls], None
        for _ in range(MAX_NORMAL_TRIES):
            source = sources[int(torch.randint(len(sources), (), generator=generator))]
            box = crop_in_box(source.box, round(self.crop_um / source.level0_mpp), generator)
            if any(overlaps(box, lesion) for lesion in source.avoid):
                continue
            last = self.read(source, box), box, source
            if cls != self.classes[0] or tissue_fraction(last[0]) >= self.min_tissue:
                return last
        if last is None:
            raise RuntimeError(f"no {cls} crop clear of the lesion boxes in {MAX_NORMAL_TRIES} draws; are "
                               f"the sub-images smaller than a crop ({self.crop_um} um)?")
        log.warning("no %s crop with enough tissue in %d draws; using a sparse one", cls, MAX_NORMAL_TRIES)
        return last

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):  # training: (epoch, index)
            seed, i = item_seed(self.seed, *key), key[1]
        else:  # validation: the same crop every epoch
            seed, i = self.seed + key, key
        cls = self.present[i % len(self.present)]
        image, _, _ = self.sample(cls, torch.Generator().manual_seed(seed))
        crop = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from torch's random state
                torch.manual_seed(seed)
                crop = self.transform(crop)
        return crop, self.classes.index(cls)


class RandomRotate90(torch.nn.Module):
    """Rotation by 0, 90, 180 or 270 degrees, each equally likely."""

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return torch.rot90(crop, int(torch.randint(4, ())), dims=(-2, -1))


def train_transform(color_jitter: dict | None) -> v2.Compose:
    """Flips and 90-degree turns (all 8 symmetries of the square), then colour jitter, on uint8 crops."""
    steps = [v2.RandomHorizontalFlip(), RandomRotate90()]
    if color_jitter:
        steps.append(v2.ColorJitter(**color_jitter))
    return v2.Compose(steps)


@dataclass(frozen=True)
class WindowGrid:
    """Where the windows of a sub-image start: every `stride` level-0 px (`stride_px` window pixels), `rows`
    x `cols` of them, each `side` level-0 px wide."""

    side: int
    stride_px: int
    stride: float
    rows: int
    cols: int


def window_grid(sub_image: SubImage, crop_um: float, crop_px: int, stride_um: float) -> WindowGrid:
    """The grid of windows of `crop_um` (read at `crop_px` px) every `stride_um` that lie within the sub-image."""
    side = round(crop_um / sub_image.level0_mpp)  # a window's side in level-0 px
    stride_px = max(1, round(stride_um * crop_px / (side * sub_image.level0_mpp)))
    stride = stride_px * side / crop_px
    width, height = sub_image.box[2:]
    cols = max(1, (round(width / side * crop_px) - crop_px) // stride_px + 1)
    rows = max(1, math.floor((height - side) / stride) + 1)
    return WindowGrid(side, stride_px, stride, rows, cols)


def sub_image_windows(slide, sub_image: SubImage, crop_um: float, crop_px: int, stride_um: float,
                      min_tissue: float) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """The tissue windows of one sub-image, one row of windows at a time.

    Windows of `crop_um` (read at `crop_px` px) start every `stride_um` across the sub-image box and lie
    wholly inside it (a box smaller than a window gives one window at its corner). A window is kept when
    at least `min_tissue` of its pixels are tissue (`tissue_fraction`). Yields the level-0 top-left
    corners [n, 2] (x, y) and the windows [n, 3, crop_px, crop_px] (uint8) of each row with tissue.
    """
    grid = window_grid(sub_image, crop_um, crop_px, stride_um)
    mpp = grid.side * sub_image.level0_mpp / crop_px  # read so that a window is exactly crop_px wide
    x0, y0 = sub_image.box[:2]
    band_width = max(grid.side, math.ceil((grid.cols - 1) * grid.stride) + grid.side)
    xs = x0 + np.round(np.arange(grid.cols) * grid.stride).astype(np.int64)
    for r in range(grid.rows):
        y = y0 + round(r * grid.stride)
        band = read_region(slide, (x0, y, band_width, grid.side), sub_image.level0_mpp, mpp, tolerance=0)
        windows = np.stack([band[:crop_px, c * grid.stride_px : c * grid.stride_px + crop_px]
                            for c in range(grid.cols)])
        keep = tissue_fraction(windows) >= min_tissue
        if keep.any():
            corners = np.stack([xs, np.full(grid.cols, y, np.int64)], axis=1)[keep]
            yield corners, torch.from_numpy(windows[keep]).permute(0, 3, 1, 2)


class CropDataModule(L.LightningDataModule):
    """Balanced training and validation crops from the lesion annotations of the sub-images in a manifest.

    The manifest, its splits and the pixel statistics are those of the attention model: a `SlideDataModule`
    over the same `root` (and, with `synthetic`, the same generated haystack) provides them. Lesion boxes
    are read from `annotations_dir/<slide_id>.geojson` (default `root/annotations`). `windows` cuts a
    validation or test sub-image into the windows of whole-slide inference.
    """

    def __init__(self, root: str, classes: list[str], crop_um: float, crop_px: int, stride_um: float,
                 min_tissue: float = 0.5, annotations_dir: str | None = None, batch_size: int = 64,
                 num_workers: int | None = 0, crops_per_epoch: int = 4096, val_crops: int = 1024,
                 color_jitter: dict | None = None, synthetic: dict | None = None, test_fraction: float = 0.25,
                 val_fraction: float = 0.2, split_seed: int = 0, max_images: int | None = None, seed: int = 0):
        super().__init__()
        self.classes, self.seed = list(classes), seed
        self.crop_um, self.crop_px, self.stride_um, self.min_tissue = crop_um, crop_px, stride_um, min_tissue
        self.annotations_dir = Path(annotations_dir) if annotations_dir else DataRoot(root).annotations
        self.batch_size, self.num_workers = batch_size, num_workers
        self.crops_per_epoch, self.val_crops = crops_per_epoch, val_crops
        self.color_jitter = dict(color_jitter) if color_jitter else None
        self.slides = SlideDataModule(root, classes, tile_um=crop_um, tile_px=crop_px,
                                      num_workers=num_workers, synthetic=synthetic,
                                      test_fraction=test_fraction, val_fraction=val_fraction,
                                      split_seed=split_seed, max_images=max_images)
        self.datasets: dict[str, CropDataset] = {}

    @property
    def pixel_stats(self) -> dict | None:
        return self.slides.pixel_stats

    def sub_images(self, split: str) -> list[SubImage]:
        return self.slides.datasets[split].sub_images

    def prepare_data(self) -> None:
        self.slides.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.slides.setup(stage)
        settings = (("train", self.crops_per_epoch, train_transform(self.color_jitter), self.seed),
                    ("val", self.val_crops, None, 0))  # validation: the same crops every epoch, not augmented
        for split, length, transform, seed in settings:
            sources = crop_sources(self.sub_images(split), self.classes, self.annotations_dir)
            missing = [c for c in self.classes if not sources[c]]
            if missing:
                log.warning("%s split: no crops of class(es) %s (no annotated lesions)", split, missing)
            self.datasets[split] = CropDataset(sources, self.classes, self.crop_um, self.crop_px, length,
                                               self.min_tissue, transform, seed)

    def windows(self, sub_image: SubImage) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """`sub_image_windows` of one sub-image, with this data module's window settings."""
        slide = open_slide(sub_image.slide_path)
        try:
            yield from sub_image_windows(slide, sub_image, self.crop_um, self.crop_px, self.stride_um,
                                         self.min_tissue)
        finally:
            slide.close()

    def _loader(self, split: str) -> DataLoader:
        # Item i is already a random crop of class i % C, so no shuffling is needed for balanced batches.
        options = loader_options(self.num_workers, self.trainer)
        if split == "train":
            return training_loader(self.datasets[split], self.seed, False, self.batch_size, self.trainer, **options)
        return DataLoader(self.datasets[split], batch_size=self.batch_size, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")
