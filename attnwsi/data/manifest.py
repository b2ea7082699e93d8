"""Data sets: label sheets, patient-level splits, manifests (one row per sub-image) and their files.

`build_manifest` turns slides and a label sheet into a manifest; `write_dataset` writes a manifest with
its statistics into a data root (`attnwsi.data.layout`); `read_manifest` reads it back, checked, and
`sub_images_of` gives its rows as `SubImage` records.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import track

from attnwsi.console import UserError
from attnwsi.data.annotations import Lesion, annotation_file, slide_lesions, sub_image_label
from attnwsi.data.layout import DataRoot
from attnwsi.data.slides import (
    SLIDE_SUFFIXES,
    SlideError,
    SubImage,
    find_slide_files,
    open_slide,
    read_region,
)
from attnwsi.data.tissue import (
    DEFAULT_TISSUE,
    TissueParams,
    find_tissue,
    no_tissue_error,
    qa_picture,
    tissue_pixel_stats,
)
from attnwsi.io import (
    file_identity,
    recorded,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_png_atomic,
)

MANIFEST_COLUMNS = ["sub_image_id", "slide_id", "slide_path", "patient_id", "x", "y", "width", "height",
                    "mpp", "label", "split"]
SPLITS = ("train", "val", "test")
STATS_MPP = 2.0  # the resolution (um/px) at which a data set's pixel statistics are taken


class DataError(UserError, ValueError):
    """A label sheet, manifest or data root that cannot be used; the message names the file and the fix."""


def read_labels(path: str | Path, classes: list[str]) -> pd.DataFrame:
    """`slide_id,patient_id,label` (optional `path`, `mpp`, `split`); unknown labels are errors.

    `path` locates a slide file (relative to the slide folder, or absolute), `mpp` gives the pixel size of
    a slide that does not record it, `split` (train/val/test) fixes the splits instead of drawing them.
    """
    text_columns = {"slide_id": str, "patient_id": str, "label": str, "path": str, "split": str}
    labels = pd.read_csv(path, dtype=text_columns)
    missing = {"slide_id", "patient_id", "label"} - set(labels.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; a label sheet needs "
                         "slide_id,patient_id,label")
    unknown = sorted(set(labels["label"]) - set(classes))
    if unknown:
        raise DataError(f"{path}: label(s) {unknown} are not among the configured classes {classes}. Name your "
                        f"classes, in increasing risk, with classes=[{','.join(sorted(set(labels['label'])))}] "
                        "(in the order of risk) on the preprocess command line")
    repeated = sorted(set(labels["slide_id"][labels["slide_id"].duplicated()]))
    if repeated:
        raise DataError(f"{path}: slide_id(s) {repeated} appear more than once; give each slide one row")
    if "mpp" in labels and not pd.api.types.is_numeric_dtype(labels["mpp"]):
        raise DataError(f"{path}: the mpp column must hold numbers (micrometres per pixel) or be empty")
    if "split" in labels:
        _check_split_column(labels, path)
    return labels


def _check_split_column(labels: pd.DataFrame, path: str | Path) -> None:
    bad = labels.loc[~labels["split"].isin(SPLITS), "slide_id"].tolist()
    if bad:
        raise DataError(f"{path}: slide(s) {bad[:5]} have no valid split; the split column takes "
                         f"{list(SPLITS)}")
    splits_per_patient = labels.groupby("patient_id")["split"].nunique()
    leaking = splits_per_patient.index[splits_per_patient > 1].tolist()
    if leaking:
        raise DataError(f"{path}: patient(s) {leaking[:5]} appear in more than one split; put all slides "
                         "of a patient in one split")


def slide_splits(labels: pd.DataFrame, classes: list[str], test_fraction: float, val_fraction: float,
                 seed: int) -> pd.Series:
    """Each slide's split: the sheet's `split` column if it has one, else drawn by `assign_splits`."""
    if "split" in labels:
        return labels["split"]
    risk = labels["label"].map({c: i for i, c in enumerate(classes)})
    return assign_splits(labels["patient_id"], risk, test_fraction, val_fraction, seed)


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


# ----------------------------------------------------------------------------------- slides -> sub-images

QA_MAX_PX = 1024  # the longer side of a QA picture


@dataclass
class ManifestResult:
    """What `build_manifest` found: the manifest, the slides it skipped (id -> reason), and warnings; and
    after `make_dataset`, the pixel statistics it wrote (None for a test-only set)."""

    manifest: pd.DataFrame
    failures: dict[str, str]
    warnings: list[str]
    stats: dict | None = None
    reused: int = 0  # slides whose rows came from a record of an earlier run (`done_dir`)


def build_manifest(slides_dir: str | Path, labels_csv: str | Path, classes: list[str],
                   annotations_dir: str | Path | None = None, default_mpp: float | None = None,
                   test_fraction: float = 0.25, val_fraction: float = 0.2, seed: int = 0,
                   tissue: TissueParams = DEFAULT_TISSUE, qa_dir: str | Path | None = None,
                   progress: bool = False, done_dir: str | Path | None = None) -> ManifestResult:
    """One manifest row per tissue sub-image of every slide in the label sheet.

    Each slide's tissue pieces (see `attnwsi.data.tissue`) become sub-images, labelled by
    `sub_image_label` from `annotations_dir/<slide_id>.geojson` when that file exists, else by the slide's
    label. Splits are drawn per patient over the whole sheet (or read from its `split` column), so a slide
    that fails does not move the others. A slide that fails is skipped and named in `failures`; with
    `qa_dir`, a QA picture per slide is written there. With `done_dir`, each slide's rows are recorded
    there (`<slide_id>.json`, atomic) and reused by a later call while the slide file, its annotations, its
    sheet row and the settings are the same (`slide_record_key`): a rerun after a kill does only the rest.
    """
    labels = read_labels(labels_csv, classes)
    labels["split"] = slide_splits(labels, classes, test_fraction, val_fraction, seed)
    slides_dir = Path(slides_dir)
    files = find_slide_files(slides_dir)
    if qa_dir is not None:
        Path(qa_dir).mkdir(parents=True, exist_ok=True)
    rows, failures, warnings, reused = [], {}, [], 0
    entries = labels.itertuples(index=False)
    for entry in track(entries, "reading slides", total=len(labels)) if progress else entries:
        path = None
        try:
            path = slide_file(entry, slides_dir, files)
            lesions = slide_lesions(annotations_dir, entry.slide_id, classes)
            fallback_mpp = getattr(entry, "mpp", math.nan)
            if math.isnan(fallback_mpp):
                fallback_mpp = default_mpp
            compute = partial(_sub_image_rows, entry, path, lesions, classes, fallback_mpp, tissue, qa_dir)
            if done_dir is None:
                slide_rows = compute()
            else:
                key = slide_record_key(entry, path, annotations_dir, classes, fallback_mpp, tissue, qa_dir)
                slide_rows, was_done = recorded(Path(done_dir) / f"{entry.slide_id}.json", key, compute)
                reused += was_done
        except Exception as err:  # one bad slide must not stop the others; its reason is reported
            failures[entry.slide_id] = _failure_reason(err, path)
            continue
        rows += slide_rows
        found = max((row["label"] for row in slide_rows), key=classes.index)
        if lesions is not None and found != entry.label:
            warnings.append(f"{entry.slide_id}: labelled {entry.label!r} but its annotated sub-images give "
                            f"{found!r}; check its annotations and its QA picture")
    return ManifestResult(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), failures, warnings, reused=reused)


def slide_record_key(entry, path: Path, annotations_dir: str | Path | None, classes: list[str],
                     fallback_mpp: float | None, tissue: TissueParams, qa_dir: str | Path | None) -> dict:
    """Everything a slide's manifest rows depend on: the slide file's and its annotation file's identity
    (path, size, modification time), its label-sheet row, the classes and the tissue settings."""
    annotation = annotation_file(annotations_dir, entry.slide_id)
    return {"slide": file_identity(path), "annotations": file_identity(annotation) if annotation else None,
            "row": {k: v for k, v in entry._asdict().items() if isinstance(v, str) or not pd.isna(v)},
            "classes": classes, "mpp": fallback_mpp, "tissue": asdict(tissue), "qa": qa_dir is not None}


def _failure_reason(err: Exception, path: Path | None) -> str:
    """Our own errors name the file and the fix; anything else is a reader choking on the file."""
    if isinstance(err, (SlideError, ValueError)):
        return str(err)
    return (f"{path}: cannot read this slide ({type(err).__name__}: {err}); check that the file is complete "
            "and that tiffslide opens it")


def slide_file(entry, slides_dir: Path, files: dict[str, list[Path]]) -> Path:
    """A label-sheet row's slide file: its `path` (relative to `slides_dir`, or absolute), else by its id."""
    given = getattr(entry, "path", None)
    if isinstance(given, str) and given.strip():
        return (slides_dir / given.strip()).resolve()  # an absolute `given` replaces slides_dir
    found = files.get(entry.slide_id, [])
    if not found:
        raise SlideError(f"{slides_dir}: no slide file named {entry.slide_id}.<{'|'.join(SLIDE_SUFFIXES)}>; "
                         "give its file in the label sheet's `path` column")
    if len(found) > 1:
        names = [p.name for p in found]
        raise SlideError(f"{slides_dir}: several files for slide {entry.slide_id!r} ({names}); name the one "
                         "to use in the label sheet's `path` column")
    return found[0].resolve()


def _sub_image_rows(entry, path: Path, lesions: list[Lesion] | None, classes: list[str],
                    fallback_mpp: float | None, tissue: TissueParams,
                    qa_dir: str | Path | None) -> list[dict]:
    """The slide's sub-images as manifest rows; writes its QA picture into `qa_dir` if given."""
    slide = open_slide(path)
    try:
        tissue_pieces = find_tissue(slide, path, fallback_mpp, tissue)
        level0_mpp, boxes = tissue_pieces.level0_mpp, tissue_pieces.boxes
        labels = [sub_image_label(box, lesions, classes, entry.label) for box in boxes]
        if qa_dir is not None:
            qa_mpp = max(level0_mpp, level0_mpp * max(slide.dimensions) / QA_MAX_PX)
            overview = read_region(slide, (0, 0, *slide.dimensions), level0_mpp, qa_mpp)
            lesion_boxes = [(lesion.box, lesion.name) for lesion in lesions or []]
            picture = qa_picture(overview, tissue_pieces.mask, slide.dimensions, classes,
                                 list(zip(boxes, labels, strict=True)), lesion_boxes)
            write_png_atomic(Path(qa_dir) / f"{entry.slide_id}.png", picture)
    finally:
        slide.close()
    if not boxes:
        raise no_tissue_error(path)
    return [dict(sub_image_id=f"{entry.slide_id}_{k}", slide_id=entry.slide_id, slide_path=str(path),
                 patient_id=entry.patient_id, x=x, y=y, width=width, height=height, mpp=level0_mpp,
                 label=label, split=entry.split)
            for k, ((x, y, width, height), label) in enumerate(zip(boxes, labels, strict=True))]


def class_distribution(manifest: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Sub-images per class in each split, as counts and percent of the split (like the paper's Table 1)."""
    columns = {}
    for split in (*SPLITS, "all"):
        labels = manifest["label"] if split == "all" else manifest.loc[manifest["split"] == split, "label"]
        counts = labels.value_counts().reindex(classes, fill_value=0)
        columns[f"{split}_n"] = [*counts.tolist(), len(labels)]
        columns[f"{split}_%"] = [round(100 * n / max(len(labels), 1), 1) for n in columns[f"{split}_n"]]
    return pd.DataFrame({"class": [*classes, "total"], **columns})


# ----------------------------------------------------------------------------------- a data root


def make_dataset(slides: str | Path, labels: str | Path, out: str | Path, classes: list[str],
                 annotations: str | Path | None = None, default_mpp: float | None = None,
                 test_fraction: float = 0.25, val_fraction: float = 0.2, split_seed: int = 0,
                 stats_mpp: float = STATS_MPP, tissue: TissueParams = DEFAULT_TISSUE,
                 overwrite: bool = False) -> ManifestResult:
    """`preprocess`: the manifest of the slides in `labels`, written with its statistics and a QA picture per
    slide into the data root `out`. Slides that fail are skipped (`failures`); nothing is written when none
    is left. Slides done by an earlier run into `out` with the same inputs are not read again, unless
    `overwrite`."""
    root = DataRoot(out)
    if overwrite and root.done.exists():
        shutil.rmtree(root.done)
    result = build_manifest(slides, labels, classes, annotations, default_mpp, test_fraction, val_fraction,
                            split_seed, tissue, qa_dir=root.qa, progress=True, done_dir=root.done)
    if not result.manifest.empty:
        copy_annotations(annotations, root, result.manifest["slide_id"].unique())
        result.stats = write_dataset(root.path, result.manifest, classes, stats_mpp, tissue)
    return result


def copy_annotations(annotations: str | Path | None, root: DataRoot, slide_ids) -> None:
    """The slides' lesion annotations into the data root (`annotations/`), so that the data root alone is
    enough to train on it: the sliding-window baseline learns from them, predict draws them."""
    if annotations is None or Path(annotations).resolve() == root.annotations.resolve():
        return
    for slide_id in slide_ids:
        source, copy = annotation_file(annotations, slide_id), annotation_file(root.annotations, slide_id)
        if source.exists():
            write_bytes_atomic(copy, source.read_bytes())
        else:  # not annotated (any more)
            copy.unlink(missing_ok=True)


def write_dataset(root: str | Path, manifest: pd.DataFrame, classes: list[str], stats_mpp: float = STATS_MPP,
                  tissue: TissueParams = DEFAULT_TISSUE) -> dict | None:
    """Write a data set into `root`: dataset.json (its classes, in increasing risk), stats.json,
    class_distribution.csv, then manifest.csv (all atomic).

    The pixel statistics are those of the development (train + val) sub-images' tissue, read at
    `stats_mpp`; a test-only set has none (returns None, writes no stats.json). Returns the statistics.
    """
    root = DataRoot(root)
    root.path.mkdir(parents=True, exist_ok=True)
    development = sub_images_of(manifest[manifest["split"] != "test"])
    stats = tissue_pixel_stats(development, stats_mpp, tissue) if development else None
    if stats is not None:
        write_json_atomic(root.stats, stats)
    write_json_atomic(root.dataset, {"classes": list(classes)})
    write_csv_atomic(class_distribution(manifest, classes), root.class_distribution)
    write_csv_atomic(manifest, root.manifest)  # last: its presence marks a complete data set
    return stats


def data_root_classes(root: str | Path) -> list[str]:
    """The classes a data root was written with (`dataset.json`, in increasing risk)."""
    root = DataRoot(root)
    if not root.manifest.exists():
        raise no_manifest_error(root.manifest)
    if not root.dataset.exists():  # a data root of an earlier version
        raise DataError(f"{root.dataset}: not found, so the classes of {root.path} are unknown; give them as "
                        "classes=[...] (in increasing risk)")
    return json.loads(root.dataset.read_text())["classes"]


def check_classes(root: str | Path, classes: list[str]) -> None:
    """The classes a model is given must be those the data root was written with, in the same (risk) order."""
    path = DataRoot(root).dataset
    if not path.exists():  # a data root of an earlier version: its labels are still checked (read_manifest)
        return
    written = json.loads(path.read_text())["classes"]
    if list(classes) != written:
        raise DataError(f"{path}: this data root's classes are {written} (in increasing risk) but the run has "
                        f"{list(classes)}; train with classes=[{','.join(written)}]")


def no_manifest_error(path: Path) -> DataError:
    return DataError(f"{path}: no manifest, so {path.parent} is not a data root yet; write one with "
                     f"`python -m attnwsi.preprocess slides=DIR labels=CSV out={path.parent}`")


def read_manifest(path: str | Path, classes: list[str] | None = None) -> pd.DataFrame:
    """A manifest, checked: every column there, and (given `classes`) every label one of them."""
    path = Path(path)
    if not path.exists():
        raise no_manifest_error(path)
    manifest = pd.read_csv(path, dtype={"sub_image_id": str, "slide_id": str, "patient_id": str, "label": str})
    missing = set(MANIFEST_COLUMNS) - set(manifest.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}")
    if classes is not None:
        unknown = sorted(set(manifest["label"]) - set(classes))
        if unknown:
            raise DataError(f"{path}: label(s) {unknown} are not among the configured classes {classes}; "
                            f"train with the data set's classes, in increasing risk: "
                            f"classes=[{','.join(sorted(set(manifest['label'])))}] (in the order of risk)")
    return manifest


def read_sub_images(path: str | Path, split: str | None = None) -> list[SubImage]:
    """The sub-images of a manifest (`read_manifest`), in row order; with `split`, of that split only."""
    rows = read_manifest(path)
    return sub_images_of(rows if split is None else rows[rows["split"] == split])


def sub_images_of(rows: pd.DataFrame) -> list[SubImage]:
    """Manifest rows as sub-images, in row order."""
    return [SubImage(str(row.sub_image_id), str(row.slide_id), str(row.slide_path),
                     (int(row.x), int(row.y), int(row.width), int(row.height)), float(row.mpp),
                     str(row.label), str(row.split), str(row.patient_id))
            for row in rows.itertuples(index=False)]
