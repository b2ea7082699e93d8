"""SlideDataModule: sub-images from a manifest, read at a physical resolution and cut into tile grids."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from attnwsi.data.cache import RegionCache
from attnwsi.data.grid import augment, image_to_tiles
from attnwsi.data.layout import DataRoot
from attnwsi.data.manifest import SPLITS, build_manifest, check_classes, read_manifest, sub_images_of, write_dataset
from attnwsi.data.sampling import item_rng, loader_options, training_loader
from attnwsi.data.slides import SlideError, SlideHandles, SubImage, read_region
from attnwsi.data.synthetic import HaystackSpec, generate_haystack

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One image: its tiles [T, 3, h, w] (uint8, row-major over the grid) and grid shape (H', W')."""

    tiles: torch.Tensor
    grid: tuple[int, int]
    label: int
    sub_image_id: str

    def pin_memory(self) -> Sample:
        """The DataLoader's `pin_memory` calls this (training on CUDA)."""
        return replace(self, tiles=self.tiles.pin_memory())


class SubImageDataset(Dataset):
    """Sub-images as tile grids. Slide handles are opened lazily, one set per DataLoader worker.

    Item keys are indices, or (epoch, index) pairs from an `EpochSampler`: augmentation draws from
    (seed, epoch, index) alone, so a resumed run augments exactly as the uninterrupted one.
    """

    def __init__(self, sub_images: list[SubImage], classes: list[str], mpp: float, tile_px: int,
                 augment: dict | None = None, seed: int = 0, cache: RegionCache | None = None):
        self.sub_images = list(sub_images)
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.mpp, self.tile_px = mpp, tile_px
        self.augment, self.seed, self.cache = augment, seed, cache
        self._slides = SlideHandles()

    def __len__(self) -> int:
        return len(self.sub_images)

    @property
    def labels(self) -> list[str]:
        return [sub_image.label for sub_image in self.sub_images]

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        sub_image = self.sub_images[i]
        if self.cache is None:
            image = read_region(self._slides(sub_image.slide_path), sub_image.box, sub_image.level0_mpp, self.mpp)
        else:
            image = self.cache.read(self._slides, sub_image, self.mpp)
        if self.augment:
            image = augment(image, item_rng(self.seed, epoch, i), **self.augment)
        tiles, grid = image_to_tiles(image, self.tile_px)
        return Sample(tiles, grid, self.class_index[sub_image.label], sub_image.sub_image_id)


def collate_samples(samples: list[Sample]) -> list[Sample]:
    """Images of different grid shapes stay a list; they are never padded to one size."""
    return samples


class SlideDataModule(L.LightningDataModule):
    """Train/val/test sub-images from `root/manifest.csv`.

    With `synthetic` set, `prepare_data` first generates the haystack data set into `root` (once) and writes
    its manifest (one sub-image per slide, patient-level split), so synthetic and real slides share one path.
    With `cache` set (a folder), sub-images are read from their slides once and kept there at the model's
    resolution (`attnwsi.data.cache`).
    """

    def __init__(self, root: str, classes: list[str], tile_um: float, tile_px: int, batch_size: int = 2,
                 num_workers: int | None = 0, augment: dict | None = None, synthetic: dict | None = None,
                 test_fraction: float = 0.25, val_fraction: float = 0.2, split_seed: int = 0,
                 max_images: int | None = None, seed: int = 0, cache: str | None = None):
        super().__init__()
        self.root, self.classes = DataRoot(root), list(classes)
        self.seed = seed  # the run's: the training order and augmentation (`attnwsi.data.sampling`)
        self.mpp, self.tile_px = tile_um / tile_px, tile_px
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment = dict(augment) if augment else None
        self.synthetic = dict(synthetic) if synthetic else None
        self.test_fraction, self.val_fraction, self.split_seed = test_fraction, val_fraction, split_seed
        self.max_images = max_images
        self.cache = RegionCache(cache) if cache else None
        self.datasets: dict[str, SubImageDataset] = {}
        self.pixel_stats: dict | None = None

    def prepare_data(self) -> None:
        if self.synthetic is None:
            return
        root = self.root
        spec = HaystackSpec(**self.synthetic, classes=self.classes)
        if root.manifest.exists():
            written = json.loads(root.spec.read_text())
            if written != json.loads(json.dumps(asdict(spec))):
                raise ValueError(f"{root.path} holds a haystack generated with other settings ({written}); "
                                 "delete that folder or point data.root elsewhere")
            return
        log.info("Generating the synthetic haystack (%d slides) into %s", spec.n_slides, root.path)
        generate_haystack(root.path, spec, workers=self.num_workers or 1)
        result = build_manifest(root.slides, root.labels, self.classes, root.annotations,
                                test_fraction=self.test_fraction, val_fraction=self.val_fraction,
                                seed=self.split_seed)
        if result.failures:
            raise SlideError("; ".join(f"{k}: {v}" for k, v in result.failures.items()))
        write_dataset(root.path, result.manifest, self.classes)

    def setup(self, stage: str | None = None) -> None:
        stats = self.root.stats
        self.pixel_stats = json.loads(stats.read_text()) if stats.exists() else None
        manifest = read_manifest(self.root.manifest, self.classes)
        check_classes(self.root.path, self.classes)
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            if self.max_images is not None:
                rows = rows.iloc[: self.max_images]
            augment = self.augment if split == "train" else None
            self.datasets[split] = SubImageDataset(sub_images_of(rows), self.classes, self.mpp, self.tile_px,
                                                   augment, seed=self.seed, cache=self.cache)

    def class_counts(self, split: str = "train") -> list[int]:
        labels = self.datasets[split].labels
        return [labels.count(c) for c in self.classes]

    def _loader(self, split: str) -> DataLoader:
        options = {**loader_options(self.num_workers, self.trainer), "collate_fn": collate_samples}
        if split == "train":
            return training_loader(self.datasets[split], self.seed, True, self.batch_size, self.trainer, **options)
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            # every evaluation image exactly once over all processes (a DistributedSampler would pad with
            # repeats, and repeats would be counted in the metrics)
            sampler = UnrepeatedDistributedSampler(self.datasets[split], num_replicas=self.trainer.world_size,
                                                   rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(self.datasets[split], batch_size=self.batch_size, sampler=sampler, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
