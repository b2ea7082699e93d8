"""The README's "Your own slides" commands, as written, on real slides with a two-class sheet (each command's
`main` in this process: tests/commands.py).

Real slides: CMU-1-Small-Region (OpenSlide test data, CC0) in ../shared/data/wsi/, as the Aperio SVS and as
the derived 5-level pyramidal TIFF; each serves several slide ids of the sheet (one patient each).
"""

import json

import pandas as pd
from commands import Completed, run_command

CLASSES = ["normal", "tumor"]


def run(tmp_path, module: str, *args: str) -> Completed:
    proc = run_command(module, *args, cache=tmp_path / "cache")
    assert "Traceback" not in proc.stderr
    return proc


def lesion_outline(x0: int, y0: int, x1: int, y1: int, name: str) -> dict:
    """A QuPath rectangle annotation (level-0 px) classified `name`."""
    corners = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [corners]},
            "properties": {"objectType": "annotation", "classification": {"name": name}}}


def test_the_own_slides_recipe_runs_as_written_on_real_slides(shared_data, tmp_path):
    files = {"normal": "CMU-1-Small-Region.svs", "tumor": "derived/CMU-1-Small-Region.pyramid.tiff"}
    rows = [dict(slide_id=f"{split}_{label}", patient_id=f"p_{split}_{label}", label=label, path=files[label],
                 split=split) for split in ("train", "val", "test") for label in CLASSES]
    sheet, data, run_dir = tmp_path / "labels.csv", tmp_path / "DATA", tmp_path / "runs" / "cpu"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    outlines = tmp_path / "GEOJSON_DIR"  # the "tumor" slides' lesion, outlined in QuPath (a rectangle)
    outlines.mkdir()
    for split in ("train", "val", "test"):
        collection = {"type": "FeatureCollection", "features": [lesion_outline(700, 900, 1500, 1600, "tumor")]}
        (outlines / f"{split}_tumor.geojson").write_text(json.dumps(collection))
    classes = "classes=[normal,tumor]"

    run(tmp_path, "attnwsi.preprocess", f"slides={shared_data / 'wsi'}", f"labels={sheet}", f"out={data}", classes,
        f"annotations={outlines}")
    manifest = pd.read_csv(data / "manifest.csv")
    assert set(manifest["label"]) == set(CLASSES) and set(manifest["split"]) == {"train", "val", "test"}
    assert sorted(p.name for p in (data / "annotations").iterdir()) == sorted(p.name for p in outlines.iterdir())

    run(tmp_path, "attnwsi.train", "+experiment=slides_cpu", f"data.root={data}", f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=1", "ssl.max_epochs=1", "ssl.tiles.max_tiles=256", "ssl.tiles.batch_size=64",
        "ssl.probe_tiles=0")
    trained = json.loads((run_dir / "results.json").read_text())
    assert trained["classes"] == CLASSES and trained["test"]["n"] == (manifest["split"] == "test").sum()

    eval_dir = tmp_path / "runs" / "cpu_eval"
    checkpoint = f"ckpt_path={trained['checkpoint']}"
    run(tmp_path, "attnwsi.eval", checkpoint, f"data.root={data}", f"hydra.run.dir={eval_dir}")
    assert json.loads((eval_dir / "results.json").read_text())["test"] == trained["test"]

    out = tmp_path / "predictions"
    run(tmp_path, "attnwsi.predict", checkpoint, f"slides=[{shared_data / 'wsi' / files['normal']}]", f"out={out}")
    predictions = pd.read_csv(out / "predictions.csv")
    assert set(predictions["prediction"]) <= set(CLASSES) and (predictions["level"] == "slide").sum() == 1
    assert list((out / "heatmaps").rglob("*_mean.png"))

    # 2c. the sliding-window baseline, learnt from the outlines; then eval and predict with it
    window_run = tmp_path / "runs" / "cpu_sliding_window"
    run(tmp_path, "attnwsi.train", "+experiment=slides_cpu_sliding_window", f"data.root={data}",
        f"hydra.run.dir={window_run}", "trainer.max_epochs=1", "data.crops_per_epoch=128", "data.val_crops=64")
    windowed = json.loads((window_run / "results.json").read_text())
    assert windowed["model"] == "sliding_window" and windowed["test"]["n"] == trained["test"]["n"]
    window_checkpoint = f"ckpt_path={windowed['checkpoint']}"
    window_eval = tmp_path / "runs" / "cpu_sliding_window_eval"
    run(tmp_path, "attnwsi.eval", window_checkpoint, f"data.root={data}", f"hydra.run.dir={window_eval}")
    assert json.loads((window_eval / "results.json").read_text())["test"] == windowed["test"]

    window_out = tmp_path / "window_predictions"
    run(tmp_path, "attnwsi.predict", window_checkpoint, f"manifest={data / 'manifest.csv'}", "split=test",
        f"out={window_out}")
    predictions = pd.read_csv(window_out / "predictions.csv")
    assert set(predictions["slide_id"]) == {"test_normal", "test_tumor"} and (predictions["n_tiles"] > 0).all()
    shares = predictions[[f"p_{c}" for c in CLASSES]].sum(axis=1)
    assert (((shares - 1).abs() < 1e-6) | (shares == 0)).all()  # the classes' shares of the confident windows
    assert list((window_out / "heatmaps" / "test_tumor").glob("*_lesion.png"))
    features = json.loads((window_out / "geojson" / "test_tumor.geojson").read_text())["features"]
    windows = [f for f in features if f["properties"]["objectType"] == "detection"]
    tumor_row = predictions[(predictions["slide_id"] == "test_tumor") & (predictions["level"] == "sub_image")]
    assert len(windows) == tumor_row["n_tiles"].sum() and set(windows[0]["properties"]["measurements"]) == {
        "p_normal", "p_tumor"}
    assert "test_tumor_0_lesion.png" in (window_out / "index.html").read_text()

    report = run(tmp_path, "attnwsi.report", str(tmp_path / "runs"), "--out", str(tmp_path / "runs"), "--draws", "20")
    assert "attention (2 runs)" in report.stdout and "sliding_window (2 runs)" in report.stdout
    assert (tmp_path / "runs" / "report.md").exists()
