"""How long does Adam's step take beside a training step? torch's three Adam implementations compared.

    python experiments/speed/optimizer_step.py [--device cpu|cuda] [--steps 20] [--rounds 3]

For the parameters of the CPU default's two models (the attention model, resnetv2_18 trained whole at
24-px tiles, and the SimCLR model that pretrains its trunk), with random gradients: the time of one Adam step
with the for-loop implementation (torch's default on the CPU), `foreach` (its default on CUDA) and `fused`
(`attnwsi.models.adam`), timed in turn `--rounds` times over; the median and its ratio to the for-loop.
For scale, one training step (forward and backward) of the attention model on 2 images of 9 x 9 tiles,
the default's mean grid, is timed in the same rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from rich.console import Console
from rich.table import Table

from attnwsi.data.datamodule import Sample
from attnwsi.models.classifier import AttentionClassifier
from attnwsi.models.self_supervised import SimCLR

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]
IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def models(device: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    attention = AttentionClassifier(CLASSES, 48, 24, calibrate_batchnorm=0, trainable_stages=4)
    return {"attention (default)": attention.to(device).train(), "SimCLR pretraining": SimCLR().to(device)}


def training_step(model: AttentionClassifier, batch: list[Sample]) -> None:
    model.forward_batch(batch).sum().backward()


def timed(fn, steps: int, device: str) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    table = Table(title=f"Adam step on {args.device}, ms (median of {args.rounds} rounds)")
    for column in ("parameters of", *IMPLEMENTATIONS, "fused / for-loop", "training step"):
        table.add_column(column, justify="left" if column == "parameters of" else "right")
    generator = torch.Generator().manual_seed(1)
    batch = [Sample(torch.randint(0, 256, (81, 3, 24, 24), dtype=torch.uint8, generator=generator), (9, 9), label,
                    f"i{label}") for label in (0, 3)]
    for name, model in models(args.device).items():
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizers = {k: torch.optim.Adam(params, lr=1e-4, **kw) for k, kw in IMPLEMENTATIONS.items()}
        times = {k: [] for k in (*IMPLEMENTATIONS, "training step")}
        for _ in range(args.rounds):
            for k, optimizer in optimizers.items():
                optimizer.step()  # warm-up: the state is created in the first step
                times[k].append(timed(optimizer.step, args.steps, args.device))
            if isinstance(model, AttentionClassifier):
                step = partial(training_step, model, batch)
                step()
                times["training step"].append(timed(step, max(args.steps // 4, 1), args.device))
        median = {k: statistics.median(v) * 1000 if v else None for k, v in times.items()}
        table.add_row(f"{name}: {sum(p.numel() for p in params) / 1e6:.1f} M",
                      *(f"{median[k]:.1f}" for k in IMPLEMENTATIONS),
                      f"{median['fused'] / median['for-loop']:.2f}",
                      f"{median['training step']:.0f}" if median["training step"] else "")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
