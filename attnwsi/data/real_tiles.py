"""A haystack made of real H&E tiles: slides of real non-tumour tissue with one or a few real tumour tiles.

`generate_real_tiles` builds slides from the labelled tiles in the project's `../shared/data/tiles/`
(read there, never copied into the project; see `../shared/data/SOURCES.md`, sections 2 and 4), from one
source set per data set, never pooled (the sets come from different labs and magnifications):

    crc_val_he_7k_subset  CRC-VAL-HE-7K (Kather 2018, CC BY 4.0): 32 tiles of 224 px at 0.5 um/px (stated by
                          the data set); tumour = TUM (4 tiles), background = ADI, DEB, LYM, MUC, MUS, NORM, STR
    lc25000_colon         LC25000 colon, 224 px: tumour = colon_aca, background = colon_n (benign)
    lc25000_lung          LC25000 lung, 224 px: tumour = lung_aca and lung_scc, background = lung_n (benign)

Resolution: the slides are written at the tiles' own pixels (no resampling), with a level-0 pixel size in
the TIFF's resolution tags. LC25000 states none (its 768-px originals were downscaled to 224 px by a third
party), so a **nominal** one is written: 0.8 um/px for colon and 0.7 um/px for lung, estimated by eye from
structure sizes (red cells of about 7.5 um span about 11 px in the lung tiles; normal colonic crypts span
about 115 px against about 175 px in the CRC-VAL-HE-7K tiles at 0.5 um/px), so rough (perhaps +-30 %).
`source_mpp` overrides it.

A slide: one or a few tissue pieces on white glass, each a compact, irregular block of whole tiles (several
tiles across), the pieces side by side with glass between them. Every tile is a non-tumour tile of the
slide's split (of several classes where the set has them), in a random 90-degree rotation and flip;
a positive ("tumor") slide has one or a few of them replaced by tumour tiles, at `tumour_share` of its
tissue tiles. Negative slides draw their size the same way, so tissue area does not give the label away.
Each tumour tile is outlined (QuPath GeoJSON, class "tumor", its tile's square).

Splits: the source tiles (tumour and background alike) are split disjointly into train, val and test, per
class, by the set's recorded group (LC25000's `lc25000_group`: one group per original field, augmented
copies included) and by tile where it has none; a slide of a split uses only its split's tiles, and the
label sheet carries the split in its `split` column, which `preprocess` honours instead of drawing splits.
So the test measures recognising unseen tumour, not remembering a tile.

Written into `out/`, as the synthetic haystack (`attnwsi.data.synthetic`): `slides/*.tiff` (tiled JPEG
pyramids), `annotations/*.geojson`, `labels.csv` (slide_id, patient_id, label, split), and besides
`tiles_used.csv` (which source file went where: slide, split, role, sha256, level-0 box, rotation, flip),
`tile_splits.csv` (every source tile's split: pretrain on the train/val tiles only) and `spec.json` (last:
its presence marks a complete data set). Everything is deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from attnwsi.console import UserError
from attnwsi.data.layout import DataRoot
from attnwsi.data.synthetic import lesions_to_geojson, run_jobs, write_pyramidal_tiff
from attnwsi.io import write_csv_atomic, write_json_atomic

CLASSES = ["normal", "tumor"]
SPLITS = ("train", "val", "test")
DEFAULT_TILES_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "tiles"


class RealTileError(UserError, ValueError):
    """A setting or a tile folder that cannot make a real-tile data set; the message says what to change."""


@dataclass(frozen=True)
class TileSet:
    """A source set: its folder under the tiles folder, its label sheet's columns, its tumour classes."""

    folder: str
    file_column: str
    class_column: str
    tumour_classes: tuple[str, ...]
    mpp: float
    mpp_stated: bool  # False: a nominal pixel size (the set records none)
    group_column: str | None = None
    excluded: tuple[str, ...] = ()


SOURCES = {
    "crc_val_he_7k_subset": TileSet("crc_val_he_7k_subset", "filename", "label", ("TUM",), 0.5, True),
    "lc25000_colon": TileSet("lc25000_colon_224", "file", "class", ("colon_aca",), 0.8, False, "lc25000_group"),
    "lc25000_lung": TileSet("lc25000_lung_224", "file", "class", ("lung_aca", "lung_scc"), 0.7, False,
                            "lc25000_group"),
}


@dataclass
class RealTileSpec:
    """What to generate (see the module docstring). Fractions of tiles and slides; sizes in whole tiles."""

    source: str = "lc25000_colon"
    n_slides: int = 120
    seed: int = 0
    tiles_dir: str | None = None  # None: the project's ../shared/data/tiles
    source_mpp: float | None = None  # level-0 um/px written into the TIFFs; None: the set's (nominal if unknown)
    positive_fraction: float = 0.5  # of the slides of each split, "tumor"
    tumour_tiles: tuple[int, int] = (1, 1)  # tumour tiles in a positive slide, drawn uniformly from this range
    tumour_share: tuple[float, float] = (1 / 64, 1 / 20)  # tumour tiles / tissue tiles, log-uniform in this
    pieces: tuple[int, int] = (1, 3)  # tissue pieces per slide, drawn uniformly (each of >= min_piece_tiles)
    min_piece_tiles: int = 4
    test_fraction: float = 0.25  # of each class's tile groups, and of the slides
    val_fraction: float = 0.2  # of the rest (the development tiles and slides)
    orient: bool = True  # each tile in a random 90-degree rotation and flip
    classes: list[str] = field(default_factory=lambda: list(CLASSES))  # names of non-tumour, tumour

    def __post_init__(self):
        self.tumour_tiles, self.tumour_share, self.pieces = (tuple(v) for v in
                                                             (self.tumour_tiles, self.tumour_share, self.pieces))
        if self.source not in SOURCES:
            raise RealTileError(f"source={self.source!r}: not a known tile set; pick one of {sorted(SOURCES)}")
        if len(self.classes) != 2:
            raise RealTileError(f"classes={self.classes}: a real-tile set has two, non-tumour and tumour "
                             "(e.g. classes=[normal,tumor])")
        if self.n_slides < 6:
            raise RealTileError(f"n_slides={self.n_slides}: at least 6 (a negative and a positive slide per split)")
        if not 0 < self.tumour_share[0] <= self.tumour_share[1] < 1:
            raise RealTileError(f"tumour_share={list(self.tumour_share)}: a range within (0, 1)")

    @property
    def tile_set(self) -> TileSet:
        return SOURCES[self.source]

    @property
    def folder(self) -> Path:
        return Path(self.tiles_dir or DEFAULT_TILES_DIR) / self.tile_set.folder

    @property
    def mpp(self) -> float:
        return float(self.source_mpp or self.tile_set.mpp)


# ------------------------------------------------------------------------------------- source tiles


def read_tiles(spec: RealTileSpec) -> pd.DataFrame:
    """The set's tiles: file, class, tumour (bool), group, sha256 (of the file's bytes), split."""
    tile_set, folder = spec.tile_set, spec.folder
    sheet = folder / "labels.csv"
    if not sheet.exists():
        raise RealTileError(f"{sheet}: not found; the real tiles live in ../shared/data/tiles (give "
                                "tiles_dir=DIR where they are elsewhere)")
    labels = pd.read_csv(sheet, dtype=str)
    labels = labels[~labels[tile_set.class_column].isin(tile_set.excluded)]
    files = labels[tile_set.file_column]
    groups = labels[tile_set.group_column] if tile_set.group_column else files
    tiles = pd.DataFrame({"file": files.values, "class": labels[tile_set.class_column].values,
                          "group": groups.fillna(files).values})
    tiles["tumour"] = tiles["class"].isin(tile_set.tumour_classes)
    tiles["sha256"] = [hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in tiles["file"]]
    tiles = tiles.sort_values("file", ignore_index=True)
    tiles["split"] = split_groups(tiles, spec.test_fraction, spec.val_fraction,
                                  np.random.default_rng([spec.seed, 0]))
    return tiles


def split_groups(tiles: pd.DataFrame, test_fraction: float, val_fraction: float,
                 rng: np.random.Generator) -> pd.Series:
    """train/val/test per tile, by group (no group in two splits), within each class: every class has at
    least one group in each split (a class needs three groups)."""
    split_of: dict[str, str] = {}
    for name, members in tiles.groupby("class", sort=True):
        groups = sorted(set(members["group"]))
        if len(groups) < 3:
            raise RealTileError(f"class {name!r} has {len(groups)} tile group(s); three are needed, one per split")
        rng.shuffle(groups)
        n_test = min(max(1, round(len(groups) * test_fraction)), len(groups) - 2)
        n_val = min(max(1, round((len(groups) - n_test) * val_fraction)), len(groups) - n_test - 1)
        for i, group in enumerate(groups):
            if group in split_of:
                raise ValueError(f"tile group {group!r} holds tiles of more than one class")
            split_of[group] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return tiles["group"].map(split_of)


# ------------------------------------------------------------------------------------- slide plans


@dataclass
class PlacedTile:
    file: str
    role: str  # "tumour" or "background"
    x: int  # level-0 top-left corner
    y: int
    rot90: int  # counter-clockwise quarter turns (np.rot90), applied after the flip
    flip: bool  # left-right
    piece: int


@dataclass
class SlidePlan:
    slide_id: str
    split: str
    label: int
    width: int
    height: int
    tiles: list[PlacedTile]


def _piece_cells(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n grid cells (row, col) forming a compact, irregular, 4-connected piece, shifted to start at 0."""
    cells = {(0, 0)}
    while len(cells) < n:
        frontier = sorted({(r + dr, c + dc) for r, c in cells for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))}
                          - cells)
        weights = np.array([sum((r + dr, c + dc) in cells for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)))
                            for r, c in frontier], float) ** 3
        cells.add(frontier[int(rng.choice(len(frontier), p=weights / weights.sum()))])
    r0, c0 = min(r for r, _ in cells), min(c for _, c in cells)
    return sorted((r - r0, c - c0) for r, c in cells)


def _split_count(total: int, parts: int, minimum: int, rng: np.random.Generator) -> list[int]:
    """`total` as `parts` random counts of at least `minimum` each."""
    extra = rng.multinomial(total - parts * minimum, np.ones(parts) / parts)
    return [minimum + int(e) for e in extra]


def plan_slide(slide_id: str, split: str, label: int, background: list[str], tumour: list[str],
               tile_px: int, spec: RealTileSpec, rng: np.random.Generator) -> SlidePlan:
    """Where each tile of one slide goes. `background` and `tumour` are its split's source files."""
    lo, hi = spec.tumour_tiles
    n_tumour = int(rng.integers(lo, hi + 1))
    share = math.exp(rng.uniform(math.log(spec.tumour_share[0]), math.log(spec.tumour_share[1])))
    n_tissue = max(n_tumour + spec.min_piece_tiles, round(n_tumour / share))  # drawn alike for every slide
    n_pieces = max(1, min(int(rng.integers(spec.pieces[0], spec.pieces[1] + 1)), n_tissue // spec.min_piece_tiles))
    sizes = _split_count(n_tissue, n_pieces, spec.min_piece_tiles, rng)
    pieces = [_piece_cells(size, rng) for size in sizes]

    margin = gap = tile_px // 2  # glass around and between the pieces
    heights = [1 + max(r for r, _ in cells) for cells in pieces]
    height = 2 * margin + max(heights) * tile_px
    cells_at = []  # (piece, level-0 x, y) of every tissue cell
    x = margin
    for k, cells in enumerate(pieces):
        y = margin + int(rng.integers(0, (max(heights) - heights[k]) * tile_px + 1))
        cells_at += [(k, x + c * tile_px, y + r * tile_px) for r, c in cells]
        x += (1 + max(c for _, c in cells)) * tile_px + gap
    width = x - gap + margin

    roles = ["background"] * len(cells_at)
    if label == 1:
        for i in rng.choice(len(cells_at), size=n_tumour, replace=False):
            roles[int(i)] = "tumour"
    picks = {"background": _draw(background, roles.count("background"), rng),
             "tumour": _draw(tumour, roles.count("tumour"), rng)}
    placed = []
    for (piece, tx, ty), role in zip(cells_at, roles, strict=True):
        rot90, flip = (int(rng.integers(4)), bool(rng.integers(2))) if spec.orient else (0, False)
        placed.append(PlacedTile(picks[role].pop(), role, tx, ty, rot90, flip, piece))
    return SlidePlan(slide_id, split, label, width, height, placed)


def _draw(files: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """n files, without repeats as long as there are enough (then each file about equally often)."""
    drawn: list[str] = []
    while len(drawn) < n:
        drawn += [files[i] for i in rng.permutation(len(files))]
    return drawn[:n]


def orient(tile: np.ndarray, rot90: int, flip: bool) -> np.ndarray:
    """A source tile as placed: flipped left-right (if `flip`), then turned `rot90` quarter turns."""
    return np.rot90(tile[:, ::-1] if flip else tile, rot90)


def load_tile(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------------------------------- writing


def generate_real_tiles(out: str | Path, spec: RealTileSpec, workers: int = 1) -> Path:
    """Write the data set into `out` (see the module docstring); returns its path."""
    root = DataRoot(out)
    tiles = read_tiles(spec)
    tile_px = _tile_size(spec.folder, tiles["file"])
    rng = np.random.default_rng([spec.seed, 1])
    split_of_slide = _slide_splits(spec.n_slides, spec.test_fraction, spec.val_fraction, rng)
    labels = np.zeros(spec.n_slides, int)
    for split in SPLITS:
        members = np.flatnonzero(split_of_slide == split)
        n_positive = min(max(1, round(len(members) * spec.positive_fraction)), len(members) - 1)
        labels[rng.choice(members, size=n_positive, replace=False)] = 1
    pools = {(split, tumour): sorted(tiles.loc[(tiles["split"] == split) & (tiles["tumour"] == tumour), "file"])
             for split in SPLITS for tumour in (False, True)}
    slide_seeds = rng.integers(0, 2**63 - 1, size=spec.n_slides)
    plans = [plan_slide(f"{spec.source}_{i:04d}", str(split_of_slide[i]), int(labels[i]),
                        pools[split_of_slide[i], False], pools[split_of_slide[i], True], tile_px, spec,
                        np.random.default_rng(int(slide_seeds[i])))
             for i in range(spec.n_slides)]

    root.slides.mkdir(parents=True, exist_ok=True)
    root.annotations.mkdir(parents=True, exist_ok=True)
    jobs = [(root, plan, spec, tile_px) for plan in plans]
    run_jobs(_write_slide_job, jobs, workers, chunksize=2)

    info = tiles.set_index("file")
    used = [dict(slide_id=plan.slide_id, split=plan.split, role=t.role, file=t.file,
                 **{"class": info.at[t.file, "class"]}, group=info.at[t.file, "group"],
                 sha256=info.at[t.file, "sha256"], x=t.x, y=t.y, width=tile_px, height=tile_px, rot90=t.rot90,
                 flip=int(t.flip), piece=t.piece)
            for plan in plans for t in plan.tiles]
    write_csv_atomic(pd.DataFrame(used), root.path / "tiles_used.csv")
    write_csv_atomic(tiles[["file", "class", "tumour", "group", "sha256", "split"]].assign(
        tumour=tiles["tumour"].astype(int)), root.path / "tile_splits.csv")
    sheet = pd.DataFrame({"slide_id": [p.slide_id for p in plans],
                          "patient_id": [f"patient_{i:04d}" for i in range(spec.n_slides)],
                          "label": [spec.classes[p.label] for p in plans], "split": [p.split for p in plans]})
    write_csv_atomic(sheet, root.labels)
    written = {"kind": "real_tiles", **asdict(spec), "tiles_dir": str(spec.folder.parent), "mpp": spec.mpp,
               "mpp_stated": spec.tile_set.mpp_stated or spec.source_mpp is not None, "tile_px": tile_px}
    write_json_atomic(root.spec, written)  # last: its presence marks a complete data set
    return root.path


def _tile_size(folder: Path, files) -> int:
    sizes = set()
    for name in files:
        with Image.open(folder / name) as image:
            sizes.add(image.size)
    if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
        raise ValueError(f"{folder}: the tiles must all be the same square size, found {sorted(sizes)}")
    return next(iter(sizes))[0]


def _slide_splits(n: int, test_fraction: float, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Each slide's split, in random order: at least two slides (a negative and a positive) per split."""
    n_test = min(max(2, round(n * test_fraction)), n - 4)
    n_val = min(max(2, round((n - n_test) * val_fraction)), n - n_test - 2)
    splits = np.array(["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val))
    rng.shuffle(splits)
    return splits


def render_slide(plan: SlidePlan, folder: Path, tile_px: int, seed: int = 0) -> np.ndarray:
    """The slide's level-0 RGB image: glass (near-white, slightly noisy) with its tiles pasted in."""
    rng = np.random.default_rng(seed)
    image = 255.0 * (0.965 + 0.02 * rng.random((plan.height, plan.width, 1)))
    image = np.repeat(image.astype(np.uint8), 3, axis=2)
    for t in plan.tiles:
        image[t.y : t.y + tile_px, t.x : t.x + tile_px] = orient(load_tile(folder / t.file), t.rot90, t.flip)
    return image


def _write_slide_job(job) -> None:
    root, plan, spec, tile_px = job
    seed = int(hashlib.sha256(f"{spec.seed}:{plan.slide_id}".encode()).hexdigest()[:15], 16)
    image = render_slide(plan, spec.folder, tile_px, seed)
    write_pyramidal_tiff(root.slides / f"{plan.slide_id}.tiff", image, spec.mpp)
    lesions = [(1, t.x, t.y, t.x + tile_px, t.y + tile_px) for t in plan.tiles if t.role == "tumour"]
    write_json_atomic(root.annotation(plan.slide_id), lesions_to_geojson(lesions, spec.classes), indent=None)
