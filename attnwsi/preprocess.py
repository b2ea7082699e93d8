"""python -m attnwsi.preprocess slides=DIR labels=CSV [annotations=DIR] out=DIR [default_mpp=X] [classes=[...]]

Writes into OUT (the data root, `attnwsi.data.layout`): `manifest.csv` (one row per tissue sub-image,
written last), `stats.json` (per-channel mean and std of the development split's tissue pixels),
`class_distribution.csv` (sub-images per class and split) and `qa/<slide_id>.png` (tissue outline,
sub-image and lesion boxes). A slide that cannot be used is reported with its reason and skipped; the
command then exits with status 1. A rerun into the same OUT reads only the slides not done yet (or whose
file, annotations, sheet row or settings changed; `done/<slide_id>.json`); `overwrite=true` redoes all.
"""

from __future__ import annotations

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from attnwsi.console import entry_point, print_skipped_slides
from attnwsi.data.layout import DataRoot
from attnwsi.data.manifest import class_distribution, make_dataset
from attnwsi.data.tissue import TissueParams


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


@hydra.main(version_base="1.3", config_path="../conf", config_name="preprocess")
@entry_point
def main(cfg: DictConfig) -> None:
    console = Console()
    options = OmegaConf.to_container(cfg, resolve=True)
    tissue = TissueParams(**options.pop("tissue"))
    result = make_dataset(**options, tissue=tissue)
    manifest, root = result.manifest, DataRoot(cfg.out)
    if result.reused:
        console.print(f"{result.reused} slides were already done ({root.done}); overwrite=true redoes them")
    if not manifest.empty:
        if result.stats is None:
            console.print("no development (train/val) sub-images, so no stats.json (a test-only set)")
        console.print(distribution_table(class_distribution(manifest, list(cfg.classes))))
        console.print(f"{root.manifest}: {len(manifest)} sub-images from {manifest['slide_id'].nunique()} slides; "
                      f"QA pictures in {root.qa}")
    for warning in result.warnings:
        console.print(f"[yellow]warning[/yellow] {warning}")
    print_skipped_slides(console, result.failures, n_slides=manifest["slide_id"].nunique() + len(result.failures))
    if result.failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
