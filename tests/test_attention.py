"""The grid-attention head: the paper's equations (1) and (2), shapes, and the mean-pool ablation."""

import pytest
import torch

from attnwsi.models.attention import GridAttention, MeanPool


@pytest.fixture
def head():
    torch.manual_seed(0)
    return GridAttention(num_classes=4, in_channels=16, num_filters=5, kernel_size=3, dropout=0.5).eval()


def test_attention_maps_are_a_softmax_over_the_grid(head):
    feature_map = torch.randn(2, 16, 4, 6)
    _, maps = head(feature_map)
    assert maps.shape == (2, 5, 4, 6)
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(2, 5))
    # eq. (1) by hand: exp(V_ij) / sum_hw exp(V_hw), V = 3x3 convolution with zero padding 1
    raw = torch.nn.functional.conv2d(feature_map, head.attention_conv.weight, head.attention_conv.bias, padding=1)
    expected = raw.exp() / raw.exp().sum(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(maps, expected)


def test_attended_features_are_the_weighted_sum_of_eq2(head):
    feature_map = torch.randn(1, 16, 3, 5)
    captured = {}
    head.fc.register_forward_hook(lambda mod, inp, out: captured.update(z=inp[0]))
    logits, maps = head(feature_map)
    z = captured["z"].view(5, 16)  # m vectors of C features, concatenated (dropout is off in eval)
    for k in range(5):
        by_hand = torch.zeros(16)
        for h in range(3):
            for w in range(5):
                by_hand += maps[0, k, h, w] * feature_map[0, :, h, w]
        torch.testing.assert_close(z[k], by_hand)
    torch.testing.assert_close(logits, head.fc(captured["z"]))


@pytest.mark.parametrize("grid", [(1, 1), (1, 7), (5, 3)])
def test_output_shapes_for_any_grid(grid):
    head = GridAttention(num_classes=4)  # the paper's head: 64 filters over 512 channels
    logits, maps = head(torch.randn(2, 512, *grid))
    assert logits.shape == (2, 4)
    assert maps.shape == (2, 64, *grid)
    assert head.attention_conv.weight.shape == (64, 512, 3, 3)


def test_dropout_acts_on_the_concatenated_vector_in_training():
    head = GridAttention(num_classes=3, in_channels=8, num_filters=2, dropout=0.5).train()
    x = torch.randn(1, 8, 2, 2)
    torch.manual_seed(1)
    a, _ = head(x)
    torch.manual_seed(2)
    b, _ = head(x)
    assert not torch.allclose(a, b)
    head.eval()
    torch.testing.assert_close(head(x)[0], head(x)[0])


def test_meanpool_ablation_averages_the_grid():
    head = MeanPool(num_classes=3, in_channels=8).eval()
    x = torch.randn(1, 8, 2, 3)
    logits, maps = head(x)
    torch.testing.assert_close(logits, head.fc(x.mean(dim=(2, 3))))
    torch.testing.assert_close(maps, torch.full((1, 1, 2, 3), 1 / 6))
