"""The training entry point end to end on tiny synthetic data, and the paper's experiment config."""

import json
from pathlib import Path

import pytest
from commands import REPO, python_module, run_command, run_process
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = str(REPO / "conf")


def check_results_schema(results: dict, classes: list[str]) -> None:
    assert isinstance(results["model"], str) and results["classes"] == classes
    assert Path(results["checkpoint"]).exists()
    for split in ("val", "test"):
        r = results[split]
        assert set(r["per_class"]) == set(classes)
        for values in [*r["per_class"].values(), r["mean"]]:
            assert set(values) >= {"accuracy", "recall", "precision", "f1"}
            assert all(0.0 <= values[m] <= 1.0 for m in ("accuracy", "recall", "precision", "f1"))
        assert r["n"] > 0 and sum(map(sum, r["confusion_matrix"])) == r["n"]
        mean_f1 = sum(v["f1"] for v in r["per_class"].values()) / len(classes)
        assert r["mean"]["f1"] == pytest.approx(mean_f1)


def test_smoke_run_writes_results_json(smoke_run):
    """`python -m attnwsi.train debug=smoke` from an empty cache (the session's `smoke_run`, conftest.py)."""
    out = smoke_run.out
    for stream in (smoke_run.stdout, smoke_run.stderr):  # a quiet console
        head = "\n".join(stream.splitlines()[:60])
        assert "deprecat" not in head.lower() and "Tip:" not in head and "Traceback" not in head, head
        assert "was not set, defaulting" not in stream  # Lightning's note at every checkpoint save we make
    assert "pretraining the trunk once" in smoke_run.stdout  # from an empty cache: all of the first run's output
    results = json.loads((out / "results.json").read_text())
    check_results_schema(results, ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"])
    assert results["model"] == "attention"
    predictions = (out / "predictions_test.csv").read_text().splitlines()
    assert len(predictions) == results["test"]["n"] + 1


def test_be_attention_builds_the_papers_head_without_download():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=be_attention", "model.pretrained=false", "data.root=/nowhere",
                                          "classes=[normal,be_no_dysplasia,be_with_dysplasia,adenocarcinoma]"],
                      return_hydra_config=False)
    assert cfg.data.tile_um == 246 and cfg.data.tile_px == 224
    assert cfg.trainer.max_epochs == 200 and cfg.data.batch_size == 2
    assert list(cfg.data.augment.scale) == [0.8, 1.2] and cfg.data.augment.rotate
    model = instantiate(cfg.model)
    conv = model.head.attention_conv
    assert conv.weight.shape == (64, 512, 3, 3) and conv.padding == (1, 1)
    assert model.head.dropout.p == 0.5
    assert model.head.fc.in_features == 64 * 512
    assert model.hparams.loss == "cross_entropy" and model.head.fc.out_features == 4  # the paper's softmax
    assert model.hparams.lr == 1e-3 and model.hparams.restart_lr == 1e-4 and model.hparams.gamma == 0.95
    assert model.hparams.cycle_epochs == 50 and model.hparams.trainable_stages == 1
    assert model.hparams.backbone == "resnetv2_18"
    assert not model.hparams.grid_shifts  # the paper's inference: one tile grid


def test_meanpool_ablation_is_one_override():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=haystack_meanpool"])
    assert instantiate(cfg.model).head.__class__.__name__ == "MeanPool"


def test_ddp_cpu_streamed_smoke_run_counts_every_test_image_once(tmp_path, smoke_cache):
    """Two processes (gloo; the command in a process of its own, which Lightning's DDP launcher starts again),
    streaming on: one results.json, whose test.n is the number of test images in the manifest. (Streamed
    gradients under DDP equal one process's: tests/test_streaming_ddp.py.)"""
    import pandas as pd

    out = tmp_path / "run"
    run_process(python_module("attnwsi.train", "debug=smoke", "trainer=ddp_cpu", "model.streaming.enabled=true",
                              "model.streaming.chunk_size=4", f"hydra.run.dir={out}"), cache=smoke_cache)
    results = json.loads((out / "results.json").read_text())
    manifest = pd.read_csv(smoke_cache / "haystack_smoke" / "manifest.csv")
    n_test = int((manifest["split"] == "test").sum())
    assert results["test"]["n"] == n_test
    predictions = pd.read_csv(out / "predictions_test.csv")
    assert sorted(predictions["sub_image_id"]) == sorted(manifest.loc[manifest["split"] == "test", "sub_image_id"])


def test_streamed_smoke_run_trains_from_a_tile_cache(tmp_path, smoke_cache):
    out, tiles = tmp_path / "run", tmp_path / "tiles"
    run_command("attnwsi.train", "debug=smoke", "model.streaming.enabled=true", "model.streaming.chunk_size=4",
                f"data.cache={tiles}", f"hydra.run.dir={out}", cache=smoke_cache)
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["n"] > 0
    # every test image was read through the cache (one entry each, in its slide's folder)
    assert len(list(tiles.glob("*/*.jpg"))) >= results["test"]["n"] + results["val"]["n"]


def test_slurm_launcher_config_composes():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_bf16_mixed_streamed_smoke_run_trains_in_bf16(tmp_path, smoke_cache):
    out = tmp_path / "run"
    run_command("attnwsi.train", "debug=smoke", "trainer.precision=bf16-mixed", "model.streaming.enabled=true",
                "model.streaming.chunk_size=4", f"hydra.run.dir={out}", cache=smoke_cache)
    results = json.loads((out / "results.json").read_text())
    check_results_schema(results, ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"])
    hparams = (out / "csv" / "version_0" / "hparams.yaml").read_text()
    assert "precision: bf16-mixed" in hparams
