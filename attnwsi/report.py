"""python -m attnwsi.report [NAME=]RUN_OR_MULTIRUN_DIR... [--out DIR] [--draws 1000] [--seed 0]

Finds every `results.json` below the given folders (single runs or Hydra multiruns) and compares the
models on the test split like the paper's Table 2: per class accuracy, recall, precision and F1, then their
unweighted means; one column per model ("model" in results.json), mean ± standard deviation over its runs
(seeds). A folder given as NAME=FOLDER puts its runs in a column of that name instead, so two variants of one
model (say the sliding window from two initializations) get a column each. Adds a bootstrap 95 % confidence
interval of the test mean F1 from each run's `predictions_test.csv`: test images are resampled with
replacement (`--draws` times, seeded), the mean F1 is averaged over the column's runs in every draw, and the
2.5th and 97.5th percentiles are the interval.

Writes `report.md`, `report.csv` (tidy: model, class, metric, mean, std, runs) and `report.png` (grouped
bars) into `--out`, by default the first folder, and prints the table.

Plain argparse, not Hydra: the command only takes existing folders and writes beside them; Hydra would add
a run directory and config composition that a report has no use for.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # drawn with the Agg canvas, no display and no pyplot state

from attnwsi.console import UserError, entry_point
from attnwsi.io import write_atomic, write_csv_atomic, write_text_atomic
from attnwsi.metrics import METRICS, class_indices, table2_of_labels

log = logging.getLogger(__name__)
MEAN = "mean"  # the row of the unweighted means over classes


@dataclass
class Run:
    path: Path  # the run's results.json
    results: dict
    name: str | None = None  # its column; None: the model's name

    @property
    def model(self) -> str:
        """The report's column of this run."""
        return self.name or self.results["model"]

    def predictions(self) -> pd.DataFrame | None:
        path = self.path.with_name("predictions_test.csv")
        return pd.read_csv(path, dtype={"sub_image_id": str}) if path.exists() else None


def split_name(folder: str | Path) -> tuple[str | None, Path]:
    """"NAME=FOLDER" -> (NAME, FOLDER); a folder (that exists, even with "=" in its name) -> (None, folder)."""
    name, _, path = str(folder).partition("=")
    if Path(folder).exists() or not path:
        return None, Path(folder)
    return name, Path(path)


def find_runs(folders: list[str | Path]) -> list[Run]:
    """Every run with test results below the folders (each "FOLDER" or "NAME=FOLDER"), folder by folder in
    the order given, in path order within one; a run below two of them counts once, under the first."""
    found = {}
    for folder in folders:
        name, path = split_name(folder)
        for results_path in sorted(Path(path).rglob("results.json")):
            found.setdefault(results_path, name)
    runs = []
    for path, name in found.items():
        results = json.loads(path.read_text())
        if "test" in results:
            runs.append(Run(path, results, name))
        else:
            log.warning("%s: no test results; left out", path)
    return runs


def metric_values(runs: list[Run]) -> pd.DataFrame:
    """One row per run, class (and "mean") and metric: model, run, class, metric, value."""
    rows = []
    for run in runs:
        test = run.results["test"]
        for cls, values in [*test["per_class"].items(), (MEAN, test["mean"])]:
            rows += [(run.model, str(run.path), cls, m, values[m]) for m in METRICS]
    return pd.DataFrame(rows, columns=["model", "run", "class", "metric", "value"])


def summarize(values: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (0 for a single run) and number of runs per model, class and metric."""
    grouped = values.groupby(["model", "class", "metric"], sort=False)["value"]
    summary = grouped.agg(mean="mean", std="std", runs="count").reset_index()
    summary["std"] = summary["std"].fillna(0.0)
    return summary


def bootstrap_mean_f1(predictions: list[pd.DataFrame], classes: list[str], draws: int = 1000,
                      seed: int = 0) -> tuple[float, float, float]:
    """(point estimate, 2.5th, 97.5th percentile) of the test mean F1, averaged over runs.

    Each run's predictions are (sub_image_id, label, prediction) rows; the images that all runs predicted
    are resampled with replacement, the same draw for every run.
    """
    common = sorted(set.intersection(*(set(p["sub_image_id"]) for p in predictions)))
    if not common:
        raise ValueError("its runs share no test image (runs of different data sets?)")
    pairs = []
    for frame in predictions:
        pairs.append(class_indices(frame.set_index("sub_image_id").loc[common], classes))

    def mean_f1(sample: np.ndarray) -> float:
        return float(np.mean([table2_of_labels(labels[sample], predicted[sample], classes)["mean"]["f1"]
                              for labels, predicted in pairs]))

    rng = np.random.default_rng(seed)
    n = len(common)
    estimates = [mean_f1(rng.integers(0, n, n)) for _ in range(draws)]
    low, high = np.percentile(estimates, [2.5, 97.5])
    return mean_f1(np.arange(n)), float(low), float(high)


def confidence_intervals(runs: list[Run], draws: int, seed: int) -> pd.DataFrame:
    """Per model with saved test predictions: model, point, low, high of the test mean F1."""
    rows = []
    for model in dict.fromkeys(run.model for run in runs):
        model_runs = [run for run in runs if run.model == model]
        predictions = [run.predictions() for run in model_runs]
        if any(p is None for p in predictions):
            log.warning("%s: a run has no predictions_test.csv; no confidence interval", model)
            continue
        classes = model_runs[0].results["classes"]
        try:
            rows.append((model, *bootstrap_mean_f1(predictions, classes, draws, seed)))
        except ValueError as err:
            log.warning("%s: %s; no confidence interval", model, err)
    return pd.DataFrame(rows, columns=["model", "point", "low", "high"])


def markdown_table(summary: pd.DataFrame, intervals: pd.DataFrame) -> str:
    """Rows: class x metric, then the means; one column per model, "mean ± std" when it has several runs."""
    models = list(dict.fromkeys(summary["model"]))
    runs = summary.groupby("model")["runs"].max()
    header = [f"{m} ({runs[m]} run{'s' if runs[m] > 1 else ''})" for m in models]
    lines = ["| class | metric | " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(models)]
    cells = summary.set_index(["class", "metric", "model"])
    for cls in dict.fromkeys(summary["class"]):
        for metric in METRICS:
            row = []
            for model in models:
                mean, std, n = cells.loc[(cls, metric, model), ["mean", "std", "runs"]]
                row.append(f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}")
            lines.append(f"| {cls} | {metric} | " + " | ".join(row) + " |")
    ci = intervals.set_index("model")
    row = [f"[{ci.loc[m, 'low']:.2f}, {ci.loc[m, 'high']:.2f}]" if m in ci.index else "n/a" for m in models]
    lines.append(f"| {MEAN} | f1, 95 % CI (bootstrap) | " + " | ".join(row) + " |")
    return "\n".join(lines)


def interval_rows(intervals: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The confidence intervals as rows of the summary: class "mean", metric f1_ci_low / f1_ci_high."""
    rows = intervals.melt(id_vars="model", value_vars=["low", "high"], var_name="bound", value_name="mean")
    runs = summary.groupby("model")["runs"].max()
    return rows.assign(**{"class": MEAN, "metric": "f1_ci_" + rows["bound"], "std": np.nan,
                          "runs": rows["model"].map(runs)})[summary.columns]


def bar_chart(summary: pd.DataFrame, path: Path) -> None:
    """One panel per metric: bars per class (and the mean), one colour per model, std as error bars."""
    models = list(dict.fromkeys(summary["model"]))
    classes = list(dict.fromkeys(summary["class"]))
    fig = Figure(figsize=(4 * len(METRICS), 4.5), layout="constrained")
    axes = fig.subplots(1, len(METRICS), sharey=True)
    width = 0.8 / len(models)
    for ax, metric in zip(axes, METRICS):
        for k, model in enumerate(models):
            rows = summary[(summary["model"] == model) & (summary["metric"] == metric)].set_index("class")
            x = np.arange(len(classes)) + (k - (len(models) - 1) / 2) * width
            ax.bar(x, rows.loc[classes, "mean"], width, yerr=rows.loc[classes, "std"], label=model, capsize=2)
        ax.set_title(metric)
        ax.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right")
        ax.set_ylim(0, 1)
    # in rows of at most three: more long model names side by side would run off the figure
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=min(len(models), 3))
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def report(folders: list[str | Path], out: Path | None = None, draws: int = 1000, seed: int = 0) -> str:
    """Build the report of the runs below `folders` (each "FOLDER" or "NAME=FOLDER"), write its files into
    `out` (default: the first folder) and return its markdown."""
    runs = find_runs(folders)
    if not runs:
        raise UserError(f"no results.json with test results below {[str(f) for f in folders]}: give the run "
                        "or multirun folders of finished `python -m attnwsi.train` runs")
    summary = summarize(metric_values(runs))
    intervals = confidence_intervals(runs, draws, seed)
    text = "\n".join(["# Test results", "", markdown_table(summary, intervals), "", "Runs:", "",
                      *[f"- {run.model}: {run.path} (n = {run.results['test']['n']})" for run in runs], ""])
    out = Path(out or split_name(folders[0])[1])
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.md", text)
    write_csv_atomic(pd.concat([summary, interval_rows(intervals, summary)]), out / "report.csv")
    bar_chart(summary, out / "report.png")
    return text


@entry_point
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attnwsi.report", description=__doc__.split("\n\n")[1])
    parser.add_argument("folders", nargs="+", help="run or multirun folders, searched recursively; NAME=FOLDER "
                                                   "puts that folder's runs in a column called NAME")
    parser.add_argument("--out", type=Path, help="where report.md/.csv/.png go (default: the first folder)")
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(report(args.folders, args.out, args.draws, args.seed))


if __name__ == "__main__":
    main()
