"""The synthetic haystack: real pyramidal TIFFs, small lesions, the highest-risk label rule, determinism."""

import json

import numpy as np
import pandas as pd
import pytest
import tiffslide

from attnwsi.data.synthetic import CLASSES, HaystackSpec, generate_haystack, render_slide

SMALL = dict(slide_px=(700, 800), lesion_px=60)


@pytest.fixture(scope="module")
def haystack(tmp_path_factory):
    out = tmp_path_factory.mktemp("haystack")
    return generate_haystack(out, HaystackSpec(n_slides=12, seed=3, **SMALL))


def test_slides_are_pyramidal_tiffs_with_a_pixel_size(haystack):
    slide = tiffslide.TiffSlide(haystack / "slides" / "haystack_0000.tiff")
    assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
    assert slide.level_count >= 2
    assert slide.level_downsamples[1] == pytest.approx(2, rel=0.01)
    region = slide.read_region((0, 0), 0, (64, 64), as_array=True)
    assert region.shape == (64, 64, 3) and region.dtype == np.uint8
    assert region.min() > 200  # the corner is glass: white background around the tissue


def test_labels_follow_the_highest_risk_lesion_and_geojson_is_quapath_shaped(haystack):
    labels = pd.read_csv(haystack / "labels.csv")
    assert list(labels.columns) == ["slide_id", "patient_id", "label"]
    assert len(labels) == 12
    for row in labels.itertuples():
        geo = json.loads((haystack / "annotations" / f"{row.slide_id}.geojson").read_text())
        assert geo["type"] == "FeatureCollection"
        names = [f["properties"]["classification"]["name"] for f in geo["features"]]
        assert all(f["geometry"]["type"] == "Polygon" for f in geo["features"])
        expected = max(names, key=CLASSES.index) if names else "normal"
        assert row.label == expected


def test_lesions_are_small_and_inside_the_slide():
    spec = HaystackSpec(**SMALL)
    for label in (1, 2, 3):
        image, lesions = render_slide(label, np.random.default_rng(label), spec)
        tissue = (image.max(-1).astype(int) - image.min(-1) > 25).sum()
        area = sum((x1 - x0) * (y1 - y0) for _, x0, y0, x1, y1 in lesions)
        assert lesions and max(c for c, *_ in lesions) == label
        assert area <= 0.0101 * tissue
        for _, x0, y0, x1, y1 in lesions:
            assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]


def test_lesion_classes_look_alike_at_low_resolution():
    """Same stain, same nuclear area: an 8x-downsampled lesion's mean colour does not tell its class."""
    spec = HaystackSpec(slide_px=(1200, 1200), decoy_prob=0.0)
    means = {}
    for label in (1, 2, 3):
        colours = []
        for seed in range(4):
            image, lesions = render_slide(label, np.random.default_rng(100 + seed), spec)
            _, x0, y0, x1, y1 = next(les for les in lesions if les[0] == label)
            colours.append(image[y0:y1, x0:x1].reshape(-1, 3).mean(0))
        means[label] = np.mean(colours, 0)
    spread = np.ptp(np.stack(list(means.values())), axis=0)
    assert spread.max() < 12, means  # in 0..255 units, per channel


def test_the_same_seed_gives_the_same_slides(tmp_path):
    a = generate_haystack(tmp_path / "a", HaystackSpec(n_slides=3, seed=5, **SMALL))
    b = generate_haystack(tmp_path / "b", HaystackSpec(n_slides=3, seed=5, **SMALL))
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()
    for i in range(3):
        name = f"slides/haystack_{i:04d}.tiff"
        ra = tiffslide.TiffSlide(a / name).read_region((0, 0), 0, (300, 300), as_array=True)
        rb = tiffslide.TiffSlide(b / name).read_region((0, 0), 0, (300, 300), as_array=True)
        np.testing.assert_array_equal(ra, rb)


def test_class_balance_follows_table1():
    from attnwsi.data.synthetic import _balanced_labels

    labels = _balanced_labels(320, [0.472, 0.244, 0.114, 0.171], np.random.default_rng(0))
    np.testing.assert_array_equal(np.bincount(labels), [151, 78, 36, 55])
