"""The grid feature extractor: frozen trunk, trainable last stage, tile independence, weights errors."""

import subprocess
import sys

import pytest
import torch

from attnwsi.models.backbones import PretrainedWeightsMissing
from attnwsi.models.extractor import GridExtractor


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return GridExtractor("resnetv2_18", pretrained=False, trainable_stages=1)


def test_frozen_stages_get_no_gradient_and_the_last_stage_does(extractor):
    extractor.train()
    extractor.zero_grad()
    extractor(torch.randn(3, 3, 32, 32)).pow(2).sum().backward()
    frozen = list(extractor.frozen.parameters())
    trainable = list(extractor.trainable.parameters())
    assert frozen and trainable
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    # the last residual stage of the pre-activation ResNet-18 is what is trainable: 512 output channels
    assert extractor.trainable[0].blocks[-1].conv2.out_channels == 512


def test_extractor_on_t_tiles_equals_t_separate_calls(extractor):
    extractor.train()  # also in training mode: BatchNorm uses running statistics (see the module docstring)
    tiles = torch.randn(5, 3, 32, 32)
    together = extractor(tiles)
    separately = torch.cat([extractor(tiles[i : i + 1]) for i in range(5)])
    assert together.shape == (5, 512)
    torch.testing.assert_close(together, separately, rtol=1e-4, atol=1e-5)


def test_feature_map_lays_tiles_out_row_major():
    features = torch.arange(6 * 2, dtype=torch.float32).view(6, 2)  # tile t has features (2t, 2t+1)
    u = GridExtractor.feature_map(features, (2, 3))
    assert u.shape == (2, 2, 3)
    assert u[0, 1, 2] == features[5, 0] and u[1, 0, 1] == features[1, 1]


@pytest.mark.parametrize("backbone", ["resnet18"])
def test_torchvision_backbone_is_selectable(backbone):
    extractor = GridExtractor(backbone, pretrained=False, trainable_stages=2)
    assert extractor(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_missing_pretrained_weights_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = "from attnwsi.models.extractor import GridExtractor; GridExtractor('resnetv2_18', pretrained=True)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "PretrainedWeightsMissing" in proc.stderr
    assert str(tmp_path / "hf") in proc.stderr and "model.weights_path" in proc.stderr


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsMissing, match="nothing.safetensors"):
        GridExtractor("resnetv2_18", pretrained=True, weights_path=str(tmp_path / "nothing.safetensors"))


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    reference = timm.create_model("resnetv2_18", num_classes=1000)
    save_file(reference.state_dict(), tmp_path / "model.safetensors")
    extractor = GridExtractor("resnetv2_18", pretrained=True, weights_path=str(tmp_path / "model.safetensors"))
    last_block = extractor.trainable[0].blocks[-1]
    torch.testing.assert_close(last_block.conv2.weight, reference.stages[3].blocks[-1].conv2.weight)


def test_batchnorm_calibration_sets_running_statistics_from_the_tiles():
    torch.manual_seed(4)
    extractor = GridExtractor("resnetv2_18", pretrained=False, trainable_stages=1)
    norm = extractor.trainable[0].blocks[0].norm1  # the first BatchNorm of the trainable stage
    seen = []
    hook = norm.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    batches = [torch.randn(4, 3, 32, 32) * 2 + 1 for _ in range(3)]
    extractor.calibrate_batchnorm(iter(batches))
    hook.remove()
    inputs = torch.cat(seen)  # what the norm saw, batch by batch
    torch.testing.assert_close(norm.running_mean, inputs.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not norm.training and norm.momentum == 0.1
    tiles = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(extractor(tiles), torch.cat([extractor(t[None]) for t in tiles]), rtol=1e-4, atol=1e-5)
