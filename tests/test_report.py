"""The report over runs: Table 2 values as read, one column per model, bootstrap intervals, files written."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnwsi.metrics import METRICS, table2_of_labels
from attnwsi.report import bootstrap_mean_f1, main, report

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]


def fake_run(run_dir: Path, model: str, accuracy: float, seed: int) -> dict:
    """A run folder with predictions_test.csv and the results.json that those predictions give."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 60)
    predictions = np.where(rng.random(60) < accuracy, labels, rng.integers(0, 4, 60))
    frame = pd.DataFrame({"sub_image_id": [f"img_{i:03d}" for i in range(60)],
                          "label": [CLASSES[i] for i in labels],
                          "prediction": [CLASSES[i] for i in predictions]})
    table = table2_of_labels(labels, predictions, CLASSES)
    results = {"model": model, "classes": CLASSES, "checkpoint": "", "val": table, "test": table}
    run_dir.mkdir(parents=True)
    frame.to_csv(run_dir / "predictions_test.csv", index=False)
    (run_dir / "results.json").write_text(json.dumps(results))
    return results


def table_cells(markdown: str) -> dict[tuple[str, str], list[str]]:
    """(class, metric) -> the cells of the model columns."""
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    return {(r[0].strip(), r[1].strip()): [c.strip() for c in r[2:]] for r in rows[1:]}


def test_the_table_holds_the_values_of_the_results_it_read(tmp_path):
    results = fake_run(tmp_path / "run", "attention", 0.7, seed=0)
    cells = table_cells(report([tmp_path], draws=50))
    for cls in CLASSES:
        for metric in METRICS:
            assert cells[(cls, metric)] == [f"{results['test']['per_class'][cls][metric]:.2f}"]
    for metric in METRICS:
        assert cells[("mean", metric)] == [f"{results['test']['mean'][metric]:.2f}"]
    summary = pd.read_csv(tmp_path / "report.csv")
    f1 = summary[(summary["class"] == "be_with_dysplasia") & (summary["metric"] == "f1")]["mean"].item()
    assert f1 == pytest.approx(results["test"]["per_class"]["be_with_dysplasia"]["f1"])


def test_two_runs_of_two_models_give_one_column_per_model_with_mean_and_std(tmp_path, capsys):
    runs = {(model, seed): fake_run(tmp_path / "multirun" / f"{model}_{seed}", model, accuracy, seed)
            for model, accuracy in (("attention", 0.8), ("sliding_window", 0.5)) for seed in (1, 2)}
    main([str(tmp_path / "multirun"), "--out", str(tmp_path / "report"), "--draws", "50"])
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| class"))
    assert header == "| class | metric | attention (2 runs) | sliding_window (2 runs) |"
    cells = table_cells(printed)
    for k, model in enumerate(("attention", "sliding_window")):
        values = [runs[(model, seed)]["test"]["mean"]["f1"] for seed in (1, 2)]
        assert cells[("mean", "f1")][k] == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
    assert len(cells[("mean", "f1, 95 % CI (bootstrap)")]) == 2
    for name in ("report.md", "report.csv", "report.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_the_bootstrap_interval_contains_the_point_estimate_and_is_seeded(tmp_path):
    results = fake_run(tmp_path / "run", "attention", 0.6, seed=3)
    predictions = pd.read_csv(tmp_path / "run" / "predictions_test.csv")
    point, low, high = bootstrap_mean_f1([predictions], CLASSES, draws=300, seed=0)
    assert point == pytest.approx(results["test"]["mean"]["f1"])
    assert low < point < high and high - low < 0.5
    assert bootstrap_mean_f1([predictions], CLASSES, draws=300, seed=0) == (point, low, high)


def test_named_folders_give_two_variants_of_one_model_a_column_each(tmp_path, capsys):
    for seed in (1, 2):
        fake_run(tmp_path / "he" / f"s{seed}", "sliding_window", 0.8, seed)
        fake_run(tmp_path / "ssl" / f"s{seed}", "sliding_window", 0.5, seed + 10)
    fake_run(tmp_path / "seed=3", "attention", 0.6, 3)  # a folder whose name holds "=" is a folder
    main([f"window, He={tmp_path / 'he'}", f"window, SimCLR={tmp_path / 'ssl'}", str(tmp_path / "seed=3"),
          "--out", str(tmp_path / "report"), "--draws", "20"])
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| class"))
    assert header == "| class | metric | window, He (2 runs) | window, SimCLR (2 runs) | attention (1 run) |"
    summary = pd.read_csv(tmp_path / "report" / "report.csv")
    assert set(summary["model"]) == {"window, He", "window, SimCLR", "attention"}
