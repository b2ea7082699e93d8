"""The Trainer wiring of a real training run, checked by value: the learning rate of every epoch, the
checkpoint that is tested, the input normalization, BatchNorm calibration and balanced class weights, and
Table 2 of the test split rebuilt from the predictions written.

One 3-epoch smoke run (`debug=smoke ssl=none`: a trunk trained from scratch, 16 tiny synthetic slides, seconds
on a CPU) is shared by the module.
It uses `model.cycle_epochs=2`, so its three epochs cover the decay *and* the restart of the paper's cyclical
schedule (restarting at a rate large enough to spoil the last epoch, whose validation loss then rises: the
checkpoint kept and tested is not the last weights), `model.class_weights=balanced`, and keeps every
epoch's checkpoint (`save_top_k=-1`): `last.ckpt` is no copy of the last weights (Lightning saves it only
together with a top-k checkpoint), so the last epoch's weights are read from its own file.
"""

import copy
import json

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from commands import run_command
from safetensors.torch import save_file

from attnwsi.data.datamodule import SlideDataModule
from attnwsi.inference.sub_image import load_model
from attnwsi.models.backbones import timm_trunk
from attnwsi.models.classifier import AttentionClassifier

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]
EPOCHS, LR, RESTART_LR, GAMMA, CYCLE = 3, 1e-4, 1e-2, 0.95, 2
METRICS = ("accuracy", "recall", "precision", "f1")


@pytest.fixture(scope="module")
def run(tmp_path_factory, smoke_cache):
    """The run's folder, data root, results.json, metrics.csv (a DataFrame) and manifest."""
    tmp = tmp_path_factory.mktemp("wiring")
    out = tmp / "run"
    overrides = ["debug=smoke", "ssl=none", "data.tile_um=64", "data.tile_px=32",  # the geometry the tests below use
                 f"trainer.max_epochs={EPOCHS}", "model.class_weights=balanced",
                 f"model.lr={LR}", f"model.restart_lr={RESTART_LR}", f"model.gamma={GAMMA}",
                 f"model.cycle_epochs={CYCLE}", "+callbacks.model_checkpoint.save_top_k=-1", "logger=csv",
                 f"hydra.run.dir={out}"]
    run_command("attnwsi.train", *overrides, cache=smoke_cache)
    root = smoke_cache / "haystack_smoke"
    return dict(out=out, root=root, results=json.loads((out / "results.json").read_text()),
                metrics=pd.read_csv(out / "csv" / "version_0" / "metrics.csv"),
                manifest=pd.read_csv(root / "manifest.csv"))


def fit_validations(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of the validations run while fitting, one per epoch (the later `validate` has epoch = EPOCHS)."""
    rows = metrics[metrics["val/f1_mean"].notna() & (metrics["epoch"] < EPOCHS)]
    assert list(rows["epoch"]) == list(range(EPOCHS))
    return rows.reset_index(drop=True)


def best_epoch(metrics: pd.DataFrame) -> int:
    """ModelCheckpoint(monitor=val/loss, mode=min) keeps the first epoch that reaches the minimum."""
    return int(np.argmin(fit_validations(metrics)["val/loss"].to_numpy()))


def state_dict(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_each_epoch_trains_at_the_cyclical_schedules_learning_rate(run):
    logged = run["metrics"]["lr-Adam"].dropna().to_numpy()
    # lr(e) = base * gamma ** (e mod cycle), base = lr in the first cycle and restart_lr after (section 4.3)
    expected = [LR, LR * GAMMA, RESTART_LR]
    np.testing.assert_allclose(logged, expected, rtol=1e-6)  # one value per epoch: stepped per epoch


def test_the_tested_checkpoint_is_the_first_with_the_lowest_validation_loss(run):
    results, metrics = run["results"], run["metrics"]
    best = best_epoch(metrics)
    assert results["checkpoint"].endswith(f"epoch_{best:03d}.ckpt")
    row = fit_validations(metrics).iloc[best]
    for metric in METRICS:  # results.json's validation is that epoch's validation
        assert results["val"]["mean"][metric] == pytest.approx(row[f"val/{metric}_mean"])
        for cls in CLASSES:
            assert results["val"]["per_class"][cls][metric] == pytest.approx(row[f"val/{metric}/{cls}"])


def sub_image_probabilities(ckpt, root, split: str) -> pd.DataFrame:
    """The checkpoint's class probabilities for every sub-image of a split, one image at a time (its answer:
    with the run's grid shifts, `image_logits`)."""
    model = load_model(str(ckpt), "cpu")
    datamodule = SlideDataModule(str(root), CLASSES, model.hparams.tile_um, model.hparams.tile_px)
    datamodule.setup()
    rows = {}
    with torch.no_grad():
        for sample in datamodule.datasets[split]:
            logits = model(sample.tiles, sample.grid)[0]
            answer = model.image_logits([(sample.tiles, sample.grid)], logits[None])[0]
            rows[sample.sub_image_id] = answer.softmax(0).numpy()
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"p_{c}" for c in CLASSES])


def test_the_test_predictions_come_from_the_best_checkpoint_not_the_last_weights(run):
    best = best_epoch(run["metrics"])
    # Without this the test could not tell the two apart (the restart's large rate makes the last epoch worse)
    assert best < EPOCHS - 1, "the smoke run's best epoch is its last one: choose a run where they differ"
    written = pd.read_csv(run["out"] / "predictions_test.csv", dtype={"sub_image_id": str}).set_index("sub_image_id")
    columns = [f"p_{c}" for c in CLASSES]
    best_ckpt = run["out"] / "checkpoints" / f"epoch_{best:03d}.ckpt"
    expected = sub_image_probabilities(best_ckpt, run["root"], "test").loc[written.index]
    np.testing.assert_allclose(written[columns].to_numpy(), expected[columns].to_numpy(), atol=1e-5)
    last_ckpt = run["out"] / "checkpoints" / f"epoch_{EPOCHS - 1:03d}.ckpt"
    last = sub_image_probabilities(last_ckpt, run["root"], "test").loc[written.index]
    assert np.abs(last[columns].to_numpy() - expected[columns].to_numpy()).max() > 1e-4  # they do differ


def test_every_checkpoint_normalizes_with_the_data_sets_stats_json(run):
    stats = json.loads((run["root"] / "stats.json").read_text())
    assert not np.allclose(stats["mean"], 0.5)  # the model's default would not pass for the data set's own
    for ckpt in (run["out"] / "checkpoints").glob("*.ckpt"):
        state = state_dict(ckpt)
        np.testing.assert_allclose(state["normalization.mean"].flatten(), stats["mean"], rtol=1e-6)
        np.testing.assert_allclose(state["normalization.std"].flatten(), stats["std"], rtol=1e-6)


def test_balanced_class_weights_are_the_inverse_training_frequencies(run):
    train = run["manifest"][run["manifest"]["split"] == "train"]
    counts = train["label"].value_counts().reindex(CLASSES, fill_value=0).to_numpy()
    assert len(set(counts)) > 1  # else every weight would be 1, weighted or not
    expected = counts.sum() / (len(CLASSES) * np.maximum(counts, 1))
    state = state_dict(run["results"]["checkpoint"])
    np.testing.assert_allclose(state["loss_weights"].numpy(), expected, rtol=1e-6)


def test_the_trunk_trained_from_scratch_was_batchnorm_calibrated(run):
    state = state_dict(run["results"]["checkpoint"])
    means = {k: v for k, v in state.items() if k.endswith("running_mean")}
    assert len(means) >= 10
    for key, mean in means.items():  # reset_running_stats would leave mean 0, variance 1
        variance = state[key.replace("running_mean", "running_var")]
        assert mean.abs().max() > 1e-3 and (variance - 1).abs().max() > 1e-3, key


def test_batchnorm_statistics_stay_fixed_while_training(run):
    """The extractor's BatchNorm policy: running statistics are used, never updated, in training too."""
    checkpoints = [state_dict(run["out"] / "checkpoints" / f"epoch_{e:03d}.ckpt") for e in range(EPOCHS)]
    keys = [k for k in checkpoints[0] if k.endswith(("running_mean", "running_var"))]
    assert len(keys) >= 20
    for key in keys:
        assert torch.equal(checkpoints[0][key], checkpoints[-1][key]), key


def table2_by_hand(labels: list[str], predictions: list[str]) -> dict:
    """One-vs-rest accuracy, recall, precision, F1 per class (0 where undefined), their means, and n."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    per_class = {}
    for cls in CLASSES:
        tp = np.sum((labels == cls) & (predictions == cls))
        fp = np.sum((labels != cls) & (predictions == cls))
        fn = np.sum((labels == cls) & (predictions != cls))
        tn = len(labels) - tp - fp - fn
        per_class[cls] = {"accuracy": (tp + tn) / len(labels), "recall": tp / (tp + fn) if tp + fn else 0.0,
                          "precision": tp / (tp + fp) if tp + fp else 0.0,
                          "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0}
    mean = {m: np.mean([per_class[c][m] for c in CLASSES]) for m in METRICS}
    return {"per_class": per_class, "mean": mean, "n": len(labels)}


def test_table2_rebuilt_from_predictions_test_csv_equals_results_json(run):
    predictions = pd.read_csv(run["out"] / "predictions_test.csv", dtype={"sub_image_id": str})
    manifest = run["manifest"]
    test = manifest[manifest["split"] == "test"].set_index("sub_image_id")
    assert sorted(predictions["sub_image_id"]) == sorted(test.index)  # every test image, once
    assert (predictions["label"].to_numpy() == test.loc[predictions["sub_image_id"], "label"].to_numpy()).all()
    probabilities = predictions[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert (predictions["prediction"] == [CLASSES[i] for i in probabilities.argmax(1)]).all()
    rebuilt, written = table2_by_hand(predictions["label"], predictions["prediction"]), run["results"]["test"]
    assert written["n"] == rebuilt["n"] == len(test)
    for metric in METRICS:
        assert written["mean"][metric] == pytest.approx(rebuilt["mean"][metric])
        for cls in CLASSES:
            assert written["per_class"][cls][metric] == pytest.approx(rebuilt["per_class"][cls][metric])
    labels = [CLASSES.index(c) for c in predictions["label"]]
    predicted = [CLASSES.index(c) for c in predictions["prediction"]]
    confusion = np.zeros((4, 4), int)
    np.add.at(confusion, (labels, predicted), 1)
    assert written["confusion_matrix"] == confusion.tolist()  # rows: true class, columns: predicted


# ------------------------------------------------------------------ on_fit_start in a real Trainer


def start_fit(root, pretrained: bool, weights_path=None, batches: int = 0) -> tuple[AttentionClassifier, dict]:
    """A Trainer.fit of `batches` training batches (0: on_fit_start only); the model and its extractor's
    state before."""
    torch.manual_seed(0)
    model = AttentionClassifier(CLASSES, tile_um=64, tile_px=32, pretrained=pretrained, weights_path=weights_path,
                                trainable_stages=4, class_weights="balanced", calibrate_batchnorm=5)
    before = copy.deepcopy(model.extractor.state_dict())
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=SlideDataModule(str(root), CLASSES, tile_um=64, tile_px=32))
    return model, before


def batchnorm_stats(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_fit_start_calibrates_batchnorm_of_a_random_trunk_on_the_first_training_images(run):
    model, before = start_fit(run["root"], pretrained=False)
    stats = json.loads((run["root"] / "stats.json").read_text())
    np.testing.assert_allclose(model.normalization.mean.flatten(), stats["mean"], rtol=1e-6)
    np.testing.assert_allclose(model.normalization.std.flatten(), stats["std"], rtol=1e-6)
    # independently: the same initial trunk, calibrated on the first 5 training images normalized by stats.json
    datamodule = SlideDataModule(str(run["root"]), CLASSES, tile_um=64, tile_px=32)
    datamodule.setup()
    reference = copy.deepcopy(model.extractor)
    reference.load_state_dict(before)
    mean, std = (torch.tensor(stats[k], dtype=torch.float32).view(1, 3, 1, 1) for k in ("mean", "std"))
    reference.calibrate_batchnorm((datamodule.datasets["train"][i].tiles.float() / 255 - mean) / std
                                  for i in range(5))
    after, expected = batchnorm_stats(model.extractor.state_dict()), batchnorm_stats(reference.state_dict())
    assert len(after) >= 20
    for key, value in after.items():
        assert not torch.equal(value, before[key]), key
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-5)
    train_labels = datamodule.datasets["train"].labels
    counts = np.array([train_labels.count(c) for c in CLASSES])
    np.testing.assert_allclose(model.loss_weights.numpy(), counts.sum() / (4 * counts), rtol=1e-6)


def pretrained_trunk_file(path) -> str:
    """A resnetv2_18 trunk with BatchNorm statistics unlike a fresh trunk's, as pretrained ones are."""
    torch.manual_seed(1)
    trunk = timm_trunk("resnetv2_18")
    for module in trunk.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, path)
    return str(path)


def test_fit_start_leaves_the_batchnorm_statistics_of_a_pretrained_trunk_alone(run, tmp_path):
    trunk = pretrained_trunk_file(tmp_path / "trunk.safetensors")
    model, before = start_fit(run["root"], pretrained=True, weights_path=trunk)
    after = batchnorm_stats(model.extractor.state_dict())
    assert len(after) >= 20
    for key, value in after.items():
        assert torch.equal(value, before[key]), key
    stats = json.loads((run["root"] / "stats.json").read_text())
    np.testing.assert_allclose(model.normalization.mean.flatten(), stats["mean"], rtol=1e-6)


# ------------------------------------------------------------------ predict on slides of several sub-images


def several_sub_images_per_slide(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every slide's tissue box cut into sub-images: its halves and quarters (7 per slide), so that the
    sub-images of one slide get different predictions and the slide rule has something to decide."""
    rows = []
    for slide in manifest.itertuples(index=False):
        x, y, w, h = slide.x, slide.y, slide.width, slide.height
        boxes = [(x, y, w // 2, h), (x + w // 2, y, w - w // 2, h), (x, y, w, h // 2), (x, y + h // 2, w, h - h // 2),
                 (x, y, w // 2, h // 2), (x + w // 2, y + h // 2, w - w // 2, h - h // 2), (x, y, w, h)]
        for k, (bx, by, bw, bh) in enumerate(boxes):
            rows.append({**slide._asdict(), "sub_image_id": f"{slide.slide_id}_part{k}", "x": bx, "y": by,
                         "width": bw, "height": bh})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def predicted(run, tmp_path_factory):
    """`predict` with the best checkpoint on a manifest of several sub-images per slide."""
    from attnwsi.inference.slides import predict

    tmp = tmp_path_factory.mktemp("predict")
    manifest = several_sub_images_per_slide(run["manifest"])
    manifest.to_csv(tmp / "manifest.csv", index=False)
    result = predict(run["results"]["checkpoint"], str(tmp / "out"), manifest=str(tmp / "manifest.csv"),
                     device="cpu")
    assert not result.failures
    return manifest, result.predictions, tmp / "out"


def test_predict_decides_each_slide_by_its_highest_risk_sub_image(predicted):
    manifest, predictions, out = predicted
    written = pd.read_csv(out / "predictions.csv", dtype={"sub_image_id": str, "decided_by": str},
                          keep_default_na=False)
    assert len(written) == len(predictions) == len(manifest) + manifest["slide_id"].nunique()
    sub_images = written[written["level"] == "sub_image"]
    mixed = 0
    for slide_id, slide in written[written["level"] == "slide"].set_index("slide_id").iterrows():
        own = sub_images[sub_images["slide_id"] == slide_id]
        assert len(own) == 7
        risks = [CLASSES.index(c) for c in own["prediction"]]
        mixed += len(set(risks)) > 1
        riskiest = CLASSES[max(risks)]
        assert slide["prediction"] == riskiest, slide_id
        candidates = own[own["prediction"] == riskiest]
        deciding = candidates.loc[candidates[f"p_{riskiest}"].idxmax()]
        assert slide["decided_by"] == deciding["sub_image_id"], slide_id
        for c in CLASSES:
            assert slide[f"p_{c}"] == pytest.approx(deciding[f"p_{c}"])
        assert slide["n_tiles"] == own["n_tiles"].sum()
        assert slide["label"] == max(own["label"], key=CLASSES.index)
    # the rule was tested: slides whose sub-images disagree (else any rule would pass)
    assert mixed >= 3, f"only {mixed} slides have sub-images with different predictions"


def test_predict_writes_each_sub_images_manifest_box_and_tile_count_into_its_geojson(predicted):
    manifest, predictions, out = predicted
    sub_images = predictions[predictions["level"] == "sub_image"].set_index("sub_image_id")
    for slide_id, boxes in manifest.groupby("slide_id"):
        features = json.loads((out / "geojson" / f"{slide_id}.geojson").read_text())["features"]
        annotations = {f["properties"]["name"]: f for f in features if f["properties"]["objectType"] == "annotation"}
        assert set(annotations) == set(boxes["sub_image_id"])
        for box in boxes.itertuples():
            ring = annotations[box.sub_image_id]["geometry"]["coordinates"][0]
            x0, y0, x1, y1 = box.x, box.y, box.x + box.width, box.y + box.height
            assert ring == [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], box.sub_image_id
            assert annotations[box.sub_image_id]["properties"]["classification"]["name"] == \
                sub_images.loc[box.sub_image_id, "prediction"]
        detections = [f for f in features if f["properties"]["objectType"] == "detection"]
        assert len(detections) == sub_images.loc[boxes["sub_image_id"], "n_tiles"].sum()


def test_training_a_pretrained_trunk_keeps_its_batchnorm_statistics(run, tmp_path):
    trunk = pretrained_trunk_file(tmp_path / "trunk.safetensors")
    model, before = start_fit(run["root"], pretrained=True, weights_path=trunk,
                              batches=1)
    for key, value in batchnorm_stats(model.extractor.state_dict()).items():
        assert torch.equal(value, before[key]), key
