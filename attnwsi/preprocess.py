"""python -m attnwsi.preprocess slides=DIR labels=CSV [annotations=DIR] out=DIR [default_mpp=X]

Writes into OUT: `manifest.csv` (one row per tissue sub-image, written last), `stats.json` (per-channel
mean and std of the development split's tissue pixels), `class_distribution.csv` (sub-images per class
and split) and `qa/<slide_id>.png` (tissue outline, sub-image and lesion boxes). A slide that cannot be
used is reported with its reason and skipped; the command then exits with status 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from attnwsi.data.manifest import (
    ManifestResult,
    build_manifest,
    class_distribution,
    write_atomic,
    write_csv_atomic,
)
from attnwsi.data.slides import print_skipped_slides
from attnwsi.data.tissue import DEFAULT_TISSUE, TissueParams, tissue_pixel_stats

console = Console()


def preprocess(slides: str, labels: str, out: str, classes: list[str], annotations: str | None = None,
               default_mpp: float | None = None, test_fraction: float = 0.25, val_fraction: float = 0.2,
               split_seed: int = 0, stats_mpp: float = 2.0,
               tissue: TissueParams = DEFAULT_TISSUE) -> ManifestResult:
    """Build the manifest of the slides in `labels`; write it, its statistics and QA pictures into `out`."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = build_manifest(slides, labels, classes, annotations, default_mpp, test_fraction, val_fraction,
                            split_seed, tissue, qa_dir=out_dir / "qa", progress=True)
    manifest = result.manifest
    if manifest.empty:
        return result
    development = manifest[manifest["split"] != "test"]
    if development.empty:
        console.print("no development (train/val) sub-images, so no stats.json (a test-only set)")
    else:
        stats = json.dumps(tissue_pixel_stats(development, stats_mpp, tissue), indent=2)
        write_atomic(out_dir / "stats.json", lambda tmp: tmp.write_text(stats))
    distribution = class_distribution(manifest, classes)
    write_csv_atomic(distribution, out_dir / "class_distribution.csv")
    write_csv_atomic(manifest, out_dir / "manifest.csv")  # last: its presence marks a complete data set
    console.print(distribution_table(distribution))
    n_slides = manifest["slide_id"].nunique()
    console.print(f"{out_dir / 'manifest.csv'}: {len(manifest)} sub-images from {n_slides} slides; "
                  f"QA pictures in {out_dir / 'qa'}")
    return result


def distribution_table(distribution: pd.DataFrame) -> Table:
    """The class distribution as the paper's Table 1: sub-images per class, count (percent) per split."""
    table = Table(title="Sub-images per class and split")
    table.add_column("class")
    splits = [column[:-2] for column in distribution.columns if column.endswith("_n")]
    for split in splits:
        table.add_column(split, justify="right")
    for row in distribution.to_dict("records"):
        table.add_row(row["class"], *(f"{row[f'{split}_n']} ({row[f'{split}_%']:.1f} %)" for split in splits))
    return table


def report_problems(result: ManifestResult, n_slides: int) -> None:
    for warning in result.warnings:
        console.print(f"[yellow]warning[/yellow] {warning}")
    print_skipped_slides(console, result.failures, n_slides)


@hydra.main(version_base="1.3", config_path="../conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    options = OmegaConf.to_container(cfg, resolve=True)
    tissue = TissueParams(**options.pop("tissue"))
    result = preprocess(**options, tissue=tissue)
    report_problems(result, n_slides=result.manifest["slide_id"].nunique() + len(result.failures))
    if result.failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
