"""Atomic writes: every file the package writes goes through here.

A file is written to a temporary name beside its destination and then renamed over it, so a crash or a kill
never leaves half a file that a rerun (or another tool) would trust.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_atomic(path: str | Path, write: Callable[[Path], None], shared: bool = False) -> None:
    """`write(tmp)` to a temporary file beside `path` (its folder made if need be), then rename it: a crash
    never leaves half a file, and a failed write leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # `shared`: files that several processes may write at once (DataLoader workers and DDP ranks filling a tile
    # cache) get a temporary name of their own per writer, so none writes into another's; otherwise the name
    # is fixed, so that a rerun after a kill (SIGKILL skips the clean-up below) overwrites the leftover
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp" if shared else f"{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, shared: bool = False) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data), shared)


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


def file_identity(path: str | Path) -> list | None:
    """[path, size, modification time (ns)] of a file, None when there is none: a changed file changes it."""
    path = Path(path)
    if not path.is_file():
        return None
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def recorded(path: str | Path, key: dict, compute: Callable[[], list | dict]) -> tuple[list | dict, bool]:
    """`compute()`'s result (JSON-able), recorded at `path` with `key`: a later call with the same key reads
    the record back instead of computing (returns it with True). Batch commands record each finished item
    this way, so a rerun after a kill does only the rest."""
    path = Path(path)
    if path.exists():
        record = json.loads(path.read_text())
        if record["key"] == json.loads(json.dumps(key, default=_plain)):
            return record["value"], True
    value = compute()
    write_text_atomic(path, json.dumps({"key": key, "value": value}, default=_plain))
    return json.loads(json.dumps(value, default=_plain)), False


def _plain(value):
    """numpy scalars as Python numbers in JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
