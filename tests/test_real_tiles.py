"""The real-tile haystack (`python -m attnwsi.synth kind=real_tiles`, attnwsi/data/real_tiles.py) on the real
labelled H&E tiles of ../shared/data/tiles: its splits hold no source tile on two sides (checked by hashing the
files the slides were made of), its slides open with tiffslide at the stated pixel size, its outlines lie on
the tumour tiles, and a tiny one goes through preprocess -> train -> eval -> predict."""

import hashlib
import json
import time

import numpy as np
import pandas as pd
import pytest
from commands import Completed, run_command
from conftest import SHARED_DATA
from tiffslide import TiffSlide

from attnwsi.data.real_tiles import SOURCES, RealTileSpec, generate_real_tiles, load_tile, orient
from attnwsi.data.slides import open_slide, slide_mpp

TILES = SHARED_DATA / "tiles"
SMALL = dict(tumour_share=(0.1, 0.125), pieces=(1, 2))  # slides of 8-10 tiles: quick to write and read


def generate(out, source: str, n_slides: int, **options) -> RealTileSpec:
    spec = RealTileSpec(source=source, n_slides=n_slides, tiles_dir=str(TILES), **{**SMALL, **options})
    generate_real_tiles(out, spec)
    return spec


@pytest.fixture(scope="module")
def colon(tmp_path_factory):
    """A small LC25000 colon set, written once for the tests that only read it."""
    if not SHARED_DATA.exists():
        pytest.skip(f"real test tiles not found at {SHARED_DATA} (the project's ../shared folder)")
    out = tmp_path_factory.mktemp("colon")
    return out, generate(out, "lc25000_colon", 8)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_no_source_tile_is_in_two_splits(shared_data, tmp_path, source):
    spec = generate(tmp_path, source, 12)
    used = pd.read_csv(tmp_path / "tiles_used.csv")
    folder = spec.folder
    used["hashed"] = [sha256(folder / name) for name in used["file"]]  # the files' bytes, not the record
    assert (used["hashed"] == used["sha256"]).all()
    for role in ("tumour", "background"):
        rows = used[used["role"] == role]
        splits_per_image = rows.groupby("hashed")["split"].nunique()
        assert (splits_per_image == 1).all(), f"{role} tiles in two splits: {splits_per_image[splits_per_image > 1]}"
        assert set(rows["split"]) == {"train", "val", "test"}  # every split has its own tumour and background
    assert not set(used.loc[used["role"] == "tumour", "hashed"]) & set(
        used.loc[used["role"] == "background", "hashed"])
    # a slide's tiles are of its own split, the one the label sheet gives preprocess
    sheet = pd.read_csv(tmp_path / "labels.csv")
    assert list(sheet.columns) == ["slide_id", "patient_id", "label", "split"]
    assert (used["split"] == used["slide_id"].map(sheet.set_index("slide_id")["split"])).all()
    # every source tile's split: by group (no group on two sides), and the same as where it was used
    tiles = pd.read_csv(tmp_path / "tile_splits.csv")
    assert (tiles.groupby("group")["split"].nunique() == 1).all() and tiles["sha256"].is_unique
    assert (used["split"] == used["file"].map(tiles.set_index("file")["split"])).all()
    for split in ("train", "val", "test"):
        labels = set(sheet.loc[sheet["split"] == split, "label"])
        assert labels == {"normal", "tumor"}, split
    has_tumour = used[used["role"] == "tumour"].groupby("slide_id").size()
    assert set(has_tumour.index) == set(sheet.loc[sheet["label"] == "tumor", "slide_id"])
    if source == "crc_val_he_7k_subset":  # background of several classes
        assert used.loc[used["role"] == "background", "class"].nunique() >= 5


def test_the_same_seed_writes_the_same_data_set(shared_data, tmp_path, colon):
    out, spec = colon
    again = tmp_path / "again"
    generate(again, "lc25000_colon", 8)
    for name in ("labels.csv", "tiles_used.csv", "tile_splits.csv", "spec.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    first = sorted((out / "slides").iterdir())[0]
    assert sha256(again / "slides" / first.name) == sha256(first)
    other = tmp_path / "other"
    generate(other, "lc25000_colon", 8, seed=1)
    assert (other / "tiles_used.csv").read_bytes() != (out / "tiles_used.csv").read_bytes()


def test_slides_open_with_tiffslide_at_the_stated_pixel_size(shared_data, colon):
    out, spec = colon
    written = json.loads((out / "spec.json").read_text())
    assert written["mpp"] == spec.mpp == 0.8 and written["mpp_stated"] is False  # LC25000: the nominal one
    used = pd.read_csv(out / "tiles_used.csv")
    sheet = pd.read_csv(out / "labels.csv")
    for slide_id in sheet["slide_id"]:
        path = out / "slides" / f"{slide_id}.tiff"
        with TiffSlide(path) as slide:
            assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.8)
            assert float(slide.properties["tiffslide.mpp-y"]) == pytest.approx(0.8)
            assert slide.level_count >= 2 and slide.level_downsamples[1] == pytest.approx(2, rel=0.01)
            width, height = slide.dimensions
            tiles = used[used["slide_id"] == slide_id]
            assert (tiles["x"] + tiles["width"]).max() < width and (tiles["y"] + tiles["height"]).max() < height
            corner = np.asarray(slide.read_region((0, 0), 0, (32, 32)).convert("RGB"))
            assert corner.min() > 225  # glass around the tissue
        slide = open_slide(path)  # and the project's own reader
        assert slide_mpp(slide, path, None) == pytest.approx(0.8)
        slide.close()


def test_the_crc_set_is_written_at_its_stated_half_micrometre(shared_data, tmp_path):
    generate(tmp_path, "crc_val_he_7k_subset", 6)
    written = json.loads((tmp_path / "spec.json").read_text())
    assert written["mpp"] == 0.5 and written["mpp_stated"] is True
    with TiffSlide(next((tmp_path / "slides").iterdir())) as slide:
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)


def test_each_outline_lies_on_a_tumour_tile(shared_data, colon):
    out, spec = colon
    used = pd.read_csv(out / "tiles_used.csv")
    n_outlines = 0
    for slide_id, tiles in used.groupby("slide_id"):
        features = json.loads((out / "annotations" / f"{slide_id}.geojson").read_text())["features"]
        assert len(features) == (tiles["role"] == "tumour").sum()
        with TiffSlide(out / "slides" / f"{slide_id}.tiff") as slide:
            for feature in features:
                assert feature["properties"]["classification"]["name"] == "tumor"
                ring = np.array(feature["geometry"]["coordinates"][0])
                x0, y0 = ring.min(0)
                x1, y1 = ring.max(0)
                row = tiles[(tiles["x"] == x0) & (tiles["y"] == y0)].iloc[0]
                assert row["role"] == "tumour" and (x1 - x0, y1 - y0) == (row["width"], row["height"])
                under = np.asarray(slide.read_region((int(x0), int(y0)), 0, (int(x1 - x0), int(y1 - y0)))
                                   .convert("RGB"), float)
                source = orient(load_tile(spec.folder / row["file"]), int(row["rot90"]), bool(row["flip"]))
                error = np.abs(under - source).mean()
                assert error < 4, f"{slide_id}: the pixels under the outline differ from {row['file']} by {error:.1f}"
                # and the check bites: the same source tile unturned (or a neighbour) does not match
                other = tiles[tiles["role"] == "background"].iloc[0]
                wrong = orient(load_tile(spec.folder / other["file"]), int(other["rot90"]), bool(other["flip"]))
                assert np.abs(under - wrong).mean() > 10
                n_outlines += 1
    assert n_outlines >= 4


def run(module: str, *args: str, cache) -> Completed:
    proc = run_command(module, *args, cache=cache)
    assert "Traceback" not in proc.stderr
    return proc


@pytest.mark.slow  # five commands in a row (tests/commands.py), a minute on 2 cores
def test_a_tiny_real_tile_set_runs_through_preprocess_train_eval_predict(shared_data, tmp_path):
    gen, data, run_dir, cache = tmp_path / "gen", tmp_path / "data", tmp_path / "run", tmp_path / "cache"
    classes = "classes=[normal,tumor]"
    times = {}
    start = time.perf_counter()
    run("attnwsi.synth", "kind=real_tiles", "source=lc25000_colon", f"out={gen}", "n_slides=6", "workers=1",
        f"tiles_dir={TILES}", "tumour_share=[0.1,0.125]", "pieces=[1,2]", cache=cache)
    times["synth"] = time.perf_counter() - start
    sheet = pd.read_csv(gen / "labels.csv")
    assert set(sheet["label"]) == {"normal", "tumor"}

    start = time.perf_counter()
    run("attnwsi.preprocess", f"slides={gen / 'slides'}", f"labels={gen / 'labels.csv'}",
        f"annotations={gen / 'annotations'}", f"out={data}", classes, cache=cache)
    times["preprocess"] = time.perf_counter() - start
    manifest = pd.read_csv(data / "manifest.csv")
    split_of = sheet.set_index("slide_id")["split"]
    assert (manifest["split"] == manifest["slide_id"].map(split_of)).all()  # the generator's splits, kept
    tumour_slides = set(sheet.loc[sheet["label"] == "tumor", "slide_id"])
    assert set(manifest.loc[manifest["label"] == "tumor", "slide_id"]) == tumour_slides
    assert (manifest["mpp"] == 0.8).all()

    start = time.perf_counter()
    run("attnwsi.train", "data=slides", f"data.root={data}", "trainer.max_epochs=1", "ssl=none",
        "data.tile_um=64", "data.tile_px=32", "data.num_workers=0", f"hydra.run.dir={run_dir}", cache=cache)
    times["train"] = time.perf_counter() - start
    trained = json.loads((run_dir / "results.json").read_text())
    assert trained["classes"] == ["normal", "tumor"] and trained["test"]["n"] == (manifest["split"] == "test").sum()

    start = time.perf_counter()
    checkpoint = f"ckpt_path={trained['checkpoint']}"
    eval_dir = tmp_path / "eval"
    run("attnwsi.eval", checkpoint, f"data.root={data}", f"hydra.run.dir={eval_dir}", cache=cache)
    times["eval"] = time.perf_counter() - start
    assert json.loads((eval_dir / "results.json").read_text())["test"] == trained["test"]

    start = time.perf_counter()
    slide = sorted(tumour_slides)[0]
    out = tmp_path / "predictions"
    run("attnwsi.predict", checkpoint, f"slides=[{gen / 'slides' / f'{slide}.tiff'}]", f"out={out}", cache=cache)
    times["predict"] = time.perf_counter() - start
    predictions = pd.read_csv(out / "predictions.csv")
    assert set(predictions["prediction"]) <= {"normal", "tumor"} and (predictions["level"] == "slide").sum() == 1
    assert list((out / "heatmaps").rglob("*_mean.png"))
    print(" ".join(f"{k} {v:.0f} s" for k, v in times.items()))
