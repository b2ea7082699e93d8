"""Time and peak memory of `attnwsi.predict` on one large slide, against the bare extractor on the same tiles.

    python experiments/predict/bench_predict.py [--size 10000] [--tile-um 246 --tile-px 224] [--chunk 256]
                                                 [--device cpu] [--threads 2] [--repeats 2] [--json FILE]

The slide: `--size` x `--size` px at 0.5 um/px, a tiled pyramidal TIFF (attnwsi.data.synthetic.
write_pyramidal_tiff) whose tissue is the centre of a rendered haystack slide (an adenocarcinoma lesion in
it) repeated edge to edge: one tissue piece, one sub-image, the largest image the model has to take at once.
The model: an untrained AttentionClassifier (pre-activation ResNet-18, 64 attention filters) saved as a
checkpoint; its weights do not change the time. Tiles: `--tile-um` um read at `--tile-px` px (the paper's
246 um at 224 px by default), through the extractor `--chunk` at a time (the model's `inference_chunk`).

Each measurement runs in a fresh process, `--repeats` times, the two kinds interleaved so that a busy
machine slows them alike:

  predict    `attnwsi.inference.slides.predict` on the slide: checkpoint loading, tissue detection, reading the
             sub-image, tiling, the model (chunked extraction and attention head), heatmaps, GeoJSON, CSV
  extractor  the same sub-image read and tiled first (not timed), then only `model.extract(tiles)`: the
             chunked ResNet over the same tiles, under no_grad, in the same chunks

Peak memory is the process's peak RSS (VmHWM), also given above its RSS just before the timed part
(after imports and, for `extractor`, with the tiles already in memory).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def rss_bytes(key: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def write_slide(path: Path, size: int) -> None:
    """A size x size px slide at 0.5 um/px: the tissue centre of a rendered haystack slide, repeated."""
    from attnwsi.data.synthetic import HaystackSpec, render_slide, write_pyramidal_tiff

    spec = HaystackSpec(slide_px=(1536, 1536), lesion_px=100)
    rendered, _ = render_slide(3, np.random.default_rng(0), spec)
    patch = rendered[368:1168, 368:1168]  # 800 x 800 px inside the tissue piece
    del rendered
    repeats = -(-size // len(patch))
    image = np.tile(patch, (repeats, repeats, 1))[:size, :size]
    write_pyramidal_tiff(path, image, mpp=0.5)


def write_checkpoint(path: Path, tile_um: float, tile_px: int) -> None:
    """An untrained model with the synthetic haystack's classes, as a Lightning checkpoint."""
    import lightning as L

    from attnwsi.data.synthetic import CLASSES
    from attnwsi.models.classifier import AttentionClassifier

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(AttentionClassifier(CLASSES, tile_um=tile_um, tile_px=tile_px))
    trainer.save_checkpoint(path)


def measure(kind: str, slide: str, ckpt: str, out: str, device: str, threads: int, chunk: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    from attnwsi.data.grid import image_to_tiles
    from attnwsi.data.slides import open_slide, read_region
    from attnwsi.data.tissue import DEFAULT_TISSUE
    from attnwsi.inference.slides import predict, slide_sub_images
    from attnwsi.inference.sub_image import load_model, model_mpp

    torch.set_num_threads(threads)
    if kind == "predict":
        before = rss_bytes("VmRSS")
        start = time.perf_counter()
        result = predict(ckpt, out, slides=[slide], device=device, inference_chunk=chunk)
        seconds = time.perf_counter() - start
        n_tiles = int(result.predictions.query("level == 'slide'")["n_tiles"].sum())
    else:
        model = load_model(ckpt, device, chunk)
        handle = open_slide(slide)
        tiles = []
        for sub_image in slide_sub_images(handle, "bench", slide, None, DEFAULT_TISSUE):
            image = read_region(handle, sub_image.box, sub_image.level0_mpp, model_mpp(model))
            tiles.append(image_to_tiles(image, model.hparams.tile_px)[0])
            del image
        n_tiles = sum(len(t) for t in tiles)
        before = rss_bytes("VmRSS")
        start = time.perf_counter()
        with torch.no_grad():
            for sub_image_tiles in tiles:
                model.extract(sub_image_tiles)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = rss_bytes("VmHWM")
    return {"kind": kind, "seconds": seconds, "n_tiles": n_tiles, "peak_rss_mb": peak / 2**20,
            "peak_above_start_mb": (peak - before) / 2**20}


def run_fresh(kind: str, args, slide: Path, ckpt: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--measure", kind, "--slide", str(slide), "--ckpt", str(ckpt),
               "--out", str(out), "--device", args.device, "--threads", str(args.threads), "--chunk", str(args.chunk)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--tile-um", type=float, default=246.0)
    parser.add_argument("--tile-px", type=int, default=224)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", choices=["predict", "extractor"], help=argparse.SUPPRESS)
    parser.add_argument("--slide", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.slide, args.ckpt, args.out, args.device, args.threads,
                                 args.chunk)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide, ckpt = tmp / "bench.tiff", tmp / "model.ckpt"
        write_slide(slide, args.size)
        write_checkpoint(ckpt, args.tile_um, args.tile_px)
        runs = [run_fresh(kind, args, slide, ckpt, tmp / f"out_{i}")
                for i in range(args.repeats) for kind in ("predict", "extractor")]
    summary = {kind: {key: statistics.median(r[key] for r in runs if r["kind"] == kind)
                      for key in ("seconds", "n_tiles", "peak_rss_mb", "peak_above_start_mb")}
               for kind in ("predict", "extractor")}
    summary["ratio"] = summary["predict"]["seconds"] / summary["extractor"]["seconds"]
    settings = ("size", "tile_um", "tile_px", "chunk", "device", "threads", "repeats")
    result = {"settings": {key: getattr(args, key) for key in settings},
              "runs": runs, "median": summary}
    print(json.dumps(result["median"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
