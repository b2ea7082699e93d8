"""The README's "Your own slides" commands, as written, on real slides with a two-class sheet.

Real slides: CMU-1-Small-Region (OpenSlide test data, CC0) in ../shared/data/wsi/, as the Aperio SVS and as
the derived 5-level pyramidal TIFF; each serves several slide ids of the sheet (one patient each).
"""

import json
import os
import subprocess
import sys

import pandas as pd
from conftest import REPO

CLASSES = ["normal", "tumor"]


def run(tmp_path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATTNWSI_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=900,
                          env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr
    return proc


def test_the_own_slides_recipe_runs_as_written_on_real_slides(shared_data, tmp_path):
    files = {"normal": "CMU-1-Small-Region.svs", "tumor": "derived/CMU-1-Small-Region.pyramid.tiff"}
    rows = [dict(slide_id=f"{split}_{label}", patient_id=f"p_{split}_{label}", label=label, path=files[label],
                 split=split) for split in ("train", "val", "test") for label in CLASSES]
    sheet, data, run_dir = tmp_path / "labels.csv", tmp_path / "DATA", tmp_path / "runs" / "cpu"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    classes = "classes=[normal,tumor]"

    run(tmp_path, "attnwsi.preprocess", f"slides={shared_data / 'wsi'}", f"labels={sheet}", f"out={data}", classes)
    manifest = pd.read_csv(data / "manifest.csv")
    assert set(manifest["label"]) == set(CLASSES) and set(manifest["split"]) == {"train", "val", "test"}

    run(tmp_path, "attnwsi.train", "+experiment=slides_cpu", f"data.root={data}", classes, f"hydra.run.dir={run_dir}",
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

    report = run(tmp_path, "attnwsi.report", str(tmp_path / "runs"), "--out", str(tmp_path / "runs"), "--draws", "20")
    assert "attention (2 runs)" in report.stdout and (tmp_path / "runs" / "report.md").exists()
