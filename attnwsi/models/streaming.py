"""Streamed tile features: the extractor over any number of tiles in memory bounded by one chunk.

`stream_features` runs a `GridExtractor` over the tiles chunk by chunk and keeps no activation graph, only
the tile features [T, C]; the backward recomputes each chunk and back-propagates dL/dfeatures chunk by
chunk. `loss.backward()` then gives exactly the gradients of the unchunked extractor, because BatchNorm
uses running statistics (see `extractor.py`): a tile's features never depend on the other tiles.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnwsi.models.extractor import GridExtractor

Normalize = Callable[[torch.Tensor], torch.Tensor]


def _normalized(chunk: torch.Tensor, normalize: Normalize, extractor: GridExtractor,
                device: torch.device) -> torch.Tensor:
    """A chunk of raw tiles on `device`, normalized, in the extractor's memory format (e.g. channels_last)."""
    return normalize(chunk.to(device, non_blocking=True)).contiguous(memory_format=extractor.memory_format)


class _StreamedExtractor(torch.autograd.Function):
    """features = extractor(normalize(tiles)), computed and differentiated chunk by chunk.

    Forward, without a graph: per chunk, move the tiles to `device`, normalize, run the frozen trunk and
    the trainable part; keep only the features (and, with `keep_frozen`, the frozen trunk's output, in the
    dtype it was computed in, on the tiles' device). Saved for backward: the tiles and the autocast state.
    Backward, per chunk: recompute the frozen trunk's output without a graph (or take the kept one),
    recompute the trainable part with a graph under the forward's autocast state, and take the gradient of
    <chunk features, dL/dchunk features> with respect to the trainable parameters. Their sums over the
    chunks, taken in float32 whatever the parameters' dtype (a bfloat16 sum of hundreds of chunk gradients
    keeps 8 bits: later chunks' small gradients round away), are returned as the parameters' gradients: the
    parameters are inputs of this function, so autograd (and DDP's gradient hooks) accumulates each once per
    backward. The frozen trunk gets none. The recomputation runs under the forward's whole autocast state
    (enabled, dtype and weight-cast cache, as `torch.utils.checkpoint` restores it): Lightning's bf16-mixed
    forward casts every weight afresh (cache off), and so does the recomputation. BatchNorm uses running
    statistics and never updates them (see `GridExtractor.train`), and the extractor has no randomness, so
    the recomputation repeats the forward's operations.
    """

    @staticmethod
    def forward(ctx, extractor: GridExtractor, tiles: torch.Tensor, normalize: Normalize, chunk_size: int,
                device: torch.device, keep_frozen: bool, *params: torch.Tensor) -> torch.Tensor:
        ctx.extractor, ctx.normalize, ctx.chunk_size, ctx.device = extractor, normalize, chunk_size, device
        ctx.autocast = {"device_type": device.type, "enabled": torch.is_autocast_enabled(device.type),
                        "dtype": torch.get_autocast_dtype(device.type),
                        "cache_enabled": torch.is_autocast_cache_enabled()}
        ctx.save_for_backward(tiles)
        ctx.frozen = [] if keep_frozen else None
        features = []
        for chunk in tiles.split(chunk_size):
            frozen = extractor.frozen(_normalized(chunk, normalize, extractor, device))
            if keep_frozen:
                ctx.frozen.append(frozen.to(tiles.device))
            features.append(extractor.trainable(frozen))
        return torch.cat(features)

    @staticmethod
    def backward(ctx, grad_features: torch.Tensor) -> tuple:
        (tiles,) = ctx.saved_tensors
        extractor = ctx.extractor
        params = [p for p in extractor.trainable.parameters() if p.requires_grad]
        chunks = zip(tiles.split(ctx.chunk_size), grad_features.split(ctx.chunk_size), strict=True)
        grads = None
        with torch.autocast(**ctx.autocast):
            for i, (chunk, grad_chunk) in enumerate(chunks):
                if ctx.frozen is None:
                    with torch.no_grad():
                        frozen = extractor.frozen(_normalized(chunk, ctx.normalize, extractor, ctx.device))
                else:
                    frozen = ctx.frozen[i].to(ctx.device)
                with torch.enable_grad():
                    chunk_grads = torch.autograd.grad(extractor.trainable(frozen), params, grad_chunk)
                if grads is None:
                    grads = [grad.float() for grad in chunk_grads]  # the grad itself when float32
                else:
                    for total, grad in zip(grads, chunk_grads, strict=True):
                        total += grad
        return (None,) * 6 + tuple(total.to(p.dtype) for total, p in zip(grads, params, strict=True))


def stream_features(extractor: GridExtractor, tiles: torch.Tensor, normalize: Normalize, chunk_size: int,
                    device: torch.device | str, keep_frozen: bool = False) -> torch.Tensor:
    """Features [T, C] of raw tiles [T, 3, h, w] (e.g. uint8 on the host), `chunk_size` tiles at a time.

    `normalize` maps a chunk of raw tiles on `device` to the extractor's float input. With gradients enabled
    and trainable parameters, the result has a `grad_fn` whose backward recomputes chunk by chunk, so memory
    grows with T only by the tiles and their features. `keep_frozen=True` keeps the frozen trunk's output
    of every tile instead of recomputing the trunk in the backward: faster, but that output (256 x h/16 x
    w/16 values per tile for ResNet-18) grows with T. Under `torch.no_grad()` the features are just
    computed in chunks.
    """
    device = torch.device(device)
    params = [p for p in extractor.trainable.parameters() if p.requires_grad]
    if torch.is_grad_enabled() and params:
        return _StreamedExtractor.apply(extractor, tiles, normalize, chunk_size, device, keep_frozen, *params)
    with torch.no_grad():
        return torch.cat([extractor(_normalized(c, normalize, extractor, device)) for c in tiles.split(chunk_size)])
