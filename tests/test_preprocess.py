"""The real-slide pipeline: label sheets, tissue sub-images, splits, labels from annotations, the entry point.

Real slides: CMU-1-Small-Region (OpenSlide test data, CC0) in ../shared/data/wsi/, as the Aperio SVS and
as derived/CMU-1-Small-Region.pyramid.tiff (the same pixels in a 5-level tiled TIFF).
"""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from commands import run_command

from attnwsi.data.manifest import MANIFEST_COLUMNS, build_manifest, make_dataset
from attnwsi.data.slides import open_slide, read_region
from attnwsi.data.synthetic import CLASSES, HaystackSpec, generate_haystack, write_pyramidal_tiff
from attnwsi.data.tissue import tissue_mask


def tissue_image(size: int = 400) -> np.ndarray:
    """Glass with one square tissue piece of 3/4 the side."""
    image = np.full((size, size, 3), 245, np.uint8)
    image[size // 8 : size * 7 // 8, size // 8 : size * 7 // 8] = (200, 110, 160)
    return image


def write_labels(path, rows: list[dict]):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_real_slides_give_sub_images_that_cover_the_tissue(shared_data, tmp_path):
    labels = write_labels(tmp_path / "labels.csv", [
        dict(slide_id="cmu_svs", patient_id="p1", label="normal", path="CMU-1-Small-Region.svs",
             split="train"),
        dict(slide_id="cmu_pyramid", patient_id="p2", label="adenocarcinoma",
             path="derived/CMU-1-Small-Region.pyramid.tiff", split="val"),
    ])
    result = make_dataset(str(shared_data / "wsi"), str(labels), str(tmp_path / "out"), CLASSES)
    assert not result.failures and not result.warnings
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert set(manifest["slide_id"]) == {"cmu_svs", "cmu_pyramid"}
    assert manifest.groupby("slide_id")["label"].unique().map(list).to_dict() == {
        "cmu_svs": ["normal"], "cmu_pyramid": ["adenocarcinoma"]}  # no annotations: the slide's label
    for slide_id, rows in manifest.groupby("slide_id"):
        slide = open_slide(rows["slide_path"].iloc[0])
        width, height = slide.dimensions
        assert (rows.x >= 0).all() and (rows.y >= 0).all()
        assert (rows.x + rows.width <= width).all() and (rows.y + rows.height <= height).all()
        assert rows["mpp"].eq(0.499).all()
        # A finer mask than preprocess used: its pixels (as level-0 points) must lie in the boxes.
        mask = tissue_mask(read_region(slide, (0, 0, width, height), 0.499, 2.0), mpp=2.0)
        ys, xs = np.nonzero(mask)
        xs, ys = (xs + 0.5) * width / mask.shape[1], (ys + 0.5) * height / mask.shape[0]
        inside = np.zeros(len(xs), bool)
        for row in rows.itertuples():
            inside |= (xs >= row.x) & (xs < row.x + row.width) & (ys >= row.y) & (ys < row.y + row.height)
        assert mask.mean() > 0.2 and inside.mean() >= 0.95, slide_id
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert np.isfinite(stats["mean"] + stats["std"]).all() and stats["n_pixels"] > 10_000
    assert all(0.3 < m < 0.8 for m in stats["mean"]) and all(0.05 < s < 0.4 for s in stats["std"])
    assert sorted(p.name for p in (tmp_path / "out" / "qa").iterdir()) == ["cmu_pyramid.png", "cmu_svs.png"]
    distribution = pd.read_csv(tmp_path / "out" / "class_distribution.csv").set_index("class")
    assert distribution.loc["total", "all_n"] == len(manifest)
    assert distribution.loc["normal", "train_n"] == (manifest["label"] == "normal").sum()


def test_a_slide_without_a_pixel_size_needs_one_from_the_sheet_or_the_command_line(tmp_path):
    (tmp_path / "slides").mkdir()
    tifffile.imwrite(tmp_path / "slides" / "no_mpp.tiff", tissue_image(), tile=(256, 256), photometric="rgb")
    labels = write_labels(tmp_path / "labels.csv", [dict(slide_id="no_mpp", patient_id="p1", label="normal")])
    result = build_manifest(tmp_path / "slides", labels, CLASSES)
    assert result.manifest.empty
    reason = result.failures["no_mpp"]
    assert "no_mpp.tiff" in reason and "`mpp` column" in reason and "default_mpp=" in reason
    manifest = build_manifest(tmp_path / "slides", labels, CLASSES, default_mpp=0.5).manifest
    assert manifest["mpp"].tolist() == [0.5]
    with_mpp = write_labels(tmp_path / "with_mpp.csv",
                            [dict(slide_id="no_mpp", patient_id="p1", label="normal", mpp=0.25)])
    manifest = build_manifest(tmp_path / "slides", with_mpp, CLASSES, default_mpp=0.5).manifest
    assert manifest["mpp"].tolist() == [0.25]  # the sheet's mpp comes before the command line's


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """50 patients with 1-3 slides each, all rows pointing at one small slide file."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "slides").mkdir()
    write_pyramidal_tiff(root / "slides" / "tissue.tiff", tissue_image(), mpp=0.5)
    rng = np.random.default_rng(0)
    rows = [dict(slide_id=f"s{patient}_{k}", patient_id=f"p{patient}", label=CLASSES[rng.integers(4)],
                 path="tissue.tiff") for patient in range(50) for k in range(rng.integers(1, 4))]
    return root, pd.DataFrame(rows)


def test_splits_keep_patients_together_and_are_deterministic(cohort):
    root, rows = cohort
    labels = write_labels(root / "labels.csv", rows.to_dict("records"))
    fractions = dict(test_fraction=0.25, val_fraction=0.2)
    manifest = build_manifest(root / "slides", labels, CLASSES, **fractions, seed=3).manifest
    assert len(manifest) == len(rows)  # one tissue piece per slide
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
    per_patient = manifest.groupby("patient_id")["split"].first()
    assert set(per_patient) == {"train", "val", "test"}
    assert (per_patient == "test").mean() == pytest.approx(0.25, abs=0.06)
    again = build_manifest(root / "slides", labels, CLASSES, **fractions, seed=3).manifest
    pd.testing.assert_frame_equal(manifest, again)
    other = build_manifest(root / "slides", labels, CLASSES, **fractions, seed=4).manifest
    assert not manifest["split"].equals(other["split"])


def test_a_split_column_is_respected_and_checked(cohort):
    root, rows = cohort
    patient_split = {p: ["train", "val", "test"][i % 3] for i, p in enumerate(rows["patient_id"].unique())}
    given = rows.assign(split=rows["patient_id"].map(patient_split))
    labels = write_labels(root / "split.csv", given.to_dict("records"))
    manifest = build_manifest(root / "slides", labels, CLASSES).manifest
    assert manifest.set_index("slide_id")["split"].to_dict() == given.set_index("slide_id")["split"].to_dict()
    first, second = given.index[given["patient_id"] == given["patient_id"].value_counts().index[0]][:2]
    leaking = given.copy()
    leaking.loc[first, "split"], leaking.loc[second, "split"] = "train", "test"
    with pytest.raises(ValueError, match="more than one split"):
        build_manifest(root / "slides", write_labels(root / "leak.csv", leaking.to_dict("records")), CLASSES)


def test_sub_images_of_the_synthetic_haystack_reproduce_its_labels(tmp_path):
    spec = HaystackSpec(n_slides=16, seed=1, slide_px=(700, 900), lesion_px=60, decoy_prob=0.5,
                        multi_piece_prob=0.5)
    root = generate_haystack(tmp_path / "haystack", spec)
    labels = pd.read_csv(root / "labels.csv").set_index("slide_id")["label"]
    unannotated = labels[labels == "adenocarcinoma"].index[0]
    lesions = {slide_id: json.loads((root / "annotations" / f"{slide_id}.geojson").read_text())["features"]
               for slide_id in labels.index}
    (root / "annotations" / f"{unannotated}.geojson").unlink()
    result = build_manifest(root / "slides", root / "labels.csv", CLASSES, root / "annotations")
    assert not result.failures and not result.warnings
    manifest = result.manifest
    highest = manifest.groupby("slide_id")["label"].agg(lambda names: max(names, key=CLASSES.index))
    pd.testing.assert_series_equal(highest.sort_index(), labels.sort_index(), check_names=False)
    assert set(manifest.groupby("slide_id").size()) == {1, 2}  # one sub-image per tissue piece
    assert (manifest.loc[manifest["slide_id"] == unannotated, "label"] == "adenocarcinoma").all()
    two_pieces_with_a_lesion = 0
    for slide_id, rows in manifest[manifest["slide_id"] != unannotated].groupby("slide_id"):
        touched = {}
        for feature in lesions[slide_id]:
            (x0, y0), (x1, y1) = np.min(feature["geometry"]["coordinates"][0], 0), np.max(
                feature["geometry"]["coordinates"][0], 0)
            holding = rows[(rows.x <= x0) & (rows.y <= y0) & (rows.x + rows.width >= x1) &
                           (rows.y + rows.height >= y1)]
            assert len(holding) == 1  # each lesion lies in exactly one piece's sub-image
            name = feature["properties"]["classification"]["name"]
            sub_image = holding["sub_image_id"].iloc[0]
            touched[sub_image] = max(touched.get(sub_image, "normal"), name, key=CLASSES.index)
        assert rows.set_index("sub_image_id")["label"].to_dict() == {s: touched.get(s, "normal")
                                                                     for s in rows["sub_image_id"]}
        two_pieces_with_a_lesion += len(rows) == 2 and bool(touched)
    assert two_pieces_with_a_lesion >= 1  # the case that matters: the other piece is normal


def test_the_entry_point_skips_bad_slides_writes_the_others_and_exits_non_zero(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("good_a", "good_b"):
        write_pyramidal_tiff(slides / f"{name}.tiff", tissue_image(), mpp=0.5)
    (slides / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 8)  # a corrupt file
    write_pyramidal_tiff(slides / "blank.tiff", np.full((400, 400, 3), 245, np.uint8), mpp=0.5)  # no tissue
    labels = write_labels(tmp_path / "labels.csv", [
        dict(slide_id="good_a", patient_id="p1", label="normal"),
        dict(slide_id="broken", patient_id="p2", label="normal"),
        dict(slide_id="good_b", patient_id="p3", label="adenocarcinoma"),
        dict(slide_id="blank", patient_id="p4", label="normal"),
    ])
    out = tmp_path / "out"
    proc = run_command("attnwsi.preprocess", f"slides={slides}", f"labels={labels}", f"out={out}", "split_seed=1",
                       check=False, cwd=tmp_path, COLUMNS="200")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 of 4 slides failed" in proc.stdout
    assert "broken: " in proc.stdout and "broken.svs: cannot read this slide" in proc.stdout
    assert "blank: " in proc.stdout and "blank.tiff: no tissue found" in proc.stdout
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(manifest["slide_id"]) == ["good_a", "good_b"]
    assert sorted(p.name for p in (out / "qa").iterdir()) == ["blank.png", "good_a.png", "good_b.png"]
    assert (out / "class_distribution.csv").exists()
    assert not list(out.rglob("*.tmp")) and not (tmp_path / "preprocess.log").exists()
