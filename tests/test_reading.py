"""Reading a region at an mpp: tile decoding straight from the file, resampling at a fractional box, and
reading a stored level as it is when its pixel size is close enough.

The real slide is CMU-1-Small-Region (OpenSlide test data, CC0) in ../shared/data/wsi/: the Aperio SVS
(one level, 240-px JPEG tiles) and derived/CMU-1-Small-Region.pyramid.tiff (5 levels, 256-px YCbCr JPEG tiles).
"""

import math

import numpy as np
import pytest
import tiffslide

from attnwsi.data.grid import image_to_tiles
from attnwsi.data.slides import MPP_TOLERANCE, open_slide, read_level, read_region, resample
from attnwsi.data.synthetic import write_pyramidal_tiff

SVS = "wsi/CMU-1-Small-Region.svs"
PYRAMID = "wsi/derived/CMU-1-Small-Region.pyramid.tiff"


@pytest.mark.parametrize("name", [SVS, PYRAMID])
@pytest.mark.parametrize("level", [0, 1])
def test_read_level_decodes_the_same_pixels_as_tiffslide(shared_data, name, level):
    slide = open_slide(shared_data / name)
    if level >= slide.level_count:
        pytest.skip("one level only")
    width, height = slide.level_dimensions[level]
    downsample = slide.level_downsamples[level]
    # inside, across tile borders, and hanging over the right and bottom edges
    for x, y, w, h in [(10, 20, 300, 260), (239, 255, 3, 2), (width - 50, height - 30, 80, 70)]:
        ours = read_level(slide, level, x, y, w, h)
        theirs = slide.read_region((math.ceil(x * downsample), math.ceil(y * downsample)), level, (w, h), as_array=True)
        inside = (slice(0, min(h, height - y)), slice(0, min(w, width - x)))
        assert ours.shape == (h, w, 3) and ours.dtype == np.uint8 and ours.flags.c_contiguous
        np.testing.assert_array_equal(ours[inside], theirs[..., :3][inside])
        beyond = np.ones((h, w), bool)
        beyond[inside] = False
        assert (ours[beyond] == 255).all()  # white glass beyond the edges (tiffslide pads black)
    slide.close()


def test_read_level_reads_untiled_tiffs_through_tiffslide(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), np.uint8)
    path = tmp_path / "strips.tiff"
    import tifffile
    tifffile.imwrite(path, image, photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    slide = tiffslide.TiffSlide(path)
    np.testing.assert_array_equal(read_level(slide, 0, 5, 7, 40, 30), image[7:37, 5:45])


def test_resample_puts_every_pixel_within_one_pixel_of_its_exact_place():
    # a linear ramp stays linear under block averaging and bilinear interpolation, so each output value
    # tells where it was sampled: exactly, output pixel u of W input px over D output px lies at (u + 0.5) W / D - 0.5
    for width, out_width in [(200, 200), (200, 181), (200, 91), (203, 50), (200, 47), (100, 230)]:
        ramp = np.tile(np.arange(width, dtype=np.float32)[None, :, None], (40, 1, 3))
        out = resample(ramp, (out_width, 10))
        assert out.shape == (10, out_width, 3)
        exact = (np.arange(out_width) + 0.5) * width / out_width - 0.5
        inside = (exact >= 0) & (exact <= width - 1)  # where the edges repeat outwards
        error = np.abs(out[5, :, 0] - exact)[inside] / (width / out_width)  # in output pixels
        assert error.max() <= 1.0, (width, out_width)


def test_a_level_within_the_tolerance_is_read_as_stored_and_others_are_resampled(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), np.uint8)
    write_pyramidal_tiff(tmp_path / "s.tiff", image, mpp=0.5)
    slide = open_slide(tmp_path / "s.tiff")
    box = (40, 64, 256, 128)
    near = 0.5 * (1 + MPP_TOLERANCE / 2)
    stored = read_region(slide, box, 0.5, near)
    assert stored.shape == (128, 256, 3)  # the level's pixels, not round(256 * 0.5 / near) = 253
    np.testing.assert_array_equal(stored, read_level(slide, 0, 40, 64, 256, 128))
    exact = read_region(slide, box, 0.5, near, tolerance=0)
    assert exact.shape == (127, 253, 3)
    far = read_region(slide, box, 0.5, 0.5 * (1 + 2 * MPP_TOLERANCE))
    assert far.shape == (123, 246, 3)
    # a coarser level within the tolerance: level 1 (1 um/px) as stored, box snapped to its pixel grid
    np.testing.assert_array_equal(read_region(slide, box, 0.5, 1.0), read_level(slide, 1, 20, 32, 128, 64))
    # at a level's exact pixel size the pixel count follows from the box, wherever the box starts
    assert read_region(slide, (3, 5, 450, 226), 0.5, 1.0, tolerance=0).shape == (113, 225, 3)
    slide.close()


def test_tiles_are_one_contiguous_writeable_copy_whatever_the_grid():
    for shape in [(64, 200, 3), (200, 64, 3), (64, 64, 3), (130, 200, 3)]:
        image = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
        tiles, grid = image_to_tiles(image, 64)
        assert tiles.is_contiguous() and tiles.numpy().flags.writeable and not np.shares_memory(tiles.numpy(), image)
        top, left = (shape[0] - grid[0] * 64) // 2, (shape[1] - grid[1] * 64) // 2
        np.testing.assert_array_equal(tiles[-1].permute(1, 2, 0).numpy(),
                                      image[top + (grid[0] - 1) * 64:top + grid[0] * 64,
                                            left + (grid[1] - 1) * 64:left + grid[1] * 64])
