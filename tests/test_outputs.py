"""What `predict` writes, checked by value on a synthetic non-square sub-image: the GeoJSON polygons and
measurements, and the sub-image's table row.

`predict` end to end on slides with several sub-images (the highest-risk rule, `decided_by`, the GeoJSON
against the manifest boxes) is in test_training_wiring.py, which has a trained checkpoint.
"""

import numpy as np
import pytest

from attnwsi.data.grid import tile_boxes
from attnwsi.data.slides import SubImage
from attnwsi.inference.outputs import geojson_features, prediction_row
from attnwsi.inference.sub_image import SubImagePrediction
from attnwsi.models.explain import Explanation

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]


def rectangle(x0, y0, x1, y1) -> list[list[float]]:
    """A closed ring, clockwise in image coordinates from the top-left corner."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


@pytest.fixture
def prediction() -> SubImagePrediction:
    """A 600 x 260 px box at (1000, 400) on the slide, read at a quarter: 150 x 65 px, a 2 x 4 grid of 32 px."""
    box, image_size, grid = (1000, 400, 600, 260), (65, 150), (2, 4)
    maps = np.random.default_rng(0).dirichlet(np.ones(8), size=3).reshape(3, *grid)
    explanation = Explanation(np.array([0.1, 0.2, 0.6, 0.1]), maps, relevance=np.array([0.3, 2.0, -1.0]))
    sub_image = SubImage("slide_a_3", "slide_a", "/nowhere/slide_a.svs", box, 0.25, label="normal")
    return SubImagePrediction(sub_image, explanation, tile_boxes(box, image_size, grid, 32),
                              thumbnail=np.zeros((65, 150, 3), np.uint8), grid_region=(11, 0, 139, 64))


def test_the_sub_image_polygon_is_its_box_on_the_slide(prediction):
    annotation = geojson_features(prediction, CLASSES, top_filters=2)[0]
    assert annotation["properties"]["objectType"] == "annotation"
    assert annotation["properties"]["name"] == "slide_a_3"
    assert annotation["geometry"]["coordinates"] == [rectangle(1000, 400, 1600, 660)]
    assert annotation["properties"]["classification"] == {"name": "be_with_dysplasia"}
    assert annotation["properties"]["measurements"] == pytest.approx(
        {"p_normal": 0.1, "p_be_no_dysplasia": 0.2, "p_be_with_dysplasia": 0.6, "p_adenocarcinoma": 0.1})


def test_each_tile_polygon_is_its_square_on_the_slide_in_row_major_order(prediction):
    detections = geojson_features(prediction, CLASSES, top_filters=2)[1:]
    assert len(detections) == 8
    scale = 4.0  # 600 / 150 and 260 / 65
    left, top = (150 - 4 * 32) // 2, (65 - 2 * 32) // 2  # the grid is centred: 11 px, 0 px
    for t, feature in enumerate(detections):
        row, col = divmod(t, 4)
        x0, y0 = 1000 + (left + 32 * col) * scale, 400 + (top + 32 * row) * scale
        expected = rectangle(x0, y0, x0 + 32 * scale, y0 + 32 * scale)
        assert feature["geometry"]["coordinates"] == [expected], t
        assert feature["properties"]["objectType"] == "detection"


def test_tile_measurements_are_the_maps_at_their_tile_normalized_to_a_maximum_of_one(prediction):
    detections = geojson_features(prediction, CLASSES, top_filters=2)[1:]
    maps = prediction.explanation.attention_maps
    mean = maps.mean(0)
    for t, feature in enumerate(detections):
        row, col = divmod(t, 4)
        measured = feature["properties"]["measurements"]
        assert set(measured) == {"attention_mean", "attention_filter01", "attention_filter00"}  # top 2: 1, 0
        assert measured["attention_mean"] == pytest.approx(mean[row, col] / mean.max(), abs=5e-5)
        assert measured["attention_filter01"] == pytest.approx(maps[1, row, col] / maps[1].max(), abs=5e-5)
        assert measured["attention_filter00"] == pytest.approx(maps[0, row, col] / maps[0].max(), abs=5e-5)


def test_the_sub_image_row_holds_its_box_tiles_and_probabilities(prediction):
    row = prediction_row(prediction, CLASSES)
    assert (row["x"], row["y"], row["width"], row["height"]) == (1000, 400, 600, 260)
    assert row["n_tiles"] == 8 and row["prediction"] == "be_with_dysplasia" and row["label"] == "normal"
    assert row["level"] == "sub_image" and row["sub_image_id"] == "slide_a_3" and row["decided_by"] == ""
    assert [row[f"p_{c}"] for c in CLASSES] == pytest.approx([0.1, 0.2, 0.6, 0.1])
