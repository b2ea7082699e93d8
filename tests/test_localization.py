"""The localization score: is the highest-attention tile on a lesion? Constructed cases with known answers."""

import json

import numpy as np
import pytest
import torch

from attnwsi.data.annotations import Lesion
from attnwsi.data.slides import SubImage
from attnwsi.data.synthetic import lesions_to_geojson, write_pyramidal_tiff
from attnwsi.inference.localization import localization_score, localize
from attnwsi.models.classifier import AttentionClassifier

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]


def square_lesion(x0, y0, x1, y1) -> Lesion:
    return Lesion("adenocarcinoma", [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)])


def test_localize_hits_when_the_peak_tile_touches_a_lesion_and_gives_the_random_tile_baseline():
    # A 2 x 3 grid of 100 px tiles; the lesion touches tiles (0, 1) and (0, 2).
    boxes = np.array([[x, y, x + 100, y + 100] for y in (0, 100) for x in (0, 100, 200)], float)
    lesions = [square_lesion(150, 20, 260, 80)]
    on_lesion = np.zeros((2, 3))
    on_lesion[0, 2] = 1.0
    assert localize(on_lesion, boxes, lesions) == (True, pytest.approx(2 / 6))
    elsewhere = np.zeros((2, 3))
    elsewhere[1, 0] = 1.0
    assert localize(elsewhere, boxes, lesions) == (False, pytest.approx(2 / 6))


def dark_seeking_model() -> AttentionClassifier:
    """A model whose one attention filter looks at the darkest tile: feature 0 is a tile's darkness."""
    model = AttentionClassifier(CLASSES, tile_um=16, tile_px=16, num_filters=1, kernel_size=1).eval()

    def extract(tiles):
        features = torch.zeros(len(tiles), 512)
        features[:, 0] = 1 - tiles.float().mean(dim=(1, 2, 3)) / 255
        return features

    model.extract = extract
    with torch.no_grad():
        model.head.attention_conv.weight.zero_()
        model.head.attention_conv.weight[0, 0] = 100.0
    return model


@pytest.fixture
def slide_with_a_dark_lesion(tmp_path):
    """A 512 x 512 px slide (0.5 um/px) of pale tissue with one dark 60 x 60 px lesion at x 300, y 140."""
    image = np.full((512, 512, 3), (230, 170, 210), np.uint8)
    image[140:200, 300:360] = (60, 20, 90)
    write_pyramidal_tiff(tmp_path / "slide.tiff", image, mpp=0.5)
    return tmp_path / "slide.tiff"


def write_lesions(folder, slide_id, boxes) -> None:
    folder.mkdir(exist_ok=True)
    lesions = [(3, *box) for box in boxes]
    (folder / f"{slide_id}.geojson").write_text(json.dumps(lesions_to_geojson(lesions)))


def test_a_model_looking_at_the_dark_lesion_hits_it_and_misses_one_drawn_elsewhere(slide_with_a_dark_lesion, tmp_path):
    # 16 um tiles at 1 um/px: 32 level-0 px each, a 16 x 16 grid. The lesion's box touches 3 x 3 tiles.
    annotations = tmp_path / "annotations"
    write_lesions(annotations, "dark", [(300, 140, 360, 200)])
    write_lesions(annotations, "decoy", [(40, 400, 100, 460)])  # annotated where the image is pale
    write_lesions(annotations, "clean", [])
    sub_images = [SubImage(f"{slide_id}_0", slide_id, str(slide_with_a_dark_lesion), (0, 0, 512, 512), 0.5)
                  for slide_id in ("dark", "decoy", "clean")]
    result = localization_score(dark_seeking_model(), sub_images, annotations)
    assert result.n == 2  # "clean" has no lesion
    assert result.per_sub_image["dark_0"] == {"hit": True, "hit_filters": True,
                                              "lesion_tile_fraction": pytest.approx(9 / 256)}
    assert result.per_sub_image["decoy_0"]["hit"] is False
    assert result.hits == 1 and result.score == 0.5
    assert result.random_baseline == pytest.approx(np.mean([9 / 256, 9 / 256]))


def test_the_relevant_filters_map_finds_the_lesion_where_the_mean_map_is_drawn_to_glare(tmp_path):
    """Two filters: filter 0 looks at dark tiles (softly) and is the only one the classifier reads (for
    adenocarcinoma); filter 1 looks sharply at bright tiles and counts for nothing. The mean map peaks on a
    white patch (glare), the map of the most relevant filter on the lesion."""
    image = np.full((512, 512, 3), (230, 170, 210), np.uint8)
    image[140:200, 300:360] = (60, 20, 90)  # the lesion
    image[384:448, 32:96] = 255  # glare, not annotated
    write_pyramidal_tiff(tmp_path / "slide.tiff", image, mpp=0.5)
    write_lesions(tmp_path / "annotations", "glare", [(300, 140, 360, 200)])
    model = AttentionClassifier(CLASSES, tile_um=16, tile_px=16, num_filters=2, kernel_size=1).eval()

    def extract(tiles):
        features = torch.zeros(len(tiles), 512)
        brightness = tiles.float().mean(dim=(1, 2, 3)) / 255
        features[:, 0], features[:, 1] = 1 - brightness, brightness
        return features

    model.extract = extract
    with torch.no_grad():
        model.head.attention_conv.weight.zero_()
        model.head.attention_conv.weight[0, 0] = 5.0  # soft: filter 0 spreads its attention, most on dark tiles
        model.head.attention_conv.weight[1, 1] = 1000.0  # sharp: all of filter 1's on the brightest tile
        model.head.fc.weight.zero_()
        model.head.fc.weight[3, 0] = 10.0  # adenocarcinoma reads the darkness that filter 0 attends to
    sub_image = SubImage("glare_0", "glare", str(tmp_path / "slide.tiff"), (0, 0, 512, 512), 0.5)
    result = localization_score(model, [sub_image], tmp_path / "annotations", top_filters=1)
    assert result.per_sub_image["glare_0"]["hit"] is False and result.score == 0.0
    assert result.per_sub_image["glare_0"]["hit_filters"] is True and result.score_filters == 1.0
    assert result.top_filters == 1
