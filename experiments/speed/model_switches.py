"""Which model-side speed switches should be on by default? `model.channels_last` and `model.compile`.

    python experiments/speed/model_switches.py [--device cpu|cuda] [--steps 6] [--rounds 3]

Times training steps (forward and backward, no optimizer) of the attention model in two geometries:
  default   the CPU default: resnetv2_18 trained whole, 32-px tiles, 2 images of 16 x 16 tiles
  paper     the paper's: trunk frozen but the last stage, 224-px tiles, 2 images of 6 x 6 tiles, streamed
for each setting (eager, channels_last, compiled, both), on the same random tiles. Settings are timed in
turn, `--rounds` times over, so that a slower minute hurts them all alike; the median of the rounds is
printed with its ratio to eager. Compilation happens before the timing (first steps untimed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from attnwsi.data.datamodule import Sample
from attnwsi.models.classifier import AttentionClassifier

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]
GEOMETRIES = {
    "default": dict(tile_px=32, tile_um=64, grid=(16, 16), trainable_stages=4, streaming=None),
    "paper": dict(tile_px=224, tile_um=246, grid=(6, 6), trainable_stages=1,
                  streaming={"enabled": True, "chunk_size": 36, "keep_frozen": True}),
}
SETTINGS = {"eager": (False, False), "channels_last": (True, False), "compiled": (False, True),
            "channels_last + compiled": (True, True)}


def model_and_batch(geometry: dict, channels_last: bool, compile: bool, device: str):
    torch.manual_seed(0)
    model = AttentionClassifier(CLASSES, geometry["tile_um"], geometry["tile_px"], calibrate_batchnorm=0,
                                trainable_stages=geometry["trainable_stages"], streaming=geometry["streaming"],
                                channels_last=channels_last, compile=compile).to(device).train()
    rows, cols = geometry["grid"]
    generator = torch.Generator().manual_seed(1)
    batch = [Sample(torch.randint(0, 256, (rows * cols, 3, geometry["tile_px"], geometry["tile_px"]),
                                  dtype=torch.uint8, generator=generator), (rows, cols), label, f"i{label}")
             for label in (0, 3)]
    return model, batch


def step(model: AttentionClassifier, batch: list[Sample], device: str) -> None:
    model.zero_grad(set_to_none=True)
    logits = model.forward_batch(batch)
    F.cross_entropy(logits, torch.tensor([s.label for s in batch], device=device)).backward()
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    # eight compiled Sequential modules live in this process at once (four per geometry): more than dynamo's
    # default of 8 cached versions per code object, past which it falls back to eager code
    torch._dynamo.config.recompile_limit = 64
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    table = Table(title=f"Training steps per second on {args.device} (median of {args.rounds} rounds)")
    for column in ("geometry", *SETTINGS, *(f"{s} / eager" for s in list(SETTINGS)[1:])):
        table.add_column(column, justify="left" if column == "geometry" else "right")
    for name, geometry in GEOMETRIES.items():
        runs = {}
        for setting, switches in SETTINGS.items():
            model, batch = model_and_batch(geometry, *switches, args.device)
            for _ in range(2):  # warm-up, compilation
                step(model, batch, args.device)
            runs[setting] = (model, batch)
        rates = {setting: [] for setting in SETTINGS}
        for _ in range(args.rounds):
            for setting, (model, batch) in runs.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(model, batch, args.device)
                rates[setting].append(args.steps / (time.perf_counter() - start))
        median = {s: statistics.median(r) for s, r in rates.items()}
        table.add_row(name, *(f"{median[s]:.2f}" for s in SETTINGS),
                      *(f"{median[s] / median['eager']:.2f}" for s in list(SETTINGS)[1:]))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
