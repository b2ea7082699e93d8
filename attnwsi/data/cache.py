"""A tile cache for multi-epoch training: each sub-image read from its slide once, at the model's resolution.

With `data.cache=DIR`, the first read of a sub-image stores it as a JPEG (quality 95, no chroma subsampling:
PSNR about 39 dB against the region read, 1/5 of its raw size, decoded at ~3,600 tiles of 224 px a second
per core; PNG was 5 times as slow to decode, experiments/io/bench_cache.py) under

    DIR/<slide_id>/<key>.jpg

where `key` is a hash of the slide file's identity (path, size, modification time), the box, the um/px, the
reading tolerance and the reader's version: a changed slide, setting or reader reads afresh, never a stale
entry. A sub-image wider than JPEG allows (65,535 px) is not cached. Files are written
atomically under names of their own, so DataLoader workers and DDP ranks can fill one cache together. Every
read, the first included, returns the decoded JPEG, so an epoch reads the same pixels whether or not the
cache was filled before (a resumed run trains exactly as an uninterrupted one). Augmentation is applied on
top, every epoch. Delete DIR to free the space; nothing else refers to it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import imagecodecs
import numpy as np

from attnwsi.data.slides import MPP_TOLERANCE, READER, SlideHandles, SubImage, read_region
from attnwsi.io import file_identity, write_bytes_atomic

QUALITY = 95
SUBSAMPLING = (1, 1)  # 4:4:4: the colour at full resolution
JPEG_MAX_SIDE = 65_535  # a larger sub-image is read from its slide every time


class RegionCache:
    """Sub-images at `mpp` um/px, read from their slides once and kept under `directory` as JPEG files."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, sub_image: SubImage, mpp: float) -> Path:
        key = [file_identity(sub_image.slide_path), list(sub_image.box), sub_image.level0_mpp, mpp, MPP_TOLERANCE,
               READER, QUALITY, list(SUBSAMPLING)]
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
        return self.directory / sub_image.slide_id / f"{digest}.jpg"

    def read(self, slides: SlideHandles, sub_image: SubImage, mpp: float) -> np.ndarray:
        """The sub-image as RGB uint8 at `mpp`: from the cache, or read from the slide and stored first."""
        path = self.path(sub_image, mpp)
        try:
            return imagecodecs.jpeg8_decode(path.read_bytes())
        except (FileNotFoundError, imagecodecs.Jpeg8Error):
            pass  # not cached yet (or an unreadable file, written again below)
        image = read_region(slides(sub_image.slide_path), sub_image.box, sub_image.level0_mpp, mpp)
        if max(image.shape[:2]) > JPEG_MAX_SIDE:
            return image
        encoded = imagecodecs.jpeg8_encode(image, level=QUALITY, subsampling=SUBSAMPLING)
        write_bytes_atomic(path, encoded, shared=True)
        return imagecodecs.jpeg8_decode(encoded)
