"""Attention overlays (the paper's Figure 5), filter relevance, and the callbacks' choice of examples."""

import matplotlib
import numpy as np
import pytest
import torch

from attnwsi.data.grid import image_to_tiles
from attnwsi.models.attention import GridAttention
from attnwsi.models.explain import Explanation, filter_relevance
from attnwsi.training.callbacks import pick_examples
from attnwsi.viz import (
    attention_panel,
    confusion_matrix_image,
    explanation_panels,
    heatmap_picture,
    normalize_map,
    overlay,
    tiles_to_image,
)


def blend(grey: float, value: float, colormap: str = "inferno", alpha: float = 0.8) -> np.ndarray:
    """A tile's colour: opacity alpha x attention, so low attention leaves the tissue visible."""
    opacity = alpha * value
    return np.round((1 - opacity) * grey + opacity * 255.0 * np.array(matplotlib.colormaps[colormap](value)[:3]))


def test_the_overlay_peaks_exactly_on_the_tile_where_the_map_peaks():
    grey = 200.0
    image = np.full((70, 110, 3), grey, np.uint8)  # neither side a multiple of the grid
    attention = np.random.default_rng(0).uniform(0.0, 0.5, (3, 5))
    attention[1, 3] = 2.0
    picture = overlay(image, normalize_map(attention))
    peak = np.all(picture == blend(grey, 1.0), axis=-1)
    # The pixels whose centre lies in tile (1, 3) of a 3 x 5 grid over 70 x 110 px, and only those.
    rows = np.floor((np.arange(70) + 0.5) * 3 / 70) == 1
    cols = np.floor((np.arange(110) + 0.5) * 5 / 110) == 3
    np.testing.assert_array_equal(peak, rows[:, None] & cols[None, :])
    assert picture.shape == image.shape and picture.dtype == np.uint8


def test_an_overlay_on_a_region_leaves_the_rest_of_the_image_alone():
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    attention = np.zeros((2, 2))
    attention[1, 0] = 1.0
    picture = overlay(image, attention, region=(10, 5, 50, 35), alpha=1.0)
    np.testing.assert_array_equal(picture[:5], image[:5])
    np.testing.assert_array_equal(picture[:, 50:], image[:, 50:])
    np.testing.assert_array_equal(picture[25, 15], blend(0, 1.0, alpha=1.0))  # in tile (1, 0) of the region
    np.testing.assert_array_equal(picture[10, 45], image[10, 45])  # no attention: the tissue as it is


def test_tiles_go_back_into_the_image_they_were_cut_from():
    image = np.random.default_rng(2).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    tiles, grid = image_to_tiles(image, 32)
    assert grid == (2, 3)
    top, left = (70 - 64) // 2, (100 - 96) // 2
    np.testing.assert_array_equal(tiles_to_image(tiles, grid), image[top : top + 64, left : left + 96])


def test_filter_relevance_is_each_filters_exact_share_of_the_logit_above_the_mean():
    torch.manual_seed(0)
    head = GridAttention(num_classes=4, in_channels=8, num_filters=5).eval()
    feature_map = torch.randn(8, 3, 4)
    with torch.no_grad():
        logits, maps = head(feature_map[None])
        for target in range(4):
            relevance = filter_relevance(head, feature_map, maps[0], target)
            bias = head.fc.bias[target] - head.fc.bias.mean()
            assert relevance.shape == (5,)
            torch.testing.assert_close(relevance.sum() + bias, logits[0, target] - logits[0].mean())


def test_panels_show_the_image_the_mean_map_and_the_most_relevant_filters():
    maps = np.random.default_rng(3).dirichlet(np.ones(6), size=4).reshape(4, 2, 3)
    explanation = Explanation(np.array([0.1, 0.7, 0.2]), maps, relevance=np.array([0.5, -1.0, 2.0, 0.1]))
    assert explanation.prediction == 1 and explanation.top_filters(2) == [2, 0]
    np.testing.assert_allclose(explanation.mean_map.sum(), 1.0)
    image = np.full((40, 60, 3), 128, np.uint8)
    panels = explanation_panels(image, explanation, top_filters=2)
    assert [caption.split(" (")[0] for caption, _ in panels] == ["image", "mean attention", "filter 2", "filter 0"]
    picture = attention_panel(panels, "a title")
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[1] > picture.shape[0]


def cells_of(picture: np.ndarray, colour) -> np.ndarray:
    """Pixels [y, x] of one colour (a Blues shade) in the picture."""
    return np.argwhere(np.all(np.abs(picture.astype(int) - colour) <= 2, axis=-1))


def test_the_confusion_matrix_picture_has_true_classes_as_rows_and_predictions_as_columns(monkeypatch):
    written = []
    original_text = matplotlib.axes.Axes.text

    def text(self, x, y, s, *args, **kwargs):
        written.append((x, y, s))
        return original_text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", text)
    matrix = np.array([[0, 0, 9], [0, 0, 0], [0, 0, 0]])  # 9 images of class 0 predicted as class 2
    picture = confusion_matrix_image(matrix, ["a", "b", "c"], "val")
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    # the counts: each at (column = predicted, row = true)
    assert sorted(written) == sorted((p, t, str(matrix[t, p])) for t in range(3) for p in range(3))
    darkest = np.round(255 * np.array(matplotlib.colormaps["Blues"](1.0)[:3]))
    lightest = np.round(255 * np.array(matplotlib.colormaps["Blues"](0.0)[:3]))
    dark, light = cells_of(picture, darkest), cells_of(picture, lightest)
    assert len(dark) > 100 and len(light) > 8 * len(dark) * 0.8  # one dark cell of nine
    top, left = np.minimum(dark.min(0), light.min(0))
    bottom, right = np.maximum(dark.max(0), light.max(0))
    y, x = dark.mean(0)  # the dark cell is the top-right one: row 0 (true a), column 2 (predicted c)
    assert top <= y < top + (bottom - top) / 3 and left + 2 * (right - left) / 3 <= x <= right


@pytest.mark.parametrize("per_class, expected", [(1, [1, 0, 3]), (2, [1, 4, 0, 2, 3])])
def test_examples_are_the_first_of_each_class_in_data_set_order(per_class, expected):
    labels = ["b", "a", "b", "c", "a"]
    assert pick_examples(labels, ["a", "b", "c", "d"], per_class) == expected  # "d" has none


def test_a_heatmap_shows_the_image_and_its_overlay_side_by_side_with_a_colour_bar_and_the_lesion():
    image = np.full((120, 160, 3), 230, np.uint8)
    attention = np.zeros((3, 4))
    attention[1, 2] = 1.0
    outline = np.array([[85.0, 45.0], [115.0, 45.0], [115.0, 75.0], [85.0, 75.0]])
    plain = heatmap_picture(image, attention, (0, 0, 160, 120), "title")
    with_lesion = heatmap_picture(image, attention, (0, 0, 160, 120), "title", [outline])
    height, width = plain.shape[:2]
    assert width > 2 * 160 and height >= 120  # two panels at the image's own resolution, and a colour bar
    peak = 0.2 * 230 + 0.8 * np.array(matplotlib.colormaps["inferno"](1.0)[:3]) * 255  # the blended peak tile

    def near_peak(picture):
        return np.abs(picture.astype(float) - peak).sum(-1) < 30

    def cyan(picture):
        return (picture[..., 0] < 80) & (picture[..., 1] > 180) & (picture[..., 2] > 200)

    half = width // 2
    assert near_peak(plain[:, half:]).sum() > 500 and not near_peak(plain[:, :half]).any()  # overlay on the right
    assert cyan(with_lesion[:, :half]).any() and cyan(with_lesion[:, half:]).any() and not cyan(plain).any()
