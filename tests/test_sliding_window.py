"""The sliding-window baseline: crops from lesion boxes, windows over tissue, aggregation rules, threshold
search, and the whole pipeline on the smoke haystack."""

import json

import hydra
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from test_train import check_results_schema

from attnwsi.data.crops import CropDataset, crop_sources, overlaps, sub_image_windows, tissue_fraction
from attnwsi.data.manifest import sub_images_of
from attnwsi.data.slides import SubImage, open_slide
from attnwsi.data.synthetic import lesions_to_geojson, write_pyramidal_tiff
from attnwsi.inference.windows import aggregate, apply_rule, search_aggregation
from attnwsi.models.crop_classifier import CropClassifier
from attnwsi.training.sliding_window import train_sliding_window

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]
PINK, PURPLE = (230, 150, 200), (120, 60, 160)
# (class index, x0, y0, x1, y1) in level-0 px; the be_with_dysplasia box is smaller than a crop (40 px)
LESIONS = [(1, 40, 40, 160, 160), (3, 180, 220, 280, 320), (2, 200, 60, 220, 80)]


@pytest.fixture
def slide_rows(tmp_path) -> list[SubImage]:
    """One 600 x 400 px slide at 0.5 um/px: tissue on the left 300 px, glass on the right, three lesions."""
    image = np.full((400, 600, 3), 250, np.uint8)
    image[:, :300] = PINK
    for _, x0, y0, x1, y1 in LESIONS:
        image[y0:y1, x0:x1] = PURPLE
    (tmp_path / "slides").mkdir()
    (tmp_path / "annotations").mkdir()
    write_pyramidal_tiff(tmp_path / "slides" / "s1.tiff", image, mpp=0.5)
    (tmp_path / "annotations" / "s1.geojson").write_text(json.dumps(lesions_to_geojson(LESIONS, CLASSES)))
    row = dict(sub_image_id="s1_0", slide_id="s1", slide_path=str(tmp_path / "slides" / "s1.tiff"),
               patient_id="p1", x=0, y=0, width=600, height=400, mpp=0.5, label="adenocarcinoma",
               split="train")
    return sub_images_of(pd.DataFrame([row]))


def boxes_of(cls: str) -> list[tuple[int, int, int, int]]:
    return [(x0, y0, x1 - x0, y1 - y0) for c, x0, y0, x1, y1 in LESIONS if CLASSES[c] == cls]


def inside(crop, box) -> bool:
    return box[0] <= crop[0] and box[1] <= crop[1] and crop[0] + crop[2] <= box[0] + box[2] \
        and crop[1] + crop[3] <= box[1] + box[3]


def test_lesion_crops_lie_in_their_class_boxes_and_normal_crops_outside_all(slide_rows, tmp_path):
    sources = crop_sources(slide_rows, CLASSES, tmp_path / "annotations")
    dataset = CropDataset(sources, CLASSES, crop_um=20, crop_px=16, length=8, min_tissue=0.5)
    generator = torch.Generator().manual_seed(0)
    all_boxes = [box for cls in CLASSES[1:] for box in boxes_of(cls)]
    for _ in range(30):
        for cls in ("be_no_dysplasia", "adenocarcinoma"):
            image, crop, _ = dataset.sample(cls, generator)
            assert image.shape == (16, 16, 3) and crop[2:] == (40, 40)
            assert any(inside(crop, box) for box in boxes_of(cls))
        _, crop, _ = dataset.sample("be_with_dysplasia", generator)  # a box smaller than the crop ...
        assert inside(boxes_of("be_with_dysplasia")[0], crop)  # ... lies inside the crop
        image, crop, _ = dataset.sample("normal", generator)
        assert not any(overlaps(crop, box) for box in all_boxes)
        assert tissue_fraction(image) >= 0.5


def test_crops_come_in_balanced_class_order_as_uint8(slide_rows, tmp_path):
    sources = crop_sources(slide_rows, CLASSES, tmp_path / "annotations")
    dataset = CropDataset(sources, CLASSES, crop_um=20, crop_px=16, length=8, min_tissue=0.5, seed=0)
    items = [dataset[i] for i in range(8)]
    assert [label for _, label in items] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert all(crop.shape == (3, 16, 16) and crop.dtype == torch.uint8 for crop, _ in items)
    assert torch.equal(dataset[5][0], items[5][0])  # with a seed, item i is always the same crop


def test_windows_cover_the_tissue_on_the_stride_grid_and_skip_glass(slide_rows):
    row = slide_rows[0]
    slide = open_slide(row.slide_path)
    pieces = list(sub_image_windows(slide, row, crop_um=20, crop_px=16, stride_um=10, min_tissue=0.5))
    slide.close()
    corners = np.concatenate([xy for xy, _ in pieces])
    windows = torch.cat([w for _, w in pieces])
    assert windows.shape[1:] == (3, 16, 16) and len(windows) == len(corners)
    assert set(corners[:, 1]) == set(range(0, 361, 20))  # 40 px windows every 20 px, inside the 400 px box
    assert set(corners[:, 0]) >= set(range(0, 261, 20))  # every window that is all tissue ...
    assert corners[:, 0].max() <= 280  # ... and none that is mostly glass (tissue ends at x = 300)


def window_probs(*windows: tuple[int, float, int]) -> np.ndarray:
    """(top class, its probability, how many windows) -> probabilities [N, 4], the rest spread evenly."""
    rows = []
    for cls, p, n in windows:
        row = np.full(4, (1 - p) / 3)
        row[cls] = p
        rows += [row] * n
    return np.array(rows)


def test_deepslide_and_highest_risk_rules_on_hand_made_windows():
    probs = window_probs((0, 0.95, 5), (3, 0.8, 2), (1, 0.6, 1))
    at = dict.fromkeys(CLASSES, 0.5)
    assert aggregate(probs, CLASSES, "deepslide", at)[0] == 0  # 5 of 8 confident windows are normal
    label, fractions = aggregate(probs, CLASSES, "deepslide", {**at, "normal": 0.96})
    assert label == 3 and fractions == pytest.approx([0, 1 / 3, 0, 2 / 3])
    assert aggregate(probs, CLASSES, "highest_risk", at, min_windows=1)[0] == 3
    assert aggregate(probs, CLASSES, "highest_risk", at, min_windows=2)[0] == 3
    assert aggregate(probs, CLASSES, "highest_risk", at, min_windows=3)[0] == 0  # no lesion class has 3
    assert aggregate(probs, CLASSES, "highest_risk", {**at, "adenocarcinoma": 0.85}, min_windows=1)[0] == 1
    label, fractions = aggregate(probs, CLASSES, "deepslide", dict.fromkeys(CLASSES, 0.99))
    assert label == 0 and not fractions.any()  # nothing confident: normal
    assert apply_rule(np.array([0, 2, 0, 2]), "deepslide") == 1  # a tie goes to the first tied class


def test_threshold_search_finds_the_only_thresholds_that_separate_the_classes():
    """Every image holds 9 noise windows of each lesion class just below the right threshold (0.35, 0.85,
    0.65); an image of a lesion class also holds 3 windows of its class just above it (0.45, 0.95, 0.75).
    Normal windows (0.95) outnumber everything and no min_windows tells 12 windows from 9, so only the
    highest-risk rule with be_no_dysplasia 0.4, be_with_dysplasia 0.9, adenocarcinoma 0.7 and at most 3
    windows labels every image right."""
    noise = [(1, 0.35, 9), (2, 0.85, 9), (3, 0.65, 9), (0, 0.95, 60)]
    true = {1: (1, 0.45, 3), 2: (2, 0.95, 3), 3: (3, 0.75, 3)}
    images, labels = [], []
    for cls in (0, 1, 2, 3, 0, 1, 2, 3):
        images.append(window_probs(*noise, *([true[cls]] if cls else [])))
        labels.append(cls)
    choice = search_aggregation(images, np.array(labels), CLASSES, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                [1, 2, 4, 8])
    assert choice["rule"] == "highest_risk" and choice["val_mean_f1"] == pytest.approx(1.0)
    assert choice["thresholds"] == {"normal": 0.3, "be_no_dysplasia": 0.4, "be_with_dysplasia": 0.9,
                                    "adenocarcinoma": 0.7}
    assert choice["min_windows"] == 1


def test_crop_classifier_is_a_he_initialized_resnet18_on_uint8_crops():
    model = CropClassifier(CLASSES, crop_um=64, crop_px=32)
    conv = model.trunk[3][0].conv1  # stem, layer1, layer2, layer3: 128 -> 256 channels, 3 x 3: fan_out = 256 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    assert model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 4)


def test_smoke_pipeline_writes_results_in_the_attention_models_schema(tmp_path, smoke_cache):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        overrides = ["+experiment=haystack_sliding_window", "debug=smoke", f"paths.root_dir={REPO}",
                     f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={smoke_cache}"]
        cfg = compose("train", overrides=overrides)
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 4
    results = train_sliding_window(cfg)
    out = tmp_path / "run"
    assert json.loads((out / "results.json").read_text()) == results
    check_results_schema(results, CLASSES)
    assert results["model"] == "sliding_window"
    predictions = pd.read_csv(out / "predictions_test.csv")
    assert list(predictions.columns) == ["sub_image_id", "label", "prediction", *[f"p_{c}" for c in CLASSES]]
    assert len(predictions) == results["test"]["n"]
    assert set(predictions.filter(like="p_").sum(1).round(6)) <= {0.0, 1.0}
    aggregation = json.loads((out / "aggregation.json").read_text())
    assert aggregation["rule"] in ("deepslide", "highest_risk")
    assert set(aggregation["thresholds"]) == set(CLASSES)
    windows = np.load(out / "windows" / "test" / f"{predictions['sub_image_id'][0]}.npz")
    assert windows["corners"].shape[1] == 2 and windows["probs"].shape[1] == len(CLASSES)


def test_be_sliding_window_is_the_papers_section_4_2_setup():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=be_sliding_window", "data.root=/nowhere",
                                          "classes=[normal,be_no_dysplasia,be_with_dysplasia,adenocarcinoma]"])
    assert cfg.pipeline == "attnwsi.training.sliding_window.train_sliding_window" and cfg.trainer.max_epochs == 100
    assert cfg.data.crop_px == 224 and cfg.data.crop_um / cfg.data.crop_px == 0.5  # 224 px crops at 20x
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc"
    model = hydra.utils.instantiate(cfg.model)
    assert isinstance(model, CropClassifier) and not model.hparams.pretrained  # He initialization
    assert model.hparams.weight_decay > 0 and model.hparams.lr_decay < 1
