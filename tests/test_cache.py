"""The tile cache (`data.cache`): the same tiles as reading the slide (within JPEG's tolerance), one entry per
slide file, box and resolution, and entries that a changed slide or setting never reuses.

The real slide is CMU-1-Small-Region (OpenSlide test data, CC0) in ../shared/data/wsi/.
"""

import os

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from attnwsi.data.cache import RegionCache
from attnwsi.data.datamodule import SubImageDataset, collate_samples
from attnwsi.data.slides import SlideHandles, SubImage
from attnwsi.data.synthetic import write_pyramidal_tiff

SVS = "wsi/CMU-1-Small-Region.svs"


def svs_sub_images(shared_data, n: int = 4) -> list[SubImage]:
    path = str(shared_data / SVS)
    return [SubImage(f"s_{i}", "s", path, (400 + 300 * i, 700, 900, 700), 0.499, "normal") for i in range(n)]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(255**2 / ((a.double() - b.double()) ** 2).mean()))


def test_cached_epochs_return_the_tiles_of_the_slide_within_jpeg_tolerance(shared_data, tmp_path):
    sub_images = svs_sub_images(shared_data)
    mpp, tile_px = 246 / 224, 224  # the paper's geometry: the SVS's level 0 resampled
    direct = SubImageDataset(sub_images, ["normal"], mpp, tile_px)
    cache = RegionCache(tmp_path / "cache")
    cached = SubImageDataset(sub_images, ["normal"], mpp, tile_px, cache=cache)
    first = [cached[i] for i in range(len(cached))]  # fills the cache
    assert len(list((tmp_path / "cache" / "s").glob("*.jpg"))) == len(sub_images)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.jpg")}
    again = [cached[i] for i in range(len(cached))]  # from the cache
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.jpg")} == mtimes  # not rewritten
    for i, sample in enumerate(direct):
        assert torch.equal(first[i].tiles, again[i].tiles)  # filling and reading give the same pixels
        assert again[i].grid == sample.grid and again[i].tiles.shape == sample.tiles.shape
        assert psnr(again[i].tiles, sample.tiles) > 36
        assert (again[i].tiles.float() - sample.tiles.float()).abs().mean() < 4  # of 255


def test_a_changed_slide_file_or_resolution_is_read_afresh(tmp_path):
    rng = np.random.default_rng(0)
    slide = tmp_path / "slide.tiff"
    write_pyramidal_tiff(slide, rng.integers(0, 256, (256, 256, 3), np.uint8), mpp=0.5)
    sub_image = SubImage("a_0", "a", str(slide), (0, 0, 256, 256), 0.5, "normal")
    cache = RegionCache(tmp_path / "cache")
    old = cache.read(SlideHandles(), sub_image, 0.5)
    assert cache.read(SlideHandles(), sub_image, 1.0).shape == (128, 128, 3)  # another resolution, another entry
    assert len(list((tmp_path / "cache").rglob("*.jpg"))) == 2
    write_pyramidal_tiff(slide, np.full((256, 256, 3), 30, np.uint8), mpp=0.5)  # the slide changes
    os.utime(slide, ns=(slide.stat().st_atime_ns, slide.stat().st_mtime_ns + 1_000_000))
    new = cache.read(SlideHandles(), sub_image, 0.5)
    assert abs(float(new.mean()) - 30) < 2 and abs(float(old.mean()) - 127) < 10
    assert len(list((tmp_path / "cache").rglob("*.jpg"))) == 3


def test_workers_filling_one_cache_together_leave_whole_files(shared_data, tmp_path):
    sub_images = svs_sub_images(shared_data, 2) * 4  # every entry asked for by both workers at once
    dataset = SubImageDataset(sub_images, ["normal"], 1.0, 64, cache=RegionCache(tmp_path / "cache"))
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate_samples)
    tiles = [batch[0].tiles for batch in loader]
    assert all(torch.equal(t, tiles[i % 2]) for i, t in enumerate(tiles))
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*"))
    assert len(files) == 2 + 1 and not [f for f in files if f.endswith(".tmp")]  # the folder "s" and 2 entries
    assert pd.Series(files).str.endswith(".jpg").sum() == 2
