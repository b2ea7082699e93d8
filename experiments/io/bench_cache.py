"""Does the tile cache (`data.cache`) shorten an epoch? And which file format should it keep?

    python experiments/io/bench_cache.py [--haystack-root DIR] [--epochs 3] [--json FILE]

1. Formats: one real sub-image (the shared SVS at the paper's 1.1 um/px) encoded as JPEG (quality 90, 95, and
   95 without chroma subsampling), PNG and lossless WebP: size against raw, encode and decode time, PSNR.
2. Epoch time of the training data path (a DataLoader over `SubImageDataset` with the configs' augmentation
   and workers, no model) without the cache, with a cold cache (the first epoch fills it) and with a warm
   one (the median of the later epochs), for
     - the default haystack (conf/data/haystack.yaml: 2 um/px from the slides' 2-um/px level, 32-px tiles),
     - the paper's geometry on the shared SVS (246-um tiles at 224 px: the 0.5-um/px level 0 resampled,
       free rotation and scaling), its tissue cut into sub-images of at most 4 x 4 tiles, repeated to 48.
   Ratios (cached / uncached) are measured in the same minute.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pandas as pd
from bench_io import SLIDES, sub_images
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from attnwsi.data.cache import RegionCache
from attnwsi.data.datamodule import SubImageDataset, collate_samples
from attnwsi.data.manifest import read_manifest, sub_images_of
from attnwsi.data.slides import open_slide, read_region

HAYSTACK_AUGMENT = dict(rotate=False, flip=True, scale=None)  # conf/data/haystack.yaml
PAPER_AUGMENT = dict(rotate=True, flip=True, scale=(0.8, 1.2))  # conf/data/slides.yaml


def timed(run, repeats: int = 10) -> float:
    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def formats() -> list[dict]:
    slide = open_slide(SLIDES[0])
    image = read_region(slide, (300, 600, 1800, 1800), 0.499, 246 / 224)
    codecs = {
        "JPEG q90": (lambda: imagecodecs.jpeg8_encode(image, level=90), imagecodecs.jpeg8_decode),
        "JPEG q95": (lambda: imagecodecs.jpeg8_encode(image, level=95), imagecodecs.jpeg8_decode),
        "JPEG q95 4:4:4 (chosen)": (lambda: imagecodecs.jpeg8_encode(image, level=95, subsampling=(1, 1)),
                                    imagecodecs.jpeg8_decode),
        "PNG level 1": (lambda: cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
                        lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)),
        "WebP lossless": (lambda: imagecodecs.webp_encode(image, lossless=True, level=0), imagecodecs.webp_decode),
    }
    rows = []
    for name, (encode, decode) in codecs.items():
        data = encode()
        error = np.mean((decode(data)[..., :3].astype(float) - image) ** 2)
        rows.append(dict(format=name, size=len(data) / image.nbytes, encode_ms=1000 * timed(encode),
                         decode_ms=1000 * timed(lambda data=data, decode=decode: decode(data)),
                         psnr=10 * math.log10(255**2 / error) if error else math.inf))
    return rows


def epochs(dataset_of, workers: int, n_epochs: int) -> dict:
    """Seconds per epoch: uncached (median), the cold cached epoch, warm cached epochs (median)."""
    def epoch_seconds(dataset) -> list[float]:
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_samples,
                            persistent_workers=workers > 0)
        seconds = []
        for _ in range(n_epochs):
            start = time.perf_counter()
            for _ in loader:
                pass
            seconds.append(time.perf_counter() - start)
        return seconds

    with tempfile.TemporaryDirectory() as tmp:
        uncached = epoch_seconds(dataset_of(None))
        cached = epoch_seconds(dataset_of(RegionCache(tmp)))
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.jpg"))
    warm = statistics.median(cached[1:])
    return dict(uncached_s=statistics.median(uncached[1:]), cold_s=cached[0], warm_s=warm,
                cache_mib=size / 2**20)


def haystack(root: Path, workers: int, n_epochs: int) -> dict:
    classes = json.loads((root / "dataset.json").read_text())["classes"]
    manifest = read_manifest(root / "manifest.csv", classes)
    train = sub_images_of(manifest[manifest["split"] == "train"])
    result = epochs(lambda cache: SubImageDataset(train, classes, 64 / 32, 32, HAYSTACK_AUGMENT, cache=cache),
                    workers, n_epochs)
    return dict(setting=f"default haystack ({len(train)} train images, 2 um/px, 32-px tiles)", **result)


def paper_svs(workers: int, n_epochs: int) -> dict:
    manifest = sub_images(SLIDES[0], 4 * 246.0)
    manifest = pd.concat([manifest] * math.ceil(48 / len(manifest)), ignore_index=True)
    rows = sub_images_of(manifest)
    result = epochs(lambda cache: SubImageDataset(rows, ["normal"], 246 / 224, 224, PAPER_AUGMENT, cache=cache),
                    workers, n_epochs)
    return dict(setting=f"paper geometry on the SVS ({len(rows)} sub-images, 1.1 um/px, 224-px tiles)", **result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--haystack-root", type=Path, default=Path.home() / ".cache/attnwsi/haystack_n320_s0",
                        help="a generated default haystack (run the default training once to make it)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per condition (the first is a warm-up)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    console = Console(width=200)

    format_rows = formats()
    table = Table(title="Cache formats: one 817 x 817 px sub-image of the SVS at 1.1 um/px")
    for column in ("format", "size / raw", "encode ms", "decode ms", "PSNR dB"):
        table.add_column(column, justify="left" if column == "format" else "right")
    for r in format_rows:
        table.add_row(r["format"], f"{r['size']:.3f}", f"{r['encode_ms']:.1f}", f"{r['decode_ms']:.1f}",
                      f"{r['psnr']:.1f}")
    console.print(table)

    epoch_rows = [haystack(args.haystack_root, args.workers, args.epochs), paper_svs(args.workers, args.epochs)]
    table = Table(title=f"Training data path, seconds per epoch ({args.workers} workers, no model)")
    for column in ("setting", "uncached", "cold cache", "warm cache", "warm / uncached", "cache MiB"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for r in epoch_rows:
        table.add_row(r["setting"], f"{r['uncached_s']:.2f}", f"{r['cold_s']:.2f}", f"{r['warm_s']:.2f}",
                      f"{r['warm_s'] / r['uncached_s']:.2f}", f"{r['cache_mib']:.1f}")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(dict(formats=format_rows, epochs=epoch_rows), indent=2))


if __name__ == "__main__":
    main()
