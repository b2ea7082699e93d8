"""Which epoch's weights to test: the test mean F1 that each checkpoint-selection rule would have given.

Until 2026-12-06 (commit 705c34e) the default tested the checkpoint with the best validation mean F1 (58 images,
5 of them be_with_dysplasia), which jumps by a whole image at a time and ties often; now the lowest validation
loss.
This applies several rules that use validation only (the run's csv log) to the same runs, and scores the
checkpoints they choose on test:

    python -m attnwsi.train seed=S +callbacks.model_checkpoint.save_top_k=-1 hydra.run.dir=RUN_S   # all epochs
    python experiments/haystack/checkpoint_selection.py RUN_0 RUN_1 RUN_2 --data-root $ATTNWSI_CACHE/haystack_n320_s0

Each chosen checkpoint's eval output (results.json, predictions) is kept in `--out`/<run>/epoch_NNN/ (not in
the run, where `report` would count it as another run); a rerun only scores what is missing. Prints a table
of test mean F1 per run and rule. Choose a rule before looking at its test column, or confirm it on seeds that
did not take part in choosing it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from attnwsi.metrics import class_indices, table2_of_labels
from attnwsi.training.evaluate import evaluate


def test_predictions(run: Path, epoch: int, data_root: str, out: Path) -> pd.DataFrame:
    """The test predictions of the run's checkpoint of `epoch`, scored once and kept in OUT/<run>/epoch_NNN/."""
    out = out / run.name / f"epoch_{epoch:03d}"
    if not (out / "predictions_test.csv").exists():
        evaluate(str(run / "checkpoints" / f"epoch_{epoch:03d}.ckpt"), data_root, "test", out, num_workers=2)
    return pd.read_csv(out / "predictions_test.csv").sort_values("sub_image_id")


def mean_f1(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> float:
    return table2_of_labels(labels, probabilities.argmax(1), classes)["mean"]["f1"]


def validation_log(run: Path) -> pd.DataFrame:
    """Per training epoch: val/f1_mean and val/loss from the run's csv log (not the best checkpoint's
    validation after training, logged as one epoch more)."""
    log = pd.concat(pd.read_csv(f) for f in sorted(run.glob("**/metrics.csv")))
    val = log.dropna(subset=["val/f1_mean"]).astype({"epoch": int})
    val = val.groupby("epoch")[["val/f1_mean", "val/loss"]].first()
    return val[[(run / "checkpoints" / f"epoch_{e:03d}.ckpt").exists() for e in val.index]]


def rules(val: pd.DataFrame) -> dict[str, list[int]]:
    """{rule: the epochs whose test probabilities it averages}, from validation numbers alone."""
    f1 = val["val/f1_mean"]
    best = f1[f1 == f1.max()].index
    last = int(val.index.max())
    return {
        "best val F1, first (the default until 705c34e)": [int(best.min())],
        "best val F1, last of ties": [int(best.max())],
        "lowest val loss (the default)": [int(val["val/loss"].idxmin())],
        "last epoch": [last],
        "mean of the last 5 epochs": list(range(last - 4, last + 1)),
        "mean of the 3 best val F1": [int(e) for e in f1.sort_values(ascending=False, kind="stable").index[:3]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories trained with save_top_k=-1")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", type=Path, default=Path("outputs/checkpoint_selection"),
                        help="where each chosen checkpoint's eval results and predictions are kept")
    args = parser.parse_args()
    table = {}
    for run in args.runs:
        chosen = rules(validation_log(run))
        test = {e: test_predictions(run, e, args.data_root, args.out) for e in sorted(set(sum(chosen.values(), [])))}
        classes = [c[2:] for c in next(iter(test.values())).columns if c.startswith("p_")]
        labels = class_indices(next(iter(test.values())), classes)[0]
        probs = {e: p[[f"p_{c}" for c in classes]].to_numpy() for e, p in test.items()}
        table[run.name] = {rule: mean_f1(np.mean([probs[e] for e in epochs], axis=0), labels, classes)
                           for rule, epochs in chosen.items()}
        table[run.name]["epochs chosen"] = "; ".join(",".join(map(str, e)) for e in chosen.values())
    frame = pd.DataFrame(table)
    numeric = frame.drop(index="epochs chosen").astype(float)
    frame["mean"] = numeric.mean(axis=1).round(3)
    frame["lowest"] = numeric.min(axis=1).round(3)
    print("| rule | " + " | ".join(frame.columns) + " |")
    print("|---|" + "---:|" * len(frame.columns))
    for rule, row in frame.iterrows():
        cells = (v if isinstance(v, str) else "" if pd.isna(v) else f"{v:.3f}" for v in row)
        print(f"| {rule} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
