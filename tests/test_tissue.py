"""Tissue masks, sub-image boxes, tissue pixel statistics, and reading real slides at an mpp.

The real slide is CMU-1-Small-Region (OpenSlide test data, CC0) in ../shared/data/wsi/: the Aperio SVS
(one level) and derived/CMU-1-Small-Region.pyramid.tiff (the same pixels as a 5-level tiled TIFF).
"""

import numpy as np
import pytest
from PIL import Image

from attnwsi.data.slides import MPP_TOLERANCE, SubImage, open_slide, read_region, slide_mpp
from attnwsi.data.synthetic import write_pyramidal_tiff
from attnwsi.data.tissue import (
    CLASS_COLORS,
    TissueParams,
    qa_picture,
    sub_image_boxes,
    tissue_mask,
    tissue_pixel_stats,
)

PINK, WHITE = (200, 110, 160), (245, 245, 245)
SVS = "wsi/CMU-1-Small-Region.svs"
PYRAMID = "wsi/derived/CMU-1-Small-Region.pyramid.tiff"


def scene(scale: int = 1, noise: int = 4) -> np.ndarray:
    """Glass with two tissue pieces (one holding a small hole), and a speck; 1 px = 8 / scale um."""
    rng = np.random.default_rng(0)
    image = np.full((100 * scale, 160 * scale, 3), WHITE, np.uint8)
    image[10 * scale : 90 * scale, 10 * scale : 60 * scale] = PINK  # piece 1: 400 x 640 um
    image[40 * scale : 43 * scale, 30 * scale : 33 * scale] = WHITE  # a 24 x 24 um tear inside it
    image[20 * scale : 70 * scale, 90 * scale : 150 * scale] = PINK  # piece 2: 480 x 400 um
    image[95 * scale : 97 * scale, 70 * scale : 72 * scale] = PINK  # a 16 x 16 um speck
    return np.clip(image + rng.integers(-noise, noise + 1, image.shape), 0, 255).astype(np.uint8)


def test_mask_finds_the_pieces_fills_small_holes_and_drops_specks():
    mask = tissue_mask(scene(), mpp=8.0)
    assert mask[11:89, 11:59].all()  # the tear is filled (the median filter rounds the corners)
    assert mask[21:69, 91:149].all()
    assert not mask[95:97, 70:72].any()  # the speck is dropped
    assert mask.sum() == pytest.approx(80 * 50 + 50 * 60, abs=8)  # nothing outside the pieces is tissue


def test_big_holes_stay_background():
    image = np.full((100, 100, 3), PINK, np.uint8)
    image[30:70, 30:70] = WHITE  # 320 x 320 um, more than max_hole_um2
    mask = tissue_mask(image, mpp=8.0)
    assert not mask[32:68, 32:68].any() and mask[:30].all()  # (closing rounds the hole's corners)


def test_glass_only_has_no_tissue_and_tissue_only_is_all_tissue():
    noise = np.random.default_rng(0).integers(0, 6, (80, 80, 3), np.uint8)
    glass = np.full((80, 80, 3), WHITE, np.uint8) + noise
    assert not tissue_mask(glass, mpp=8.0).any()
    pale = np.full((80, 80, 3), (235, 190, 215), np.uint8)  # saturation 0.19: pale, but tissue
    pale[::7] = (150, 60, 130)  # darker streaks make Otsu's threshold fall within the tissue
    assert tissue_mask(pale, mpp=8.0).all()


def test_boxes_hold_each_piece_with_a_margin_in_level0_pixels():
    # The scene at 8 um/px stands for a slide of 1600 x 1000 px at 0.8 um/px (10x finer).
    boxes = sub_image_boxes(tissue_mask(scene(), mpp=8.0), (1600, 1000), level0_mpp=0.8,
                            params=TissueParams(margin_um=16.0))
    margin = 20  # 16 um at 0.8 um/px
    assert boxes == [(100 - margin, 100 - margin, 500 + 2 * margin, 800 + 2 * margin),
                     (900 - margin, 200 - margin, 600 + 2 * margin, 500 + 2 * margin)]


def test_boxes_are_clipped_to_the_slide_and_resolution_independent():
    coarse = sub_image_boxes(tissue_mask(scene(1), mpp=8.0), (1600, 1000), 0.8, TissueParams(margin_um=200))
    fine = sub_image_boxes(tissue_mask(scene(2), mpp=4.0), (1600, 1000), 0.8, TissueParams(margin_um=200))
    assert coarse == fine
    for x, y, width, height in coarse:
        assert x >= 0 and y >= 0 and x + width <= 1600 and y + height <= 1000
    assert coarse[0][:2] == (0, 0)  # 250 px of margin reach past the slide's corner


def test_large_pieces_are_split_into_a_grid_of_sub_images_with_tissue():
    image = np.full((100, 100, 3), WHITE, np.uint8)
    image[10:90, 10:30] = PINK  # an L-shaped piece: 640 um tall ...
    image[70:90, 10:90] = PINK  # ... and 640 um wide
    params = TissueParams(margin_um=0, max_sub_image_um=330)
    cells = sub_image_boxes(tissue_mask(image, mpp=8.0), (1000, 1000), level0_mpp=0.8, params=params)
    assert len(cells) == 3  # a 2 x 2 grid of the 800 x 800 px box, less the empty top-right cell
    assert all(w * 0.8 <= 330 and h * 0.8 <= 330 for _, _, w, h in cells)
    covered = np.zeros((1000, 1000), bool)
    for x, y, w, h in cells:
        covered[y : y + h, x : x + w] = True
    assert covered[100:900, 100:300].all() and covered[700:900, 100:900].all()
    assert not covered[100:500, 500:900].any()


def test_pixel_stats_count_tissue_only(tmp_path):
    image = np.full((600, 600, 3), 250, np.uint8)
    image[100:500, 100:500] = PINK
    write_pyramidal_tiff(tmp_path / "slide.tiff", image, mpp=1.0)
    sub_images = [SubImage("slide_0", "slide", str(tmp_path / "slide.tiff"), (0, 0, 600, 600), 1.0)]
    stats = tissue_pixel_stats(sub_images, mpp=2.0)
    np.testing.assert_allclose(stats["mean"], np.array(PINK) / 255, atol=0.02)  # the glass is left out
    assert max(stats["std"]) < 0.05
    assert stats["n_pixels"] == pytest.approx(200 * 200, rel=0.05)


def test_qa_picture_outlines_the_tissue_and_draws_the_boxes():
    overview = scene(2)
    mask = tissue_mask(scene(), mpp=8.0)
    picture = np.asarray(qa_picture(overview, mask, (1600, 1000), ["normal", "tumour"],
                                    sub_images=[((100, 100, 500, 800), "normal")],
                                    lesions=[((1000, 300, 100, 100), "tumour")]))
    assert picture.shape == overview.shape
    assert (picture == (0, 90, 255)).all(-1).sum() > 100  # the tissue outline
    assert (picture[20, 40:100] == CLASS_COLORS[0]).all()  # the sub-image box's top edge
    assert (picture[60, 202:218] == CLASS_COLORS[1]).all()  # the lesion box's top edge (1 px = 5 level-0 px)


@pytest.mark.parametrize("tolerance", [0, MPP_TOLERANCE])
@pytest.mark.parametrize("mpp", [0.5, 2.0])
def test_svs_and_pyramidal_tiff_read_the_same_region_at_an_mpp(shared_data, mpp, tolerance):
    box = (600, 900, 1000, 800)  # level-0 px, inside the tissue
    regions = []
    for name in (SVS, PYRAMID):
        slide = open_slide(shared_data / name)
        level0_mpp = slide_mpp(slide, name)
        assert level0_mpp == pytest.approx(0.499)
        regions.append(read_region(slide, box, level0_mpp, mpp, tolerance))
        slide.close()
    svs, pyramid = regions
    # within MPP_TOLERANCE, level 0 of both (0.499 um/px) and the pyramid's level 2 (1.997 um/px) are read
    # as stored, with their own pixel counts; otherwise everything is resampled to exactly `mpp`
    exact = (round(box[3] * 0.499 / mpp), round(box[2] * 0.499 / mpp), 3)
    stored = (box[3] // round(mpp / 0.499), box[2] // round(mpp / 0.499), 3)
    expected = stored if tolerance else exact
    assert svs.shape == pyramid.shape == expected
    same_size = np.asarray(Image.fromarray(pyramid).resize(svs.shape[1::-1]))
    correlation = np.corrcoef(svs.astype(float).ravel(), same_size.astype(float).ravel())[0, 1]
    # a shift by one pixel of the coarser level gives 0.82-0.88 and 21-26 at 2 um/px; without a shift the
    # differences are the pyramid converter's filter against our area average, and JPEG
    assert correlation > 0.97
    assert np.abs(svs.astype(float) - same_size).mean() < 10  # in 0..255 units


def test_the_real_slide_gives_one_piece_and_drops_the_dust(shared_data):
    slide = open_slide(shared_data / SVS)
    width, height = slide.dimensions
    overview = read_region(slide, (0, 0, width, height), 0.499, 4.0)
    mask = tissue_mask(overview, mpp=4.0)
    assert 0.25 < mask.mean() < 0.6  # the tissue strip, not the glass around it
    boxes = sub_image_boxes(mask, (width, height), 0.499)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert x + w < 2050  # a speck of dust on the glass at about x = 2090 (level 0) is not a piece
