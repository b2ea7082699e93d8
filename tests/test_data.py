"""Tile grids, augmentation, slide reading at an mpp, patient-level splits, and the data module."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from attnwsi.data.grid import augment, image_to_tiles
from attnwsi.data.manifest import assign_splits


def test_tiles_are_row_major_and_the_border_is_split_evenly():
    image = np.zeros((70, 100, 3), np.uint8)
    for r in range(2):
        for c in range(3):
            image[3 + r * 32 : 3 + (r + 1) * 32, 2 + c * 32 : 2 + (c + 1) * 32] = 10 * (3 * r + c) + 1
    tiles, grid = image_to_tiles(image, 32)
    assert grid == (2, 3)  # floor(70 / 32), floor(100 / 32)
    assert tiles.shape == (6, 3, 32, 32) and tiles.dtype == torch.uint8
    for t in range(6):
        assert (tiles[t] == 10 * t + 1).all()


def test_an_image_smaller_than_a_tile_becomes_one_tile():
    tiles, grid = image_to_tiles(np.zeros((10, 40, 3), np.uint8), 32)
    assert grid == (1, 1) and tiles.shape == (1, 3, 32, 32)


def test_rotation_and_scaling_keep_the_tissue_in_the_frame():
    image = np.full((100, 160, 3), 255, np.uint8)
    image[10:90, 10:150] = (200, 100, 150)  # tissue up to near the border
    rng = np.random.default_rng(0)
    for _ in range(10):
        replay = copy.deepcopy(rng)  # the same draws: flip, scale, angle
        replay.random()
        factor = replay.uniform(0.8, 1.2)
        out = augment(image, rng, rotate=True, flip=True, scale=(0.8, 1.2))
        tissue = (out[..., 1] < 200).sum()
        assert tissue == pytest.approx(80 * 140 * factor**2, rel=0.05)  # the area scales with the factor squared
        border = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
        assert (border[:, 1] > 200).all()  # only background touches the frame


@pytest.mark.parametrize("seed", range(5))
def test_scaling_gives_each_side_round_side_times_the_drawn_factor(seed):
    image = np.zeros((61, 97, 3), np.uint8)  # not square, odd sides
    rng = np.random.default_rng(seed)
    replay = np.random.default_rng(seed)
    flipped = replay.random() < 0.5
    factor = replay.uniform(0.5, 1.5)
    quarter_turns = int(replay.integers(4))
    out = augment(image, rng, rotate=False, flip=True, scale=(0.5, 1.5))
    height, width = round(61 * factor), round(97 * factor)
    assert out.shape[:2] == ((width, height) if quarter_turns % 2 else (height, width)), (flipped, factor)
    scaled_only = augment(image, np.random.default_rng(seed), rotate=False, flip=False, scale=(0.5, 1.5))
    factor = np.random.default_rng(seed).uniform(0.5, 1.5)
    assert scaled_only.shape == (round(61 * factor), round(97 * factor), 3)


def test_splits_keep_patients_together_and_are_deterministic():
    rng = np.random.default_rng(0)
    patients = pd.Series([f"p{i // 3}" for i in range(600)])  # 200 patients, 3 slides each
    labels = pd.Series(rng.integers(0, 4, 600))
    split = assign_splits(patients, labels, test_fraction=0.25, val_fraction=0.2, seed=1)
    assert (split.groupby(patients).nunique() == 1).all()  # no patient in two splits
    per_patient = split.groupby(patients).first()
    assert (per_patient == "test").mean() == pytest.approx(0.25, abs=0.02)
    assert (per_patient == "val").mean() == pytest.approx(0.75 * 0.2, abs=0.02)
    top = labels.groupby(patients).max()
    for label in range(4):  # every label keeps its share of the test split within one patient
        assert abs((per_patient[top == label] == "test").sum() - (top == label).sum() * 0.25) < 1  # see test_statistics
    again = assign_splits(patients, labels, test_fraction=0.25, val_fraction=0.2, seed=1)
    pd.testing.assert_series_equal(split, again)
    other = assign_splits(patients, labels, test_fraction=0.25, val_fraction=0.2, seed=2)
    assert not split.equals(other)
