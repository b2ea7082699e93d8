"""Self-supervised pretraining: the command writes a trunk the attention model loads, the views are what they
claim, the linear probe scores what it should, and on real H&E the loss falls.

Real slide: CMU-1-Small-Region (OpenSlide test data, CC0) in ../shared/data/wsi/.
"""

import json

import pandas as pd
import pytest
import torch
from commands import REPO, Completed, run_command
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from attnwsi.data.manifest import make_dataset
from attnwsi.models.crop_classifier import CropClassifier
from attnwsi.models.extractor import GridExtractor
from attnwsi.models.self_supervised import SYMMETRIES, hed_jitter, tile_views
from attnwsi.training import pretrain as pretrain_module
from attnwsi.training.pretrain import pretraining_asked, trunk_folder
from attnwsi.training.probe import linear_probe, pixel_statistics

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]


def run(args: list[str], cache) -> Completed:
    return run_command(*args, cache=cache)


@pytest.mark.parametrize("method", ["simclr", "vicreg"])
def test_the_smoke_pretraining_writes_a_trunk_that_the_attention_model_loads(tmp_path, smoke_cache, method):
    out = tmp_path / "run"
    proc = run(["attnwsi.pretrain", "debug=smoke", f"ssl={method}", f"hydra.run.dir={out}"], smoke_cache)
    trunk = load_file(out / "trunk.safetensors")
    record = json.loads((out / "pretrain.json").read_text())
    assert record["method"] == method and record["backbone"] == "resnetv2_18" and record["steps"] >= 1
    assert (record["tile_um"], record["tile_px"]) == (32, 16) and record["n_tiles"] > 0
    assert set(record["linear_probe"]["balanced_accuracy"]) == {"pretrained trunk", "random trunk",
                                                                "pixel statistics"}
    assert "Linear probe" in proc.stdout and (out / "checkpoints" / "last.ckpt").exists()
    assert not any(key.startswith(("projection", "head.fc")) for key in trunk)

    extractor = GridExtractor("resnetv2_18", pretrained=True, weights_path=str(out / "trunk.safetensors"),
                              trainable_stages=4)
    loaded = {**{f"stem.{k}": v for k, v in extractor.frozen[0].state_dict().items()},
              **{f"stages.{i}.{k}": v for i in range(4) for k, v in extractor.trainable[i].state_dict().items()},
              **{f"norm.{k}": v for k, v in extractor.trainable[4].state_dict().items()}}
    assert set(loaded) == set(trunk) and all(torch.equal(loaded[k], trunk[k]) for k in trunk)

    crops = CropClassifier(CLASSES, crop_um=64, crop_px=32, backbone="resnetv2_18", pretrained=True,
                           weights_path=str(out / "trunk.safetensors"))  # the sliding window's start
    stem, *stages, norm = list(crops.trunk)[:6]
    loaded = {**{f"stem.{k}": v for k, v in stem.state_dict().items()},
              **{f"stages.{i}.{k}": v for i, stage in enumerate(stages) for k, v in stage.state_dict().items()},
              **{f"norm.{k}": v for k, v in norm.state_dict().items()}}
    assert set(loaded) == set(trunk) and all(torch.equal(loaded[k], trunk[k]) for k in trunk)
    assert crops(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 4)


def test_a_view_without_crop_or_stain_jitter_is_one_of_the_eight_symmetries_of_its_tile():
    tiles = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    views = tile_views(tiles, torch.Generator().manual_seed(0), min_crop=1.0, stain_scale=0.0, stain_shift=0.0)
    images = tiles.float() / 255
    symmetries = [torch.rot90(images, k, (2, 3)) for k in range(4)]
    symmetries += [s.flip(3) for s in symmetries]
    for i in range(16):
        distances = [(views[i] - s[i].clamp(min=1 / 255)).abs().max().item() for s in symmetries]
        assert min(distances) < 1e-4, distances
    assert len(SYMMETRIES) == 8


def test_stain_jitter_scales_each_stain_and_is_the_identity_without_jitter():
    images = torch.rand(4, 3, 6, 6).clamp(min=0.05)
    generator = torch.Generator().manual_seed(1)
    torch.testing.assert_close(hed_jitter(images, generator, 0.0, 0.0), images, rtol=1e-4, atol=1e-5)
    jittered = hed_jitter(images, generator, 0.3, 0.0)
    assert (jittered - images).abs().max() > 0.01
    assert ((jittered.mean(dim=(1, 2, 3)) - images.mean(dim=(1, 2, 3))).abs() > 1e-4).all()  # each image its own draw


def test_the_linear_probe_finds_a_separable_class_and_not_noise():
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (600,), generator=generator)
    features = torch.randn(600, 10, generator=generator)
    features[:, 0] += 4 * labels  # class information in one feature
    assert linear_probe(features[:400], labels[:400], features[400:], labels[400:], 3) > 0.95
    noise = torch.randn(600, 10, generator=generator)
    assert linear_probe(noise[:400], labels[:400], noise[400:], labels[400:], 3) < 0.5


def test_pixel_statistics_are_per_channel_mean_std_and_percentiles():
    tiles = torch.zeros(1, 3, 10, 10, dtype=torch.uint8)
    tiles[0, 0] = 255  # red channel all white
    tiles[0, 1, :5] = 255  # green half white
    stats = pixel_statistics(tiles)[0]
    assert stats.shape == (12,)
    torch.testing.assert_close(stats[:3], torch.tensor([1.0, 0.5, 0.0]))  # means
    assert stats[3] == 0 and stats[4] > 0.5 and stats[5] == 0  # standard deviations
    torch.testing.assert_close(stats[6:], torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0]))  # 10th, 90th percentiles


def test_pretraining_on_real_h_and_e_lowers_the_contrastive_loss(shared_data, tmp_path):
    labels = tmp_path / "labels.csv"
    pd.DataFrame([dict(slide_id="cmu_svs", patient_id="p1", label="normal", path="CMU-1-Small-Region.svs",
                       split="train"),
                  dict(slide_id="cmu_pyramid", patient_id="p2", label="normal",
                       path="derived/CMU-1-Small-Region.pyramid.tiff", split="val")]).to_csv(labels, index=False)
    result = make_dataset(str(shared_data / "wsi"), str(labels), str(tmp_path / "data"), CLASSES)
    assert not result.failures
    out = tmp_path / "run"
    run(["attnwsi.pretrain", "data=slides", f"data.root={tmp_path / 'data'}", "data.tile_um=32", "data.tile_px=32",
         "data.num_workers=0", "ssl.tiles.batch_size=64", "ssl.tiles.max_tiles=512", "ssl.max_epochs=6",
         "trainer.log_every_n_steps=1", "ssl.probe_tiles=0", f"hydra.run.dir={out}"], tmp_path / "cache")
    metrics = pd.read_csv(out / "csv" / "version_0" / "metrics.csv")
    losses = metrics["pretrain/loss_step"].dropna().to_numpy()
    assert len(losses) >= 12
    assert losses[-4:].mean() < losses[:4].mean() - 0.2, losses


@pytest.mark.parametrize("experiment", [[], ["+experiment=slides_cpu"]])
def test_ssl_none_asks_for_no_pretraining_even_over_an_experiment_that_tunes_it(experiment):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        assert pretraining_asked(compose("train", overrides=experiment))
        assert not pretraining_asked(compose("train", overrides=[*experiment, "ssl=none"]))


def test_train_with_ssl_pretrains_once_into_the_cache_and_never_reuses_a_stale_trunk(tmp_path, haystack_cache,
                                                                                       monkeypatch):
    smoke = ["attnwsi.train", "debug=smoke", "ssl=simclr", "ssl.max_epochs=1", "ssl.probe_tiles=0", "test=false"]
    assert not (haystack_cache / "trunks").exists()  # the smoke haystack, no trunk yet
    first = run([*smoke, f"hydra.run.dir={tmp_path / 'a'}"], haystack_cache)
    assert "pretraining the trunk once" in first.stdout and "(ssl=simclr)" in first.stdout
    trunks = list((haystack_cache / "trunks").glob("*/trunk.safetensors"))
    assert len(trunks) == 1
    again = run([*smoke, "seed=1", "data.augment.flip=false", f"hydra.run.dir={tmp_path / 'b'}"],
                haystack_cache)  # another training seed and augmentation: the same tiles to pretrain on
    assert "pretraining the trunk" not in again.stdout
    changed = run([*smoke, "ssl.model.temperature=0.3", f"hydra.run.dir={tmp_path / 'c'}"], haystack_cache)
    assert "pretraining the trunk once" in changed.stdout
    assert len(list((haystack_cache / "trunks").glob("*/trunk.safetensors"))) == 2
    hparams = (tmp_path / "b" / "csv" / "version_0" / "hparams.yaml").read_text()
    assert "pretrained: true" in hparams and str(trunks[0]) in hparams

    monkeypatch.setenv("ATTNWSI_CACHE", str(haystack_cache))  # the key of the first run, in this process
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=smoke[1:])
    assert trunk_folder(cfg)[0] == trunks[0].parent
    monkeypatch.setattr(pretrain_module, "READER", pretrain_module.READER + 1)  # a new reading path
    assert trunk_folder(cfg)[0] != trunks[0].parent
