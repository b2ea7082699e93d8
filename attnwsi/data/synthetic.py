"""The synthetic "haystack": procedural H&E-like whole-slide images with small lesions.

Each slide is a real tiled pyramidal TIFF (JPEG tiles, pixel size in the resolution tags) that tiffslide
reads like a scanner's file, so the synthetic set goes through the same data path as real slides.

What a slide looks like (level 0 is 0.5 um/px, i.e. "20x"):
- white background around one or more tissue pieces (pink stroma with sparse fibroblast and lymphocyte
  nuclei; with `decoy_prob` > 0, some slides also hold dense lymphoid aggregates: decoys as dark as a lesion);
- abnormal slides hold one or two lesions, each about 100 x 100 px, together at most 1 % of the tissue area.

The class of a lesion is a matter of its nuclei only, never of its colour at low resolution: every lesion
class (and the decoy aggregate) covers the same fraction of its area with nuclei of the same stain, so
they look alike in a thumbnail and differ only in nuclear size, shape and arrangement:

    be_no_dysplasia    small round nuclei on an orderly hexagonal lattice (radius 2 um)
    be_with_dysplasia  medium elongated nuclei, crowded and aligned (pseudostratified; 5 x 2 um semi-axes)
    adenocarcinoma     large, pleomorphic nuclei in disorder (radius 5.5-7.5 um)

A slide's label is the class of its highest-risk lesion, "normal" if it has none. The class names and their
order (increasing risk) follow the paper's Barrett's oesophagus classes; the class balance follows its
Table 1 (47/24/11/17 %). Everything is deterministic for a seed.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

from attnwsi.data.layout import DataRoot
from attnwsi.io import write_atomic, write_csv_atomic, write_json_atomic

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]
CLASS_BALANCE = [0.472, 0.244, 0.114, 0.171]  # the paper's Table 1: 58, 30, 14, 21 of 123
CLASS_COLORS = {"be_no_dysplasia": [0, 160, 0], "be_with_dysplasia": [230, 160, 0], "adenocarcinoma": [200, 0, 0]}

# Optical densities of haematoxylin and eosin (Ruifrok & Johnston's stain vectors, scaled).
_OD_HEMATOXYLIN = np.array([0.65, 0.70, 0.29]) * 1.9
_OD_EOSIN = np.array([0.07, 0.99, 0.11]) * 0.55
_LESION_NUCLEAR_FRACTION = 0.30


@dataclass
class HaystackSpec:
    """What to generate. Sizes are level-0 pixels at `mpp` micrometres per pixel."""

    n_slides: int = 320
    seed: int = 0
    mpp: float = 0.5
    slide_px: tuple[int, int] = (1024, 1536)  # each side drawn uniformly from this range
    lesion_px: int = 100  # side of a lesion box, shrunk where needed to keep the 1 % bound
    max_lesion_fraction: float = 0.01  # all lesions together, of the tissue area
    second_lesion_prob: float = 0.35  # an abnormal slide also holds a lower-risk lesion
    decoy_prob: float = 0.0  # chance that a slide holds a lymphoid aggregate as dark as a lesion (harder)
    multi_piece_prob: float = 0.25  # a slide holds two tissue pieces
    max_slides_per_patient: int = 2
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    class_balance: list[float] = field(default_factory=lambda: list(CLASS_BALANCE))

    def __post_init__(self):
        self.slide_px = tuple(self.slide_px)


def run_jobs(write, jobs: list, workers: int, chunksize: int) -> None:
    """`write(job)` for every job: in `workers` processes when more than one, else here, in order."""
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(write, jobs, chunksize=chunksize))
    else:
        for job in jobs:
            write(job)


def generate_haystack(out: str | Path, spec: HaystackSpec, workers: int = 1) -> Path:
    """Write `out/slides/*.tiff`, `out/annotations/*.geojson`, `out/labels.csv` and `out/spec.json`."""
    root = DataRoot(out)
    root.slides.mkdir(parents=True, exist_ok=True)
    root.annotations.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    labels = _balanced_labels(spec.n_slides, spec.class_balance, rng)
    patients = _patient_ids(spec.n_slides, spec.max_slides_per_patient, rng)
    slide_seeds = rng.integers(0, 2**63 - 1, size=spec.n_slides)
    jobs = [(root, f"haystack_{i:04d}", int(labels[i]), int(slide_seeds[i]), spec) for i in range(spec.n_slides)]
    run_jobs(_write_slide_job, jobs, workers, chunksize=4)
    rows = [(job[1], patients[i], spec.classes[labels[i]]) for i, job in enumerate(jobs)]
    write_csv_atomic(pd.DataFrame(rows, columns=["slide_id", "patient_id", "label"]), root.labels)
    write_json_atomic(root.spec, asdict(spec))  # last: its presence marks a complete data set
    return root.path


def _write_slide_job(job) -> None:
    root, slide_id, label, seed, spec = job
    image, lesions = render_slide(label, np.random.default_rng(seed), spec)
    write_pyramidal_tiff(root.slides / f"{slide_id}.tiff", image, spec.mpp)
    write_json_atomic(root.annotation(slide_id), lesions_to_geojson(lesions), indent=None)


def _balanced_labels(n: int, balance: list[float], rng: np.random.Generator) -> np.ndarray:
    """Exactly the class balance (largest remainder), in random order."""
    quota = np.array(balance) / sum(balance) * n
    counts = np.floor(quota).astype(int)
    counts[np.argsort(counts - quota)[: n - counts.sum()]] += 1
    labels = np.repeat(np.arange(len(balance)), counts)
    rng.shuffle(labels)
    return labels


def _patient_ids(n: int, max_per_patient: int, rng: np.random.Generator) -> list[str]:
    ids, patient = [], 0
    while len(ids) < n:
        ids += [f"patient_{patient:04d}"] * int(rng.integers(1, max_per_patient + 1))
        patient += 1
    return ids[:n]


# --------------------------------------------------------------------------------------------- rendering


def render_slide(label: int, rng: np.random.Generator, spec: HaystackSpec):
    """One slide as an RGB uint8 array and its lesions as (class index, x0, y0, x1, y1) boxes."""
    height, width = (int(rng.integers(spec.slide_px[0], spec.slide_px[1] + 1)) for _ in range(2))
    tissue = _tissue_mask(height, width, rng, two_pieces=rng.random() < spec.multi_piece_prob)
    hematoxylin = np.zeros((height, width), np.float32)

    lesion_classes = []
    if label > 0:
        lesion_classes.append(label)
        if label > 1 and rng.random() < spec.second_lesion_prob:
            lesion_classes.append(int(rng.integers(1, label)))
    tissue_area = float(tissue.sum())
    side = spec.lesion_px
    if lesion_classes:  # all lesions together within the bound
        side = min(side, int(math.sqrt(spec.max_lesion_fraction * tissue_area / len(lesion_classes))))
    regions = lesion_classes + ([0] if rng.random() < spec.decoy_prob else [])  # 0: a decoy aggregate
    boxes = _place_boxes(tissue, len(regions), side, rng)

    special = np.zeros_like(tissue)
    lesions = []
    for cls, (x0, y0) in zip(regions, boxes):
        blob = _blob(side, side, rng, roughness=0.08)
        special[y0 : y0 + side, x0 : x0 + side] |= blob
        nuclei = _LESION_PATTERNS[cls](side, rng)
        _draw_nuclei(hematoxylin[y0 : y0 + side, x0 : x0 + side], nuclei, clip=blob)
        if cls > 0:
            lesions.append((cls, x0, y0, x0 + side, y0 + side))

    _draw_nuclei(hematoxylin, _background_nuclei(tissue & ~special, rng), clip=tissue & ~special)
    eosin = tissue * (0.75 + 0.5 * _smooth_noise(height, width, rng, scale=6))
    eosin[special] = 0.6  # dense cellular regions carry less stroma
    od = hematoxylin[..., None] * _OD_HEMATOXYLIN + eosin[..., None] * _OD_EOSIN
    image = 255.0 * np.exp(-od) * (0.965 + 0.02 * rng.random((height, width, 1)))
    return np.clip(image, 0, 255).astype(np.uint8), lesions


def _tissue_mask(height: int, width: int, rng: np.random.Generator, two_pieces: bool) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    if two_pieces:  # side by side along the longer axis
        along_x = width >= height
        n = 2
    else:
        along_x, n = True, 1
    for k in range(n):
        if along_x:
            x0, x1 = width * k // n, width * (k + 1) // n
            y0, y1 = 0, height
        else:
            x0, x1, y0, y1 = 0, width, height * k // n, height * (k + 1) // n
        margin = 0.08
        h, w = y1 - y0, x1 - x0
        ys, xs = y0 + int(margin * h), x0 + int(margin * w)
        hh, ww = int(h * (1 - 2 * margin)), int(w * (1 - 2 * margin))
        mask[ys : ys + hh, xs : xs + ww] |= _blob(hh, ww, rng, roughness=0.12)
    return mask


def _blob(height: int, width: int, rng: np.random.Generator, roughness: float) -> np.ndarray:
    """An irregular filled shape inscribed in a height x width box (radius as a random Fourier series)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (xx + 0.5) / width * 2 - 1
    v = (yy + 0.5) / height * 2 - 1
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += roughness / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) <= radius / (1 + roughness)


def _place_boxes(tissue: np.ndarray, n: int, side: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of n non-overlapping side x side boxes lying wholly inside the tissue."""
    # inside[y, x]: the box with its top-left corner at (x, y) is all tissue (from a summed-area table).
    table = np.pad(tissue.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    inside = (table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]) == side**2
    boxes: list[tuple[int, int]] = []
    for _ in range(n):
        ys, xs = np.nonzero(inside)
        if len(ys) == 0:
            raise RuntimeError("tissue too small for the lesions; enlarge slide_px or shrink lesion_px")
        i = int(rng.integers(len(ys)))
        x, y = int(xs[i]), int(ys[i])
        boxes.append((x, y))
        inside[max(0, y - side - 8) : y + side + 8, max(0, x - side - 8) : x + side + 8] = False
    return boxes


# A nucleus: (cy, cx, semi-axis a, semi-axis b, angle, darkness, irregularity)
Nuclei = np.ndarray


def _lattice(side: int, spacing_x: float, spacing_y: float, hexagonal: bool, rng) -> np.ndarray:
    rows = np.arange(spacing_y / 2, side, spacing_y)
    pts = []
    for r, y in enumerate(rows):
        offset = spacing_x / 2 if hexagonal and r % 2 else 0.0
        for x in np.arange(spacing_x / 2 + offset, side, spacing_x):
            pts.append((y, x))
    pts = np.array(pts, np.float32)
    return pts + rng.normal(0, 0.06 * spacing_x, pts.shape)


def _nuclei(centers: np.ndarray, a, b, angle, darkness, irregularity=0.0) -> Nuclei:
    n = len(centers)
    cols = [np.broadcast_to(np.asarray(v, np.float32), (n,)) for v in (a, b, angle, darkness, irregularity)]
    return np.column_stack([centers[:, 0], centers[:, 1], *cols])


def _orderly(side: int, rng) -> Nuclei:
    """be_no_dysplasia: small round nuclei on a hexagonal lattice."""
    r = 4.0
    spacing = math.sqrt(math.pi * r * r / (_LESION_NUCLEAR_FRACTION * math.sqrt(3) / 2))
    c = _lattice(side, spacing, spacing * math.sqrt(3) / 2, True, rng)
    return _nuclei(c, r, r, 0.0, rng.uniform(0.9, 1.0, len(c)))


def _elongated(side: int, rng) -> Nuclei:
    """be_with_dysplasia: crowded, medium, elongated nuclei, aligned (pseudostratified)."""
    a, b = 10.0, 4.0
    direction = rng.uniform(0, np.pi)
    area = math.pi * a * b / _LESION_NUCLEAR_FRACTION
    sx, sy = math.sqrt(area * b / a), math.sqrt(area * a / b)  # spacing across and along the axis
    # Lay the lattice out in the nuclei's frame, rotate it, keep what falls in the box.
    big = int(side * 1.5)
    c = _lattice(big, sx, sy, True, rng) - big / 2
    cos, sin = math.cos(direction), math.sin(direction)
    rot = np.column_stack([c[:, 0] * cos + c[:, 1] * sin, -c[:, 0] * sin + c[:, 1] * cos]) + side / 2
    rot = rot[(rot >= -a).all(1) & (rot < side + a).all(1)]
    angles = direction + np.pi / 2 + rng.normal(0, 0.12, len(rot))
    return _nuclei(rot, a, b, angles, rng.uniform(0.9, 1.0, len(rot)))


def _pleomorphic(side: int, rng) -> Nuclei:
    """adenocarcinoma: large, irregular nuclei of varied size, in disorder."""
    nuclei, covered = [], 0.0
    while covered < _LESION_NUCLEAR_FRACTION * side * side:
        r = rng.uniform(11, 15)
        a, b = r * rng.uniform(1.0, 1.3), r / rng.uniform(1.0, 1.3)
        nuclei.append((*rng.uniform(0, side, 2), a, b, rng.uniform(0, np.pi), rng.uniform(0.85, 1.0), 0.2))
        covered += math.pi * a * b * 0.92  # overlaps are rare at this density
    return np.array(nuclei, np.float32)


def _aggregate(side: int, rng) -> Nuclei:
    """A lymphoid aggregate (normal): small round dense nuclei, randomly placed, as dark as a lesion."""
    r = 3.0
    n = int(_LESION_NUCLEAR_FRACTION * side * side / (math.pi * r * r) * 1.1)
    return _nuclei(rng.uniform(0, side, (n, 2)), r, r, 0.0, rng.uniform(0.9, 1.0, n))


_LESION_PATTERNS = {0: _aggregate, 1: _orderly, 2: _elongated, 3: _pleomorphic}


def _background_nuclei(where: np.ndarray, rng) -> Nuclei:
    """Sparse spindle-shaped fibroblasts and a few lymphocytes over the normal tissue."""
    area = float(where.sum())
    ys, xs = np.nonzero(where[::4, ::4])
    n_fib, n_lym = int(area * 0.05 / (math.pi * 7 * 2.2)), int(area * 0.012 / (math.pi * 3.5**2))
    pick = rng.integers(0, len(ys), n_fib + n_lym)
    centers = np.column_stack([ys[pick] * 4, xs[pick] * 4]).astype(np.float32) + rng.uniform(0, 4, (len(pick), 2))
    fib = _nuclei(centers[:n_fib], 7.0, 2.2, rng.uniform(0, np.pi, n_fib), rng.uniform(0.6, 0.9, n_fib))
    lym = _nuclei(centers[n_fib:], 3.5, 3.5, 0.0, rng.uniform(0.8, 1.0, n_lym))
    return np.concatenate([fib, lym])


def _draw_nuclei(canvas: np.ndarray, nuclei: Nuclei, clip: np.ndarray) -> None:
    """Draw soft-edged (possibly irregular) ellipses into a haematoxylin density map, in place."""
    height, width = canvas.shape
    for cy, cx, a, b, angle, darkness, irregular in nuclei:
        r = int(math.ceil(max(a, b) * (1 + irregular))) + 2
        iy, ix = int(cy), int(cx)
        y0, y1, x0, x1 = max(iy - r, 0), min(iy + r + 1, height), max(ix - r, 0), min(ix + r + 1, width)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = (xx * cos + yy * sin) / a, (-xx * sin + yy * cos) / b
        rho = np.sqrt(u * u + v * v)
        if irregular:
            phase = (cy * 7.3 + cx * 3.1) % (2 * np.pi)
            rho = rho / (1 + irregular * np.cos(3 * np.arctan2(v, u) + phase))
        value = np.clip((1 - rho) * min(a, b) + 0.5, 0, 1) * darkness  # about a 1 px soft edge
        value *= clip[y0:y1, x0:x1]
        np.maximum(canvas[y0:y1, x0:x1], value, out=canvas[y0:y1, x0:x1])


def _smooth_noise(height: int, width: int, rng, scale: int) -> np.ndarray:
    small = rng.random((height // scale + 2, width // scale + 2)).astype(np.float32)
    small = ndimage.gaussian_filter(small, 1.0)
    small = (small - small.min()) / (np.ptp(small) + 1e-6)
    return ndimage.zoom(small, scale, order=1)[:height, :width]


# --------------------------------------------------------------------------------------------- writing


def write_pyramidal_tiff(path: Path, image: np.ndarray, mpp: float, tile: int = 256) -> None:
    """A tiled, JPEG-compressed pyramid (2x per level down to <= 512 px) with the pixel size in the tags.

    Written to a temporary name and renamed, so a crash never leaves a truncated slide behind.
    """
    levels = [image]
    while max(levels[-1].shape[:2]) > 512:
        prev = levels[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        levels.append(prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).astype(np.uint8))
    options = dict(
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": 90},
        resolutionunit="CENTIMETER",
    )

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp) as tif:
            for i, level in enumerate(levels):
                pixels_per_cm = 1e4 / (mpp * 2**i)
                extra = {"subifds": len(levels) - 1} if i == 0 else {"subfiletype": 1}
                tif.write(level, resolution=(pixels_per_cm, pixels_per_cm), **extra, **options)

    write_atomic(path, write)


def lesions_to_geojson(lesions, classes: list[str] = CLASSES) -> dict:
    """Lesion boxes as QuPath exports annotations: Features with a Polygon and a classification."""
    features = []
    for cls, x0, y0, x1, y1 in lesions:
        name = classes[cls]
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
                },
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": CLASS_COLORS.get(name, [0, 0, 0])},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}
