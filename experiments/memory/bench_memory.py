"""Peak memory and time of one training step, unchunked vs streamed extraction (attnwsi.models.streaming).

    python experiments/memory/bench_memory.py                       # 16 .. 1024 tiles, then 4096 streamed
    python experiments/memory/bench_memory.py --tiles 16 64 --large 0 --device cuda

Every measurement runs in a fresh subprocess: the model (pre-activation ResNet-18, last stage trainable,
and the attention head with 64 filters), random uint8 tiles of `--px` pixels on the host, an untimed
warm-up step on one chunk's worth of tiles, then one measured step (forward, cross-entropy, backward, Adam).
Peak memory beyond the input tiles: on CPU the growth of the process's peak RSS (VmHWM, reset before the
step) over its RSS before the step; on CUDA `torch.cuda.max_memory_allocated` over the memory allocated
before the step. The modes run interleaved (unchunked, streamed recomputing the frozen trunk, streamed
keeping its output) so that a busy machine slows them alike. `--large N` adds one streamed step on N tiles
per streamed mode, without warm-up, and reports the peak RSS of the whole process from its start.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import re
import subprocess
import sys
import time

MODES = ("unchunked", "recompute_frozen", "keep_frozen")


def grid_of(n_tiles: int) -> tuple[int, int]:
    """The most nearly square grid of n_tiles tiles."""
    rows = math.isqrt(n_tiles)
    while n_tiles % rows:
        rows -= 1
    return rows, n_tiles // rows


def proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def measure(mode: str, n_tiles: int, px: int, chunk_size: int, device_name: str, warm_up: bool,
            threads: int) -> dict:
    """One configuration, in this process: peak memory beyond the input tiles and step time."""
    import torch
    import torch.nn.functional as F

    from attnwsi.models.attention import GridAttention
    from attnwsi.models.extractor import GridExtractor
    from attnwsi.models.streaming import stream_features

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    extractor = GridExtractor("resnetv2_18", pretrained=False, trainable_stages=1).to(device).train()
    head = GridAttention(4, extractor.out_channels, 64).to(device).train()
    params = [p for p in [*extractor.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    mean = torch.tensor([0.7, 0.5, 0.7], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.15, 0.2, 0.15], device=device).view(1, 3, 1, 1)
    tiles = torch.randint(0, 256, (n_tiles, 3, px, px), dtype=torch.uint8)
    label = torch.tensor([1], device=device)

    def normalize(chunk):
        return (chunk.float() / 255.0 - mean) / std

    def step(tiles):
        optimizer.zero_grad(set_to_none=True)
        if mode == "unchunked":
            features = extractor(normalize(tiles.to(device)))
        else:
            features = stream_features(extractor, tiles, normalize, chunk_size, device,
                                       keep_frozen=mode == "keep_frozen")
        logits, _ = head(GridExtractor.feature_map(features, grid_of(len(tiles)))[None])
        F.cross_entropy(logits, label).backward()
        optimizer.step()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if warm_up:  # on one chunk's worth of tiles: allocates the gradients and Adam's state, warms up oneDNN
        step(tiles[:chunk_size])
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give memory freed by the warm-up back to the system
        before = proc_status_bytes("VmRSS")
        if warm_up:  # else VmHWM stays the peak RSS of the whole process
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    start, start_cpu = time.perf_counter(), time.process_time()
    step(tiles)
    synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else proc_status_bytes("VmHWM")
    return {"mode": mode, "tiles": n_tiles, "peak_beyond_tiles_MB": (peak - before) / 1e6, "step_s": seconds,
            "step_cpu_s": cpu_seconds, "process_peak_rss_MB": proc_status_bytes("VmHWM") / 1e6}


def run_child(args, mode: str, n_tiles: int, warm_up: bool = True) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(n_tiles), "--px", str(args.px), "--chunk-size",
               str(args.chunk_size), "--device", args.device, "--threads", str(args.threads)]
    if not warm_up:
        command.append("--no-warm-up")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def slope(results: list[dict]) -> float:
    """Least-squares MB per tile of the peak memory over the tile counts measured."""
    xs = [r["tiles"] for r in results]
    ys = [r["peak_beyond_tiles_MB"] for r in results]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    covariance = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True))
    return covariance / sum((x - x_mean) ** 2 for x in xs)


def summarize(results: dict[str, list[dict]], tile_counts: list[int]) -> None:
    """The table of peak memory and step times, the memory slopes and the streamed / unchunked ratios."""
    print("\n| tiles | " + " | ".join(f"{m} MB | s | CPU s" for m in MODES) + " |")
    print("|---" * (1 + 3 * len(MODES)) + "|")
    for n_tiles in tile_counts:
        cells = []
        for mode in MODES:
            row = next((r for r in results[mode] if r["tiles"] == n_tiles), None)
            cells += ([f"{row['peak_beyond_tiles_MB']:.0f}", f"{row['step_s']:.1f}", f"{row['step_cpu_s']:.1f}"]
                      if row else ["-"] * 3)
        print(f"| {n_tiles} | " + " | ".join(cells) + " |")
    unchunked_slope = slope(results["unchunked"])
    print(f"\nunchunked: {unchunked_slope:.3f} MB per tile")
    for mode in MODES[1:]:
        streamed_slope = slope(results[mode])
        pairs = list(zip(results["unchunked"], results[mode], strict=False))
        ratios = {key: ", ".join(f"{s[key] / u[key]:.2f}" for u, s in pairs) for key in ("step_s", "step_cpu_s")}
        print(f"{mode}: {streamed_slope:.4f} MB per tile, {unchunked_slope / streamed_slope:.0f}x less than "
              f"unchunked; step time / unchunked: {ratios['step_s']} (CPU time: {ratios['step_cpu_s']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--unchunked-max", type=int, default=1024, help="largest tile count run unchunked")
    parser.add_argument("--large", type=int, default=4096, help="tiles of the large streamed step (0: none)")
    parser.add_argument("--px", type=int, default=224)
    parser.add_argument("--chunk-size", type=int, default=16, help="at most the smallest --tiles")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "TILES"), help=argparse.SUPPRESS)
    parser.add_argument("--no-warm-up", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n_tiles = args.child
        result = measure(mode, int(n_tiles), args.px, args.chunk_size, args.device, not args.no_warm_up,
                         args.threads)
        print(json.dumps(result))
        return

    print(f"{args.px} px tiles, chunks of {args.chunk_size}, {args.device}, threads {args.threads or 'default'}",
          flush=True)
    results = {mode: [] for mode in MODES}
    for n_tiles in args.tiles:
        for mode in MODES:
            if mode != "unchunked" or n_tiles <= args.unchunked_max:
                results[mode].append(run_child(args, mode, n_tiles))

    summarize(results, args.tiles)

    if args.large:
        for mode in MODES[1:]:
            result = run_child(args, mode, args.large, warm_up=False)
            print(f"{args.large} tiles, {mode}: peak RSS of the whole process "
                  f"{result['process_peak_rss_MB'] / 1e3:.2f} GB, step {result['step_s']:.0f} s "
                  f"({result['step_cpu_s']:.0f} s CPU)")


if __name__ == "__main__":
    main()
