"""Streaming under DistributedDataParallel: two gloo processes, each streaming one image in chunks, end one
step with the gradients and the weights of one unchunked process on both images, within float32 rounding.

The bounds, from what is compared: the two sides compute the same float32 sums in another order (chunks,
per-process sums averaged by DDP, kernels picked by batch size), so each gradient element differs by a few
ulps of the sum of its terms' magnitudes: rtol 1e-3 of the element, plus atol 1e-6 for elements whose exact
value is 0 (attention_conv.bias: softmax ignores a shift, so its gradient is rounding noise, ~1e-7, on both
sides). The step is plain SGD, w - LR * g, so the weights differ by LR times the gradients' difference plus
one rounding of w: atol LR * 1e-6 + rtol 1e-3 * LR * |g| <= the weights' tolerance below. (Adam's first step,
LR * g / (|g| + eps), would turn the rounding noise of a zero gradient into +-LR: a difference of 2 LR
decided by summation order, which differs between CPUs.)"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from attnwsi.models.attention import GridAttention
from attnwsi.models.extractor import GridExtractor
from attnwsi.models.streaming import stream_features

GRIDS = [(3, 4), (2, 5)]  # two images of different grids
LABELS = torch.tensor([1, 3])


class Net(torch.nn.Module):
    """The attention model's extractor and head; forward gives one image's loss (DDP needs a forward)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.extractor = GridExtractor("resnetv2_18", trainable_stages=2).train()
        self.head = GridAttention(4, 512, 8, dropout=0.0)

    def forward(self, tiles: torch.Tensor, grid, label, chunk_size: int | None) -> torch.Tensor:
        normalize = lambda t: t.float() / 127.5 - 1  # noqa: E731
        if chunk_size is None:
            features = self.extractor(normalize(tiles))
        else:
            features = stream_features(self.extractor, tiles, normalize, chunk_size, "cpu")
        logits, _ = self.head(GridExtractor.feature_map(features, grid)[None])
        return F.cross_entropy(logits, label[None])


def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (rows * cols, 3, 16, 16), dtype=torch.uint8, generator=generator)
            for rows, cols in GRIDS]


LR = 1e-2


def one_step(model, losses: list[torch.Tensor]) -> dict:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    optimizer.zero_grad()
    torch.stack(losses).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer.step()
    return {"grads": grads, "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}


def worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ddp = torch.nn.parallel.DistributedDataParallel(Net())  # averages the gradients over the processes
    loss = ddp(images()[rank], GRIDS[rank], LABELS[rank], chunk_size=5)
    results[rank] = {kind: {name.removeprefix("module."): value for name, value in values.items()}
                     for kind, values in one_step(ddp, [loss]).items()}
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_streaming_processes_step_like_one_process_on_both_images():
    results = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), results), nprocs=2, join=True)
    model = Net()
    single = one_step(model, [model(tiles, grid, label, chunk_size=None)
                              for tiles, grid, label in zip(images(), GRIDS, LABELS)])
    for rank in (0, 1):
        for kind in ("grads", "weights"):
            assert results[rank][kind].keys() == single[kind].keys()
            for name, value in single[kind].items():
                # the module docstring's bounds: gradients to float32 rounding of their sums, weights to LR
                # times that (SGD), plus their own rounding
                if kind == "grads":
                    tolerance = dict(rtol=1e-3, atol=1e-6)
                else:
                    bound = LR * (1e-3 * single["grads"].get(name, torch.zeros(())).abs() + 1e-6)
                    tolerance = dict(rtol=1e-6, atol=float(bound.max()))
                torch.testing.assert_close(results[rank][kind][name], value, **tolerance, msg=f"{kind} {name}")
