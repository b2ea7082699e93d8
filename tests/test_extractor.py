"""The grid feature extractor: frozen trunk, trainable last stage, tile independence, weights errors."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO

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


# (backbone, tile px, its feature channels, its stages, the modules the last stage + tail hold)
TIMM_BACKBONES = [
    ("resnet50", 32, 2048, 4, lambda net: [net.layer4]),
    ("convnext_atto", 32, 320, 4, lambda net: [net.stages[3], net.head]),
    ("vit_tiny_patch16_224", 224, 192, 12, lambda net: [net.blocks[11], net.norm, net.fc_norm]),
]


@pytest.mark.parametrize("backbone, tile_px, channels, n_stages, last_stage", TIMM_BACKBONES)
def test_a_timm_backbone_gives_its_own_pooled_features_and_trains_only_its_last_stages(
        backbone, tile_px, channels, n_stages, last_stage, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    net = timm.create_model(backbone, num_classes=0).eval()
    save_file(net.state_dict(), tmp_path / "trunk.safetensors")
    extractor = GridExtractor(backbone, pretrained=True, weights_path=str(tmp_path / "trunk.safetensors"),
                              trainable_stages=1).eval()
    tiles = torch.randn(2, 3, tile_px, tile_px)
    assert extractor.out_channels == channels
    with torch.no_grad():
        torch.testing.assert_close(extractor(tiles), net.forward_head(net.forward_features(tiles), pre_logits=True))
    trainable = [p for p in extractor.parameters() if p.requires_grad]
    expected = [p for module in last_stage(net) for p in module.parameters()]
    assert len(trainable) == len(expected) and all(torch.equal(a, b) for a, b in zip(trainable, expected))
    assert sum(p.numel() for p in extractor.parameters()) == sum(p.numel() for p in net.parameters())
    with pytest.raises(ValueError, match=f"0..{n_stages}"):
        GridExtractor(backbone, trainable_stages=n_stages + 1)


@pytest.mark.parametrize("backbone, channels", [("resnet50", 2048), ("convnext_atto", 320),
                                                ("vit_tiny_patch16_224", 192)])
def test_the_paper_setup_runs_with_any_timm_backbone(backbone, channels):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=be_attention", "data.root=/nowhere", "model.pretrained=false",
                                          "classes=[normal,be_no_dysplasia,be_with_dysplasia,adenocarcinoma]",
                                          f"model.backbone={backbone}"])
    model = instantiate(cfg.model).eval()
    assert model.head.attention_conv.in_channels == channels and model.head.fc.in_features == 64 * channels
    logits, maps = model(torch.randint(0, 256, (6, 3, 224, 224), dtype=torch.uint8), (2, 3))
    assert logits.shape == (4,) and maps.shape == (64, 2, 3)
