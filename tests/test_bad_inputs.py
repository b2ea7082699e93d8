"""One clear message, never a traceback, for every bad input a user can hand the commands; and what was
written before stays intact.

Each row runs the real command (its `main`, in this process: tests/commands.py) on small slides written here
(pyramidal TIFFs of a square tissue piece). A bad slide is skipped with its reason (exit status 1, the other
slides' outputs written as before); a bad label sheet, option or checkpoint stops the command before it writes
anything (exit status 2).
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from commands import Completed, run_command
from PIL import Image

from attnwsi.data.datamodule import SubImageDataset
from attnwsi.data.manifest import read_sub_images
from attnwsi.data.synthetic import CLASSES, write_pyramidal_tiff
from attnwsi.models.crop_classifier import CropClassifier


def tissue_image(size: int = 400, piece: int | None = None, glass_only: bool = False) -> np.ndarray:
    """Glass with one square tissue piece (`piece` px a side, default 3/4 of the image)."""
    image = np.full((size, size, 3), 245, np.uint8)
    if not glass_only:
        piece = piece or size * 3 // 4
        start = (size - piece) // 2
        image[start:start + piece, start:start + piece] = (200, 110, 160)
    return image


def run(module: str, *args: str, tmp_path) -> Completed:
    return run_command(module, *args, cache=tmp_path / "cache", check=False)


def output(proc: Completed) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture
def data(tmp_path):
    """Two good slides, their sheet, and a data root preprocessed from them (`out`)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for slide_id in ("good_a", "good_b"):
        write_pyramidal_tiff(slides / f"{slide_id}.tiff", tissue_image(), mpp=0.5)
    rows = [dict(slide_id="good_a", patient_id="p1", label="normal", split="train"),
            dict(slide_id="good_b", patient_id="p2", label="adenocarcinoma", split="val")]
    sheet = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    out = tmp_path / "out"
    run_command("attnwsi.preprocess", f"slides={slides}", f"labels={sheet}", f"out={out}", cache=tmp_path / "cache")
    return {"slides": slides, "rows": rows, "sheet": sheet, "out": out, "tmp": tmp_path,
            "manifest": (out / "manifest.csv").read_bytes()}


def preprocess_with(data, extra_rows: list[dict], annotations=None) -> Completed:
    sheet = data["tmp"] / "labels_more.csv"
    pd.DataFrame(data["rows"] + extra_rows).to_csv(sheet, index=False)
    args = [f"slides={data['slides']}", f"labels={sheet}", f"out={data['out']}"]
    if annotations is not None:
        args.append(f"annotations={annotations}")
    return run("attnwsi.preprocess", *args, tmp_path=data["tmp"])


def assert_slide_skipped(proc, data, slide_id: str, *phrases: str) -> None:
    """Exit 1 and the slide's reason; the good slides' manifest rows and QA pictures as before."""
    text = output(proc)
    assert proc.returncode == 1, text[-3000:]
    assert "Traceback" not in text
    assert f"{slide_id}:" in text and all(p in " ".join(text.split()) for p in phrases), text[-3000:]
    manifest = pd.read_csv(data["out"] / "manifest.csv")
    assert set(manifest["slide_id"]) == {"good_a", "good_b"}
    assert (data["out"] / "manifest.csv").read_bytes() == data["manifest"]
    assert sorted(p.name for p in (data["out"] / "qa").glob("good_*.png")) == ["good_a.png", "good_b.png"]


def assert_stopped(proc, data, *phrases: str) -> None:
    """Exit 2, one message, no traceback, and the data root exactly as before."""
    text = " ".join(output(proc).split())
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "error:" in text
    assert all(p in text for p in phrases), text[-3000:]
    assert (data["out"] / "manifest.csv").read_bytes() == data["manifest"]


BAD = dict(slide_id="bad", patient_id="p3", label="normal", split="test")


def test_a_zero_byte_slide_is_skipped_with_its_reason(data):
    (data["slides"] / "bad.svs").write_bytes(b"")
    assert_slide_skipped(preprocess_with(data, [BAD]), data, "bad", "bad.svs", "cannot read")


def test_a_truncated_slide_is_skipped_with_its_reason(data):
    whole = (data["slides"] / "good_a.tiff").read_bytes()
    (data["slides"] / "bad.tiff").write_bytes(whole[: len(whole) // 3])
    assert_slide_skipped(preprocess_with(data, [BAD]), data, "bad", "bad.tiff")


def test_a_png_renamed_svs_is_skipped_with_its_reason(data):
    Image.fromarray(tissue_image()).save(data["tmp"] / "picture.png")
    shutil.copy(data["tmp"] / "picture.png", data["slides"] / "bad.svs")
    assert_slide_skipped(preprocess_with(data, [BAD]), data, "bad", "bad.svs")


def test_a_text_file_renamed_tiff_is_skipped_with_its_reason(data):
    (data["slides"] / "bad.tiff").write_text("slide_id,label\nthis is not a slide\n")
    assert_slide_skipped(preprocess_with(data, [BAD]), data, "bad", "bad.tiff", "cannot read")


def test_blank_glass_is_skipped_as_a_slide_without_tissue(data):
    write_pyramidal_tiff(data["slides"] / "bad.tiff", tissue_image(glass_only=True), mpp=0.5)
    assert_slide_skipped(preprocess_with(data, [BAD]), data, "bad", "no tissue found", "tissue.min_area_um2")


def test_tissue_smaller_than_the_smallest_piece_is_skipped_and_a_piece_smaller_than_a_tile_is_padded(data):
    write_pyramidal_tiff(data["slides"] / "bad.tiff", tissue_image(piece=12), mpp=0.5)  # 6 x 6 um of tissue
    assert_slide_skipped(preprocess_with(data, [BAD]), data, "bad", "no tissue found")
    # A piece that is kept (200 x 200 px: 100 um) but smaller than a 246-um tile is one padded tile.
    sub_images = read_sub_images(data["out"] / "manifest.csv")
    small = [s for s in sub_images if s.slide_id == "good_a"]
    dataset = SubImageDataset(small, CLASSES, mpp=246 / 224, tile_px=224)
    sample = dataset[0]
    assert sample.grid == (1, 1) and sample.tiles.shape == (1, 3, 224, 224)


def test_a_slide_without_a_pixel_size_is_skipped_with_the_two_fixes(data):
    tifffile.imwrite(data["slides"] / "bad.tiff", tissue_image(), tile=(256, 256), photometric="rgb")
    assert_slide_skipped(preprocess_with(data, [BAD]), data, "bad", "`mpp` column", "default_mpp=")


def test_a_slide_listed_but_missing_is_skipped_with_its_reason(data):
    assert_slide_skipped(preprocess_with(data, [BAD]), data, "bad", "no slide file named bad")


def test_labels_outside_the_classes_stop_preprocess_with_how_to_name_them(data):
    proc = preprocess_with(data, [{**BAD, "label": "tumor"}])
    assert_stopped(proc, data, "['tumor']", "not among the configured classes", "classes=[")


def test_a_patient_in_two_splits_stops_preprocess(data):
    write_pyramidal_tiff(data["slides"] / "bad.tiff", tissue_image(), mpp=0.5)
    proc = preprocess_with(data, [{**BAD, "patient_id": "p1", "split": "test"}])
    assert_stopped(proc, data, "['p1']", "more than one split")


def test_duplicate_slide_ids_stop_preprocess(data):
    proc = preprocess_with(data, [{**data["rows"][0], "patient_id": "p1"}])
    assert_stopped(proc, data, "['good_a']", "more than once")


def test_malformed_geojson_skips_its_slide_with_its_reason(data):
    annotations = data["tmp"] / "annotations"
    annotations.mkdir()
    write_pyramidal_tiff(data["slides"] / "bad.tiff", tissue_image(), mpp=0.5)
    (annotations / "bad.geojson").write_text('{"type": "FeatureCollection", "features": [')
    proc = preprocess_with(data, [BAD], annotations=annotations)
    assert_slide_skipped(proc, data, "bad", "bad.geojson", "not valid GeoJSON")


def test_geojson_with_an_unknown_class_skips_its_slide_with_its_reason(data):
    annotations = data["tmp"] / "annotations"
    annotations.mkdir()
    write_pyramidal_tiff(data["slides"] / "bad.tiff", tissue_image(), mpp=0.5)
    square = [[[100, 100], [200, 100], [200, 200], [100, 200], [100, 100]]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
               "properties": {"classification": {"name": "Tumour"}}}
    (annotations / "bad.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    proc = preprocess_with(data, [BAD], annotations=annotations)
    assert_slide_skipped(proc, data, "bad", "bad.geojson", "unknown class 'Tumour'")


def test_train_on_a_folder_without_a_manifest_says_which_command_writes_it(tmp_path):
    proc = run("attnwsi.train", "+experiment=be_attention", f"data.root={tmp_path / 'nothing'}",
               "model.pretrained=false", f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path)
    text = " ".join(output(proc).split())
    assert proc.returncode == 2 and "Traceback" not in text, text[-3000:]
    assert "no manifest" in text and "python -m attnwsi.preprocess" in text


@pytest.mark.parametrize("experiment", ["slides_cpu", "slides_cpu_sliding_window"])
def test_an_experiment_on_real_slides_without_data_root_asks_for_it(tmp_path, experiment):
    """Its classes come from the data root (class_list=from_data), so the missing data.root is found there."""
    proc = run("attnwsi.train", f"+experiment={experiment}", f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path)
    text = " ".join(output(proc).split())
    assert proc.returncode == 2 and "Traceback" not in text, text[-3000:]
    assert "data.root" in text and "required" in text, text[-3000:]


def test_train_with_other_classes_than_the_data_set_says_how_to_set_them(data):
    proc = run("attnwsi.train", "+experiment=be_attention", f"data.root={data['out']}", "model.pretrained=false",
               "classes=[normal,tumor]", f"hydra.run.dir={data['tmp'] / 'run'}", tmp_path=data["tmp"])
    assert_stopped(proc, data, "['adenocarcinoma']", "not among the configured classes", "classes=[")


def test_a_non_finite_loss_stops_training_with_where_and_keeps_no_bad_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = run("attnwsi.train", "debug=smoke", "ssl=none", "model.lr=1e30", "model.dropout=0",
               "trainer.max_epochs=3", f"hydra.run.dir={out}", tmp_path=tmp_path)
    text = " ".join(output(proc).split())
    assert proc.returncode == 2 and "Traceback" not in text, text[-3000:]
    assert "the training loss is" in text and "at epoch" in text and "on the sub-images [" in text
    assert not (out / "results.json").exists()
    for checkpoint in (out / "checkpoints").glob("*.ckpt"):  # those written before are whole and finite
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), checkpoint


@pytest.fixture
def crop_checkpoint(tmp_path):
    """A checkpoint of the sliding window's crop classifier: the other model."""
    model = CropClassifier(CLASSES, crop_um=64, crop_px=32)
    path = tmp_path / "crops.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.6.0"}, path)
    return path


@pytest.mark.parametrize("bad", ["truncated", "other model"])
def test_a_bad_checkpoint_given_to_predict_or_localization_is_named_with_what_is_wrong(data, crop_checkpoint, bad):
    if bad == "truncated":
        checkpoint = data["tmp"] / "truncated.ckpt"
        checkpoint.write_bytes(crop_checkpoint.read_bytes()[:1000])
        phrases = {"predict": "cannot be read as a checkpoint", "localization": "cannot be read as a checkpoint"}
    else:  # predict takes a sliding-window checkpoint too, but only in its run folder, with aggregation.json
        checkpoint = crop_checkpoint
        phrases = {"predict": "aggregation.json: not found",
                   "localization": "is not a checkpoint of AttentionClassifier"}
    predict = run("attnwsi.predict", f"ckpt_path={checkpoint}", f"manifest={data['out'] / 'manifest.csv'}",
                  f"out={data['tmp'] / 'predicted'}", tmp_path=data["tmp"])
    localization = run("attnwsi.localization", f"ckpt_path={checkpoint}", f"data_root={data['out']}",
                       tmp_path=data["tmp"])
    assert_stopped(predict, data, str(checkpoint), phrases["predict"])
    assert_stopped(localization, data, str(checkpoint), phrases["localization"])


def test_a_foreign_last_checkpoint_in_a_run_directory_is_named_instead_of_resumed(data, crop_checkpoint):
    run_dir = data["tmp"] / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(crop_checkpoint, run_dir / "checkpoints" / "last.ckpt")
    proc = run("attnwsi.train", "+experiment=be_attention", f"data.root={data['out']}", "model.pretrained=false",
               f"hydra.run.dir={run_dir}", tmp_path=data["tmp"])
    assert_stopped(proc, data, str(run_dir / "checkpoints" / "last.ckpt"), "not a checkpoint of AttentionClassifier")


def test_train_with_the_classes_in_another_order_than_the_data_root_says_the_right_order(data):
    written = json.loads((data["out"] / "dataset.json").read_text())["classes"]
    assert written == CLASSES  # preprocess records the classes, in increasing risk
    reversed_order = f"classes=[{','.join(reversed(CLASSES))}]"
    proc = run("attnwsi.train", "+experiment=be_attention", f"data.root={data['out']}", "model.pretrained=false",
               reversed_order, f"hydra.run.dir={data['tmp'] / 'run'}", tmp_path=data["tmp"])
    assert_stopped(proc, data, "this data root's classes are", f"classes=[{','.join(CLASSES)}]")
