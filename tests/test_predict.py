"""`python -m attnwsi.predict` from a checkpoint alone, on a real slide and on a manifest; tile geometry.

Real slide: CMU-1-Small-Region.svs (OpenSlide test data, CC0) in ../shared/data/wsi/. The checkpoint comes
from a smoke run on the synthetic haystack (its four classes and its tile geometry, 64 um tiles read at 32 px),
which a real slide takes as well.
"""

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from commands import Completed, run_command
from PIL import Image

from attnwsi.data.annotations import read_lesions
from attnwsi.data.grid import grid_region, image_to_tiles, tile_boxes
from attnwsi.data.slides import open_slide
from attnwsi.inference.outputs import slide_row
from attnwsi.inference.slides import predict

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]
P_COLUMNS = [f"p_{c}" for c in CLASSES]


def run(args: list[str], tmp_path, check: bool = True) -> Completed:
    return run_command(*args, cache=tmp_path / "cache", check=check)


@pytest.fixture
def smoke(smoke_run):
    """(checkpoint, haystack data root) of the session's smoke run (conftest.py)."""
    return smoke_run.last_checkpoint, smoke_run.haystack


def test_predict_on_a_real_slide_writes_predictions_heatmaps_and_geojson(smoke, shared_data, tmp_path):
    ckpt, _ = smoke
    svs = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide")
    out = tmp_path / "out"
    proc = run(["attnwsi.predict", f"ckpt_path={ckpt}", f"slides=[{svs},{broken}]", f"out={out}"], tmp_path,
               check=False)
    assert proc.returncode == 1  # the broken slide is reported and skipped; the good one is predicted
    assert "broken" in proc.stdout and "failed" in proc.stdout

    predictions = pd.read_csv(out / "predictions.csv")
    assert set(predictions["slide_id"]) == {"CMU-1-Small-Region"}
    np.testing.assert_allclose(predictions[P_COLUMNS].sum(axis=1), 1.0, atol=1e-5)
    sub_images = predictions[predictions["level"] == "sub_image"]
    slide = predictions[predictions["level"] == "slide"].iloc[0]
    assert len(sub_images) >= 1 and set(sub_images["prediction"]) <= set(CLASSES)
    assert slide["decided_by"] in set(sub_images["sub_image_id"])

    width, height = open_slide(svs).dimensions
    for row in sub_images.itertuples():
        heatmap = Image.open(out / "heatmaps" / row.slide_id / f"{row.sub_image_id}_mean.png")
        scale = min(1.0, 1024 / max(row.width, row.height))  # heatmap_px: each panel's longer side
        # the sub-image and its overlay side by side at that size, with titles and a colour bar
        assert heatmap.size[0] >= 2 * round(row.width * scale) and heatmap.size[1] >= round(row.height * scale)
        assert len(list((out / "heatmaps" / row.slide_id).glob(f"{row.sub_image_id}_filter*.png"))) == 3

    collection = json.loads((out / "geojson" / "CMU-1-Small-Region.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    detections = [f for f in collection["features"] if f["properties"]["objectType"] == "detection"]
    assert len(detections) == sub_images["n_tiles"].sum()
    points = np.array([p for f in collection["features"] for p in f["geometry"]["coordinates"][0]])
    assert (points >= 0).all() and (points[:, 0] <= width).all() and (points[:, 1] <= height).all()
    attention = np.array([f["properties"]["measurements"]["attention_mean"] for f in detections])
    # the mean map scaled to a maximum of 1 (softmax weights are positive; rounding may write 0 for tiny ones)
    assert attention.max() == pytest.approx(1.0) and (attention >= 0).all() and attention.min() < 1


def test_predict_on_a_manifest_keeps_labels_and_applies_the_highest_risk_rule(smoke, tmp_path):
    ckpt, data_root = smoke
    result = predict(str(ckpt), str(tmp_path / "out"), manifest=str(data_root / "manifest.csv"), split="test")
    assert not result.failures
    predictions = result.predictions
    manifest = pd.read_csv(data_root / "manifest.csv")
    test = manifest[manifest["split"] == "test"].set_index("sub_image_id")
    sub_images = predictions[predictions["level"] == "sub_image"].set_index("sub_image_id")
    assert sorted(sub_images.index) == sorted(test.index)
    assert (sub_images["label"] == test.loc[sub_images.index, "label"]).all()
    slides = predictions[predictions["level"] == "slide"]
    assert sorted(slides["slide_id"]) == sorted(set(test["slide_id"]))


def test_a_rerun_of_predict_redoes_only_the_slides_not_done(smoke, tmp_path):
    ckpt, data_root = smoke
    out = tmp_path / "out"
    first = predict(str(ckpt), str(out), manifest=str(data_root / "manifest.csv"), split="test")
    csv = (out / "predictions.csv").read_bytes()
    slide_ids = sorted(first.predictions.loc[first.predictions["level"] == "slide", "slide_id"])
    assert sorted(p.stem for p in (out / "done").glob("*.json")) == slide_ids
    (out / "done" / f"{slide_ids[0]}.json").unlink()  # as if killed while predicting that slide
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    predict(str(ckpt), str(out), manifest=str(data_root / "manifest.csv"), split="test")
    redone = {p.parent.name for p in out.rglob("*.png") if p.stat().st_mtime_ns != stamps[p]}
    assert redone == {slide_ids[0]}
    assert (out / "predictions.csv").read_bytes() == csv
    predict(str(ckpt), str(out), manifest=str(data_root / "manifest.csv"), split="test", overwrite=True)
    assert all(p.stat().st_mtime_ns != stamps[p] for p in out.rglob("*.png"))


def test_highest_risk_rule_takes_the_most_confident_sub_image_of_the_riskiest_predicted_class():
    def row(sub_image_id, prediction, p_prediction, label="normal"):
        p = {**dict.fromkeys(P_COLUMNS, (1 - p_prediction) / 3), f"p_{prediction}": p_prediction}
        return dict(sub_image_id=sub_image_id, prediction=prediction, label=label, n_tiles=10, **p)

    rows = [row("s_0", "normal", 0.9), row("s_1", "be_with_dysplasia", 0.6, "adenocarcinoma"),
            row("s_2", "be_with_dysplasia", 0.7), row("s_3", "be_no_dysplasia", 0.8)]
    slide = slide_row(rows, CLASSES, slide_size=(1000, 800))
    assert slide["level"] == "slide" and slide["prediction"] == "be_with_dysplasia"
    assert slide["decided_by"] == "s_2" and slide["p_be_with_dysplasia"] == 0.7
    assert slide["label"] == "adenocarcinoma" and slide["n_tiles"] == 40
    assert (slide["width"], slide["height"]) == (1000, 800)


def test_tiles_map_back_onto_the_slide_where_they_were_cut():
    # A level-0 box of 1000 x 700 px read at half resolution: a 500 x 350 image, 64 px tiles.
    box, image_size = (100, 50, 1000, 700), (350, 500)
    image = np.zeros((*image_size, 3), np.uint8)
    tiles, grid = image_to_tiles(image, 64)
    assert grid == (5, 7) and grid_region(image_size, grid, 64) == (26, 15, 26 + 7 * 64, 15 + 5 * 64)
    boxes = tile_boxes(box, image_size, grid, 64)
    assert boxes.shape == (35, 4)
    np.testing.assert_allclose(boxes[0], [100 + 2 * 26, 50 + 2 * 15, 100 + 2 * 90, 50 + 2 * 79])
    np.testing.assert_allclose(boxes[8], boxes[0] + [128, 128, 128, 128])  # row 1, column 1
    np.testing.assert_allclose(boxes[-1, 2:], [100 + 2 * (26 + 448), 50 + 2 * (15 + 320)])


def test_an_image_smaller_than_a_tile_gives_one_tile_clipped_to_the_sub_image():
    boxes = tile_boxes((10, 20, 40, 30), image_size=(15, 20), grid=(1, 1), tile_px=64)
    np.testing.assert_allclose(boxes, [[10, 20, 50, 50]])


def test_the_localization_command_scores_every_sub_image_with_a_lesion(smoke, tmp_path):
    ckpt, data_root = smoke
    out = tmp_path / "localization.json"
    proc = run(["attnwsi.localization", f"ckpt_path={ckpt}", f"data_root={data_root}", "split=train",
                f"out={out}"], tmp_path)
    result = json.loads(out.read_text())
    manifest = pd.read_csv(data_root / "manifest.csv")
    train = manifest[manifest["split"] == "train"]
    with_lesions = {row.sub_image_id for row in train.itertuples()
                    if any(lesion.intersects((row.x, row.y, row.width, row.height))
                           for lesion in read_lesions(data_root / "annotations" / f"{row.slide_id}.geojson",
                                                      CLASSES))}
    assert set(result["per_sub_image"]) == with_lesions and result["n"] == len(with_lesions) > 0
    assert result["hits"] == sum(r["hit"] for r in result["per_sub_image"].values())
    assert result["hits_filters"] == sum(r["hit_filters"] for r in result["per_sub_image"].values())
    assert result["top_filters"] == 3
    assert (f"in {result['n']} sub-images with a lesion: mean map {result['hits']} ({result['score']:.3f}), the 3 "
            f"most relevant filters {result['hits_filters']} ({result['score_filters']:.3f})") in proc.stdout
    assert not list(tmp_path.glob("*.log"))  # prints only


class PageLinks(HTMLParser):
    """The images and links of a page, and its text."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])

    def handle_data(self, data):
        self.text.append(data)


def test_the_predictions_page_shows_every_slide_with_pictures_that_exist(smoke, tmp_path):
    ckpt, data_root = smoke
    out = tmp_path / "out"
    result = predict(str(ckpt), str(out), manifest=str(data_root / "manifest.csv"), split="test")
    page = PageLinks()
    page.feed((out / "index.html").read_text())
    slides = result.predictions[result.predictions["level"] == "slide"]
    assert len(page.images) == 2 * len(slides)  # a thumbnail and the deciding sub-image's heatmap per slide
    for src in page.images + page.links:
        assert not src.startswith(("http", "/")) and (out / src).is_file(), src  # relative, and there
    for picture in page.images:
        Image.open(out / picture).verify()  # loads as an image
    text = " ".join(" ".join(page.text).split())
    for row in slides.itertuples():
        assert row.slide_id in text and row.prediction in text
    risks = [int(r) for r in re.findall(r'data-risk="(\d+)"', (out / "index.html").read_text())]
    assert risks == sorted(risks, reverse=True)  # highest predicted risk first


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs it with apt where it can)")
def test_the_predictions_page_renders_in_headless_chromium_with_every_picture_loaded(smoke, tmp_path):
    ckpt, data_root = smoke
    out = tmp_path / "out"
    result = predict(str(ckpt), str(out), manifest=str(data_root / "manifest.csv"), split="test")
    (out / "thumbnails" / sorted(os.listdir(out / "thumbnails"))[0]).rename(out / "moved.jpg")  # one goes missing
    browser = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                              "--virtual-time-budget=10000", "--dump-dom", (out / "index.html").as_uri()],
                             capture_output=True, text=True, timeout=180)
    dom = browser.stdout
    assert "<body" in dom, browser.stderr[-2000:]
    loaded = re.findall(r'<img[^>]*data-loaded="(yes|no)"', dom)
    slides = result.predictions[result.predictions["level"] == "slide"]
    assert len(loaded) == 2 * len(slides)  # the page's script marked every picture after the browser loaded it
    assert loaded.count("no") == 1  # the moved thumbnail, and only it
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    for row in slides.itertuples():
        assert f"{row.slide_id} {row.prediction}" in text
