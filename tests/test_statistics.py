"""Statistics with exact expectations: stratified patient-level splits and the bootstrap interval of the report.

Table 2 rebuilt from a real run's `predictions_test.csv` is in test_training_wiring.py (it needs the run).
"""

import numpy as np
import pandas as pd
import pytest

from attnwsi.data.manifest import assign_splits
from attnwsi.metrics import table2_of_labels
from attnwsi.report import bootstrap_mean_f1

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("test_fraction, val_fraction", [(0.25, 0.2), (0.3, 0.15)])
def test_every_label_gets_its_share_of_each_split_within_one_image(seed, test_fraction, val_fraction):
    """One image per patient: per label, test holds n * test_fraction images and validation
    (n - test) * val_fraction, each within one image; systematic sampling along the labels allows no more."""
    rng = np.random.default_rng(100 + seed)
    n_per_label = [37, 61, 8, 3, 90]  # uneven, and two rare labels
    labels = pd.Series(rng.permutation(np.repeat(np.arange(5), n_per_label)))
    patients = pd.Series([f"p{i:03d}" for i in range(len(labels))])
    split = assign_splits(patients, labels, test_fraction, val_fraction, seed)
    for label, n in enumerate(n_per_label):
        of_label = split[labels == label]
        n_test, n_val = (of_label == "test").sum(), (of_label == "val").sum()
        assert abs(n_test - n * test_fraction) < 1, (label, n_test, n * test_fraction)
        assert abs(n_val - (n - n_test) * val_fraction) < 1, (label, n_val, (n - n_test) * val_fraction)
    assert abs((split == "test").sum() - len(split) * test_fraction) < 1


def test_patients_with_several_slides_are_stratified_by_their_highest_label():
    rng = np.random.default_rng(7)
    patients = pd.Series([f"p{i // 3:03d}" for i in range(450)])  # 150 patients, 3 slides each
    labels = pd.Series(rng.integers(0, 4, 450))
    split = assign_splits(patients, labels, test_fraction=0.25, val_fraction=0.2, seed=5)
    assert (split.groupby(patients).nunique() == 1).all()  # no patient on two sides
    per_patient, top = split.groupby(patients).first(), labels.groupby(patients).max()
    for label in range(4):
        n = (top == label).sum()
        n_test = (per_patient[top == label] == "test").sum()
        n_val = (per_patient[top == label] == "val").sum()
        assert abs(n_test - n * 0.25) < 1 and abs(n_val - (n - n_test) * 0.2) < 1, (label, n, n_test, n_val)


# ------------------------------------------------------------------------------------------ bootstrap


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Table 2's mean F1 (checked against hand-computed values in test_metrics.py)."""
    return table2_of_labels(labels, predictions, CLASSES)["mean"]["f1"]


def reference_bootstrap(runs: list[pd.DataFrame], draws: int, seed: int) -> tuple[float, float, float]:
    """The documented procedure: the images all runs predicted (sorted by id) resampled with replacement,
    n of n, one draw shared by every run; the runs' mean F1 averaged; its 2.5th and 97.5th percentiles."""
    common = sorted(set.intersection(*(set(r["sub_image_id"]) for r in runs)))
    index = {c: i for i, c in enumerate(CLASSES)}
    pairs = [(r.set_index("sub_image_id").loc[common, "label"].map(index).to_numpy(),
              r.set_index("sub_image_id").loc[common, "prediction"].map(index).to_numpy()) for r in runs]
    rng = np.random.default_rng(seed)
    n = len(common)
    estimates = []
    for _ in range(draws):
        sample = rng.integers(0, n, n)
        estimates.append(np.mean([macro_f1(y[sample], p[sample]) for y, p in pairs]))
    point = np.mean([macro_f1(y, p) for y, p in pairs])
    return point, np.percentile(estimates, 2.5), np.percentile(estimates, 97.5)


def predictions_of(seed: int, accuracy: float, ids: list[str], labels: np.ndarray) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    predicted = np.where(rng.random(len(ids)) < accuracy, labels, rng.integers(0, 4, len(ids)))
    frame = pd.DataFrame({"sub_image_id": ids, "label": [CLASSES[i] for i in labels],
                          "prediction": [CLASSES[i] for i in predicted]})
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # rows in any order


def test_the_bootstrap_interval_equals_an_independent_implementation_of_the_procedure():
    rng = np.random.default_rng(11)
    ids = [f"img_{i:03d}" for i in range(50)]
    labels = rng.choice(4, 50, p=[0.5, 0.3, 0.15, 0.05])  # a rare class: resampling often loses it
    one = predictions_of(1, 0.7, ids, labels)
    point, low, high = bootstrap_mean_f1([one], CLASSES, draws=200, seed=3)
    expected = reference_bootstrap([one], draws=200, seed=3)
    assert (point, low, high) == pytest.approx(expected, abs=1e-12)
    assert high - low > 0.1  # an interval, not a point; 2.5 .. 97.5 is wide on 50 images


def test_the_runs_of_one_model_share_each_bootstrap_draw():
    rng = np.random.default_rng(12)
    ids = [f"img_{i:03d}" for i in range(40)]
    labels = rng.integers(0, 4, 40)
    runs = [predictions_of(2, 0.8, ids, labels), predictions_of(3, 0.4, ids, labels)]
    runs[1] = pd.concat([runs[1], pd.DataFrame({"sub_image_id": ["only_in_run_2"], "label": ["normal"],
                                                "prediction": ["normal"]})])  # left out: not in every run
    result = bootstrap_mean_f1(runs, CLASSES, draws=150, seed=4)
    assert result == pytest.approx(reference_bootstrap(runs, draws=150, seed=4), abs=1e-12)
