"""Streamed extraction: the unchunked extractor's logits and gradients, in memory that does not grow."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from attnwsi.models.attention import GridAttention
from attnwsi.models.extractor import GridExtractor
from attnwsi.models.streaming import stream_features

GRID = (5, 7)
MEAN = torch.tensor([0.6, 0.4, 0.7]).view(1, 3, 1, 1)
STD = torch.tensor([0.2, 0.25, 0.15]).view(1, 3, 1, 1)


def normalize(tiles: torch.Tensor) -> torch.Tensor:
    return (tiles.float() / 255.0 - MEAN) / STD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GridExtractor("resnetv2_18", pretrained=False).train(), GridAttention(4, 512, 8).train()


def tiles_of(grid: tuple[int, int], px: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (grid[0] * grid[1], 3, px, px), dtype=torch.uint8, generator=generator)


def training_step(model, tiles, grid, chunk_size=None, keep_frozen=False) -> torch.Tensor:
    """Forward and backward of one image; chunk_size None is the unchunked path. Returns the logits."""
    extractor, head = model
    extractor.zero_grad(set_to_none=False)  # in place, so that a step allocates no gradient buffers
    head.zero_grad(set_to_none=False)
    if chunk_size is None:
        features = extractor(normalize(tiles))
    else:
        features = stream_features(extractor, tiles, normalize, chunk_size, "cpu", keep_frozen)
    torch.manual_seed(2)  # the same dropout mask in the head
    logits, _ = head(GridExtractor.feature_map(features, grid)[None])
    F.cross_entropy(logits, torch.tensor([2])).backward()
    return logits.detach()


def logits_and_gradients(model, *step_args) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits of a training step and the gradient of every parameter that gets one."""
    logits = training_step(model, *step_args)
    named = [*model[0].named_parameters(), *model[1].named_parameters()]
    return logits, {name: p.grad.clone() for name, p in named if p.grad is not None}


def assert_same_gradients(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n} {m}")


@pytest.mark.parametrize("keep_frozen", [False, True], ids=["recompute_frozen", "keep_frozen"])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_streamed_logits_and_gradients_equal_the_unchunked_ones(model, chunk_size, keep_frozen):
    tiles = tiles_of(GRID)
    logits, grads = logits_and_gradients(model, tiles, GRID)
    streamed_logits, streamed_grads = logits_and_gradients(model, tiles, GRID, chunk_size, keep_frozen)
    torch.testing.assert_close(streamed_logits, logits, rtol=1e-4, atol=1e-6)
    trainable = {f"trainable.{name}" for name, _ in model[0].trainable.named_parameters()}
    assert {name for name in grads if name.startswith("trainable.")} == trainable
    # float32 rounding differs (per-chunk sums; oneDNN picks other convolution algorithms for other batch
    # sizes) by <= ~2e-6 absolute, so atol matters only for elements near 0, such as all of
    # attention_conv.bias, whose exact gradient is 0 (softmax is shift invariant): ~1e-7 in both paths
    assert_same_gradients(streamed_grads, grads)


def test_frozen_trunk_gets_no_gradient_and_each_trainable_parameter_one_accumulation(model):
    extractor, head = model
    accumulations = {}

    def count(p):
        accumulations[p] = accumulations.get(p, 0) + 1

    handles = [p.register_post_accumulate_grad_hook(count) for p in extractor.trainable.parameters()]
    training_step(model, tiles_of(GRID), GRID, chunk_size=4)
    for handle in handles:
        handle.remove()
    assert all(p.grad is None for p in extractor.frozen.parameters())
    # one accumulation per parameter and backward, as DDP's gradient hooks expect
    assert list(accumulations.values()) == [1] * len(list(extractor.trainable.parameters()))


def test_without_grad_the_features_are_computed_in_chunks(model):
    extractor, _ = model
    tiles = tiles_of(GRID)
    with torch.no_grad():
        features = stream_features(extractor, tiles, normalize, 4, "cpu")
        reference = extractor(normalize(tiles))
    assert features.grad_fn is None and features.shape == (35, 512)
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-6)


def test_recomputation_keeps_the_forward_autocast_state_and_memory_format():
    torch.manual_seed(0)
    model = GridExtractor("resnetv2_18", channels_last=True).train(), GridAttention(4, 512, 8).train()
    extractor, _ = model
    assert extractor.trainable[0].blocks[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    tiles = tiles_of(GRID)  # NCHW from the data loader: the extractor puts them in its memory format
    seen = []
    hook = extractor.trainable.register_forward_pre_hook(
        lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), torch.is_autocast_cache_enabled(),
                                          args[0].is_contiguous(memory_format=torch.channels_last))))
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):  # as Lightning's bf16-mixed forward
        logits, grads = logits_and_gradients(model, tiles, GRID)
        streamed_logits, streamed_grads = logits_and_gradients(model, tiles, GRID, len(tiles))
    hook.remove()
    # the unchunked forward, the streamed forward, its recomputation: autocast on, weight-cast cache as the
    # forward's (off), channels_last
    assert seen == [(True, False, True)] * 3
    # one chunk of all tiles: the same bfloat16 operations as the unchunked path
    torch.testing.assert_close(streamed_logits, logits, rtol=1e-4, atol=1e-6)
    assert_same_gradients(streamed_grads, grads)


def peak_bytes(step) -> int:
    """Peak of the bytes allocated (CPU allocator, net of frees) while `step()` runs, from the profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    events = prof.profiler.kineto_results.experimental_event_tree()
    allocations = sorted((node.start_time_ns, node.extra_fields.alloc_size) for node in walk(events)
                         if node.tag == torch._C._profiler._EventType.Allocation)
    total = peak = 0
    for _, size in allocations:
        total += size
        peak = max(peak, total)
    return peak


def test_streamed_peak_memory_grows_at_most_a_twentieth_as_fast_as_the_unchunked(model):
    small, large = (4, 4), (8, 10)
    px = 64  # at 32 px the unchunked peak is still the backward's constant part (weight-sized buffers)
    tiles = {grid: tiles_of(grid, px) for grid in (small, large)}

    def growth_per_tile(chunk_size=None, keep_frozen=False):
        peaks = [peak_bytes(lambda g=grid: training_step(model, tiles[g], g, chunk_size, keep_frozen))
                 for grid in (small, large)]
        return (peaks[1] - peaks[0]) / (len(tiles[large]) - len(tiles[small]))

    training_step(model, tiles[small], small)  # allocates the gradient buffers
    unchunked = growth_per_tile()
    frozen_output_bytes = 256 * (px // 16) ** 2 * 4  # what keep_frozen keeps per tile (float32)
    # sanity: the profiler sees the unchunked extractor's activations per tile at 64 px (~400 kB where oneDNN
    # runs the convolutions, 100 kB measured on an AVX2-only AMD EPYC, 2026-12-07; streamed there: 4.1 kB)
    assert unchunked > 64e3
    assert growth_per_tile(chunk_size=4) <= unchunked / 20
    assert growth_per_tile(chunk_size=4, keep_frozen=True) - frozen_output_bytes <= unchunked / 20


def test_recomputation_runs_under_the_forward_autocast_state_when_the_backward_runs_outside_it(model):
    """Lightning's bf16-mixed forward is `torch.autocast(..., cache_enabled=False)` and its backward runs
    outside autocast: the recomputation must cast the weights afresh (cache off) as the forward did."""
    extractor, _ = model
    tiles = tiles_of(GRID)
    seen = []
    hook = extractor.trainable.register_forward_pre_hook(
        lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                                          torch.is_autocast_cache_enabled())))
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        features = stream_features(extractor, tiles, normalize, 8, "cpu")
    assert torch.is_autocast_cache_enabled()  # the default again, out here
    features.float().sum().backward()
    hook.remove()
    assert seen == [(True, torch.bfloat16, False)] * 10  # 5 chunks forward, 5 recomputed
