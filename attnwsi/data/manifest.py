"""Label sheets, manifests (one row per sub-image) and patient-level splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from attnwsi.data.slides import open_slide, slide_mpp

MANIFEST_COLUMNS = ["sub_image_id", "slide_id", "slide_path", "patient_id", "x", "y", "width", "height",
                    "mpp", "label", "split"]
SPLITS = ("train", "val", "test")


def read_labels(path: str | Path, classes: list[str]) -> pd.DataFrame:
    """`slide_id,patient_id,label` (optional `path`, `mpp`, `split`); unknown labels are errors."""
    labels = pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "label": str})
    missing = {"slide_id", "patient_id", "label"} - set(labels.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; a label sheet needs slide_id,patient_id,label")
    unknown = sorted(set(labels["label"]) - set(classes))
    if unknown:
        raise ValueError(f"{path}: unknown label(s) {unknown}; the configured classes are {classes}")
    return labels


def assign_splits(patients: pd.Series, labels: pd.Series, test_fraction: float, val_fraction: float,
                  seed: int) -> pd.Series:
    """train/val/test per row, grouped by patient (no patient on two sides), stratified by label.

    A patient counts under their highest-ranked label (`labels` must be ordered, e.g. by risk). Patients are
    shuffled within each label and laid end to end; systematic sampling along that list then sends
    `test_fraction` of them to test and `val_fraction` of the rest (the development set) to validation, so
    every label keeps its share in every split, also when a label has few patients.
    """
    rng = np.random.default_rng(seed)
    patient_label = labels.groupby(patients).max()
    order = []
    for _, group in patient_label.groupby(patient_label):
        ids = sorted(group.index)
        rng.shuffle(ids)
        order += ids
    test = _systematic_sample(order, test_fraction, rng)
    development = [pid for pid in order if pid not in test]
    val = _systematic_sample(development, val_fraction, rng)
    split_of = {pid: "test" if pid in test else "val" if pid in val else "train" for pid in order}
    return patients.map(split_of)


def _systematic_sample(items: list, fraction: float, rng: np.random.Generator) -> set:
    """Every 1/fraction-th item from a random start: about len(items) * fraction, spread evenly."""
    start = rng.random()
    return {item for i, item in enumerate(items)
            if np.floor((i + 1) * fraction + start) > np.floor(i * fraction + start)}


def whole_slide_manifest(slides_dir: str | Path, labels_csv: str | Path, classes: list[str],
                         test_fraction: float, val_fraction: float, seed: int,
                         suffix: str = ".tiff") -> pd.DataFrame:
    """One sub-image per slide covering the whole slide (for slides that are one tissue piece)."""
    labels = read_labels(labels_csv, classes)
    rows = []
    for slide_id, patient_id, label in labels[["slide_id", "patient_id", "label"]].itertuples(index=False):
        path = Path(slides_dir) / f"{slide_id}{suffix}"
        slide = open_slide(path)
        width, height = slide.dimensions
        rows.append((slide_id, slide_id, str(path), patient_id, 0, 0, width, height, slide_mpp(slide, path), label))
        slide.close()
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS[:-1])
    risk = manifest["label"].map({c: i for i, c in enumerate(classes)})
    manifest["split"] = assign_splits(manifest["patient_id"], risk, test_fraction, val_fraction, seed)
    return manifest


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> None:
    """Write to a temporary file and rename it, so a crash never leaves half a manifest."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
