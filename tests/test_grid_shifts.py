"""`model.grid_shifts`: a trained model answers with the class probabilities averaged over the image's tile grid
and three grids moved by half a tile (attnwsi/models/grid_shifts.py)."""

import numpy as np
import pytest
import torch

from attnwsi.data.grid import image_to_tiles
from attnwsi.models.classifier import AttentionClassifier
from attnwsi.models.explain import explain
from attnwsi.models.grid_shifts import shifted_grids

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]


def numbered_image(height: int, width: int) -> np.ndarray:
    """An image whose pixels tell where they are: (row, column, row + column) mod 250."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return (np.stack([rows, cols, rows + cols], -1) % 250).astype(np.uint8)


def test_moved_grids_cut_the_same_pixels_half_a_tile_further_with_background_beyond():
    image = numbered_image(16, 24)  # a 2 x 3 grid of 8-px tiles, no border
    tiles, grid = image_to_tiles(image, 8)
    views = shifted_grids(tiles, grid)
    assert [g for _, g in views] == [(3, 3), (2, 4), (3, 4)]  # down, right, both: a row and/or a column more
    down_right, (rows, cols) = views[2]
    tile = lambda r, c: down_right[r * cols + c].permute(1, 2, 0).numpy()  # noqa: E731
    np.testing.assert_array_equal(tile(1, 1), image[4:12, 4:12])  # the grid's lines lie half a tile further
    np.testing.assert_array_equal(tile(0, 0)[4:, 4:], image[:4, :4])
    assert (tile(0, 0)[:4] == 255).all() and (tile(2, 3)[4:] == 255).all()  # white beyond the image
    for view_tiles, view_grid in views:  # every pixel of the image is in each moved grid exactly once
        assert view_tiles.shape == (view_grid[0] * view_grid[1], 3, 8, 8)
        assert (view_tiles != 255).sum() == (tiles != 255).sum()


def test_a_lesion_the_grid_cuts_in_four_lies_whole_in_a_tile_of_the_grid_moved_both_ways():
    image = np.full((32, 32, 3), 255, np.uint8)
    image[12:20, 12:20] = 0  # an 8-px "lesion" on the corner where four 16-px tiles meet
    tiles, grid = image_to_tiles(image, 16)
    assert max(int((t == 0).all(0).sum()) for t in tiles) == 16  # a quarter of it in each tile
    moved, _ = shifted_grids(tiles, grid)[2]
    assert max(int((t == 0).all(0).sum()) for t in moved) == 64  # whole in one


@pytest.mark.parametrize("loss", ["cumulative", "cross_entropy"])
def test_the_answer_is_the_mean_of_the_four_grids_probabilities_in_test_and_in_explain(loss):
    torch.manual_seed(0)
    model = AttentionClassifier(CLASSES, tile_um=64, tile_px=32, num_filters=4, loss=loss, grid_shifts=True).eval()
    tiles, grid = image_to_tiles(np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8), 32)
    with torch.no_grad():
        own, _ = model(tiles, grid)
        probabilities = [model(*view)[0].softmax(0) for view in [(tiles, grid), *shifted_grids(tiles, grid)]]
        expected = torch.stack(probabilities).mean(0)
        answer = model.image_logits([(tiles, grid)], own[None])[0]
    torch.testing.assert_close(answer.softmax(0), expected)
    assert not torch.allclose(expected, probabilities[0])  # the moved grids change the answer
    np.testing.assert_allclose(explain(model, tiles, grid).probabilities, expected.numpy(), atol=1e-6)
    model.hparams.grid_shifts = False  # one grid: the own grid's answer
    torch.testing.assert_close(model.image_logits([(tiles, grid)], own[None])[0], own)


def test_the_test_step_scores_the_averaged_answer():
    torch.manual_seed(0)
    model = AttentionClassifier(CLASSES, tile_um=64, tile_px=32, num_filters=4, grid_shifts=True).eval()
    rng = np.random.default_rng(1)

    class Sample:  # what the data module yields, for two images of different grids
        def __init__(self, shape, label, name):
            self.tiles, self.grid = image_to_tiles(rng.integers(0, 256, shape, dtype=np.uint8), 32)
            self.label, self.sub_image_id = label, name

    batch = [Sample((70, 100, 3), 2, "a"), Sample((64, 40, 3), 0, "b")]
    model.log = lambda *args, **kwargs: None  # no trainer to log to
    model.on_test_epoch_start()
    with torch.no_grad():
        model.test_step(batch, 0)
        for sample, row in zip(batch, model.test_predictions.to_dict("records")):
            views = [(sample.tiles, sample.grid), *shifted_grids(sample.tiles, sample.grid)]
            expected = torch.stack([model(*view)[0].softmax(0) for view in views]).mean(0)
            np.testing.assert_allclose([row[f"p_{c}"] for c in CLASSES], expected.numpy(), atol=1e-6)
