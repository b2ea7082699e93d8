"""Streaming under bfloat16 autocast with several chunks: the unchunked bfloat16 step within a stated
relative tolerance (bfloat16 keeps 8 significant bits, relative spacing 2**-7 ~ 0.8 %; batch-size dependent
kernels may round a chunk differently from the whole image, so the bound is an error *relative to the norm*)."""

import pytest
import torch
from test_streaming import GRID, logits_and_gradients, tiles_of

from attnwsi.models.attention import GridAttention
from attnwsi.models.extractor import GridExtractor
from attnwsi.models.streaming import stream_features

REL_TOL = 1e-2  # measured: 0 on the logits, 1.8e-3 on the worst gradient;
# ||streamed - unchunked|| / ||unchunked||, per logit vector and per parameter gradient


@pytest.fixture(scope="module")
def bf16_model():
    torch.manual_seed(0)
    return GridExtractor("resnetv2_18", pretrained=False).train(), GridAttention(4, 512, 8).train()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm().clamp(min=1e-12))


@pytest.mark.parametrize("chunk_size", [4, 16], ids=["9_chunks", "3_chunks"])
def test_chunked_bf16_streaming_matches_the_unchunked_bf16_step(bf16_model, chunk_size):
    tiles = tiles_of(GRID)  # 35 tiles
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, grads = logits_and_gradients(bf16_model, tiles, GRID)
        streamed_logits, streamed_grads = logits_and_gradients(bf16_model, tiles, GRID, chunk_size)
    assert streamed_grads.keys() == grads.keys() and len(grads) > 10
    assert relative_error(streamed_logits, logits) < REL_TOL
    errors = {name: relative_error(streamed_grads[name], grad) for name, grad in grads.items()
              if grad.float().norm() > 0}
    worst = max(errors, key=errors.get)
    assert errors[worst] < REL_TOL, (worst, errors[worst])
    # and not vacuous: bfloat16 did change the numbers relative to float32
    _, float_grads = logits_and_gradients(bf16_model, tiles, GRID, chunk_size)
    assert max(relative_error(grads[n], float_grads[n]) for n in errors) > 1e-4


class LinearExtractor(torch.nn.Module):
    """The smallest extractor `stream_features` takes: no frozen part, one linear map of the flattened tile."""

    memory_format = torch.contiguous_format

    def __init__(self, pixels: int, channels: int):
        super().__init__()
        self.frozen = torch.nn.Flatten()
        self.trainable = torch.nn.Linear(pixels, channels, bias=False)


def test_chunk_gradients_of_a_bfloat16_model_are_summed_in_float32():
    """A model in bfloat16 (precision=bf16-true) streamed one tile at a time: 512 chunk gradients summed in
    bfloat16 (8 significant bits) lose the later chunks' contributions; summed in float32 and rounded once,
    the gradient is the exact one within bfloat16's relative spacing 2**-7."""
    torch.manual_seed(0)
    extractor = LinearExtractor(3 * 4 * 4, 8).to(torch.bfloat16)
    tiles = torch.randint(0, 256, (512, 3, 4, 4), dtype=torch.uint8)
    features = stream_features(extractor, tiles, lambda t: (t / 255.0).to(torch.bfloat16), 1, "cpu")
    upstream = torch.randn(features.shape).abs().to(torch.bfloat16)  # same-signed terms: the sum only grows
    features.backward(upstream)
    # the exact gradient of the same bfloat16 inputs: sum over tiles of upstream^T x, in float64
    x = (tiles / 255.0).to(torch.bfloat16).flatten(1).double()
    exact = upstream.double().T @ x
    error = float((extractor.trainable.weight.grad.double() - exact).abs().max() / exact.abs().max())
    assert extractor.trainable.weight.grad.dtype == torch.bfloat16
    assert error <= 2**-7, error
