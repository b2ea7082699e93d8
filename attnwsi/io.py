"""Atomic writes: every file the package writes goes through here.

A file is written to a temporary name beside its destination and then renamed over it, so a crash or a kill
never leaves half a file that a rerun (or another tool) would trust.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then rename it: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, data, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent))


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_npz_atomic(path: str | Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as file:  # a file object: np.savez would add ".npz" to the temporary name
            np.savez(file, **arrays)

    write_atomic(path, write)


def write_png_atomic(path: str | Path, picture: Image.Image | np.ndarray, compress_level: int = -1) -> None:
    """A picture (PIL image or RGB uint8 array) as PNG; `compress_level` 1 is fastest, -1 zlib's default (PIL's)."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level))
