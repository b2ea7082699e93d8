"""Lesion annotations as QuPath exports them (GeoJSON), and the rule that labels a sub-image from them.

A file holds a FeatureCollection or a bare list of Features. A lesion is a Feature whose geometry is a
Polygon or MultiPolygon (QuPath exports its rectangles as 4-corner Polygons) in level-0 pixels, and whose
`properties.classification.name` is one of the configured classes. Features without a class (e.g. a
tissue outline) and QuPath detections (objectType other than "annotation") are not lesions and are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.path import Path as Outline
from matplotlib.transforms import Bbox

from attnwsi.data.slides import Box


@dataclass
class Lesion:
    """An annotated region: its class and its outlines (exterior rings, [N, 2] x/y in level-0 px).

    Holes in a polygon are ignored: a sub-image inside a lesion's hole is taken to touch the lesion.
    """

    name: str
    outlines: list[np.ndarray]

    @property
    def box(self) -> Box:
        points = np.concatenate(self.outlines)
        x0, y0 = np.floor(points.min(0)).astype(int)
        x1, y1 = np.ceil(points.max(0)).astype(int)
        return int(x0), int(y0), int(x1 - x0), int(y1 - y0)

    def intersects(self, box: Box) -> bool:
        """Whether any outline overlaps the box (crossing it, inside it, or around it)."""
        x, y, width, height = box
        bbox = Bbox.from_extents(x, y, x + width, y + height)
        return any(Outline(ring, closed=True).intersects_bbox(bbox, filled=True) for ring in self.outlines)


def read_lesions(path: str | Path, classes: list[str]) -> list[Lesion]:
    """The lesions of one GeoJSON file; an unknown class or geometry is an error naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid GeoJSON ({err}); export it from QuPath again") from err
    lesions = []
    for feature in _features(data, path):
        properties = feature.get("properties") or {}
        name = _class_name(properties)
        if name is None or properties.get("objectType", "annotation") != "annotation":
            continue
        if name not in classes:
            raise ValueError(f"{path}: unknown class {name!r}; the configured classes are {classes} "
                             "(rename the class in QuPath or add it to `classes`)")
        lesions.append(Lesion(name, _outlines(feature.get("geometry") or {}, name, path)))
    return lesions


def slide_lesions(annotations_dir: str | Path | None, slide_id: str, classes: list[str]) -> list[Lesion] | None:
    """The slide's lesions from `annotations_dir/<slide_id>.geojson`, or None when it has no annotation file
    (then nothing is known of its lesions: its label holds everywhere)."""
    path = annotation_file(annotations_dir, slide_id)
    return read_lesions(path, classes) if path is not None and path.exists() else None


def annotation_file(annotations_dir: str | Path | None, slide_id: str) -> Path | None:
    """Where a slide's annotations are (`annotations_dir/<slide_id>.geojson`, there or not); None without a
    folder."""
    return Path(annotations_dir) / f"{slide_id}.geojson" if annotations_dir is not None else None


def _features(data, path: Path) -> list[dict]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return data.get("features", [])
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise ValueError(f"{path}: expected a GeoJSON FeatureCollection or a list of Features")


def _class_name(properties: dict) -> str | None:
    classification = properties.get("classification")
    if isinstance(classification, dict):
        return classification.get("name")
    return classification if isinstance(classification, str) else None


def _outlines(geometry: dict, name: str, path: Path) -> list[np.ndarray]:
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coordinates]
    elif kind == "MultiPolygon":
        polygons = coordinates
    else:
        raise ValueError(f"{path}: the {name!r} annotation is a {kind}; lesions must be Polygons or "
                         "MultiPolygons (draw them with QuPath's rectangle, polygon or brush tools)")
    return [np.asarray(polygon[0], dtype=float)[:, :2] for polygon in polygons]


def sub_image_label(box: Box, lesions: list[Lesion] | None, classes: list[str], slide_label: str) -> str:
    """The label of a sub-image: the highest-risk class of the lesions it touches (risk = order of `classes`).

    A sub-image touching no lesion is normal (`classes[0]`) when the slide is annotated; on a slide without
    annotations (`lesions` is None) every sub-image takes the slide's label.
    """
    if lesions is None:
        return slide_label
    touched = [classes.index(lesion.name) for lesion in lesions if lesion.intersects(box)]
    return classes[max(touched, default=0)]
