"""The files of a data root, named once: what `preprocess` writes and the models' data modules read.

    manifest.csv              one row per sub-image (written last: its presence marks a complete data set)
    dataset.json              its classes, in increasing risk (as preprocess was given them)
    stats.json                per-channel mean and std of the development split's tissue pixels
    class_distribution.csv    sub-images per class and split (the paper's Table 1)
    annotations/<id>.geojson  lesion outlines per slide (QuPath GeoJSON; preprocess copies those of its
                              annotations=DIR here), optional
    qa/<id>.png               a picture per slide: tissue outline, sub-image and lesion boxes
    done/<id>.json            each slide's manifest rows and what they depend on: a rerun reuses them

The synthetic haystack's root also holds its generated slides (`slides/`), label sheet (`labels.csv`) and
generator settings (`spec.json`).
"""

from __future__ import annotations

from pathlib import Path


class DataRoot:
    """The files of the data root `path` (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.csv"

    @property
    def dataset(self) -> Path:
        return self.path / "dataset.json"

    @property
    def stats(self) -> Path:
        return self.path / "stats.json"

    @property
    def class_distribution(self) -> Path:
        return self.path / "class_distribution.csv"

    @property
    def annotations(self) -> Path:
        return self.path / "annotations"

    def annotation(self, slide_id: str) -> Path:
        return self.annotations / f"{slide_id}.geojson"

    @property
    def qa(self) -> Path:
        return self.path / "qa"

    @property
    def done(self) -> Path:
        return self.path / "done"

    # the synthetic haystack's own files
    @property
    def slides(self) -> Path:
        return self.path / "slides"

    @property
    def labels(self) -> Path:
        return self.path / "labels.csv"

    @property
    def spec(self) -> Path:
        return self.path / "spec.json"
