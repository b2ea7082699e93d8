"""Does self-supervision on real H&E learn tissue types? A linear probe on 32 labelled real tiles.

The tiles: ../shared/data/tiles/crc_val_he_7k_subset (32 H&E tiles of colorectal tissue, 224 px at 0.5 um/px,
8 classes x 4: adipose, debris, lymphocytes, mucus, muscle, normal mucosa, stroma, tumour; a subset of
Kather et al.'s CRC-VAL-HE-7K, CC BY 4.0). Each tile is resized to `--tile-px` and described by
- the 12 pixel statistics of the probe read-out (attnwsi.training.probe.pixel_statistics),
- a random resnetv2_18 trunk (BatchNorm statistics estimated on the 32 tiles),
- resnetv2_18 trunks pretrained (`python -m attnwsi.pretrain`, SimCLR or VICReg) on the tissue tiles of the
  real slide CMU-1-Small-Region (../shared/data/wsi, CC0), at the same um/px as the probe tiles (`--trunk`),
and scored by leave-one-out accuracy of the class-balanced logistic regression of the read-out (chance 1/8).

    python experiments/pretrain/probe_real_tiles.py --trunk "SimCLR trunk=RUN/trunk.safetensors" [--trunk ...]
        [--tile-px 64]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from attnwsi.models.backbones import load_weights, timm_trunk
from attnwsi.models.normalization import InputNormalization
from attnwsi.training.probe import calibrated, linear_probe, pixel_statistics, trunk_features

TILES = Path(__file__).resolve().parents[3] / "shared" / "data" / "tiles" / "crc_val_he_7k_subset"


def load_tiles(tile_px: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    sheet = pd.read_csv(TILES / "labels.csv")
    names = sorted(sheet["label_name"].unique())
    images = [np.asarray(Image.open(TILES / f).convert("RGB").resize((tile_px, tile_px), Image.Resampling.BOX))
              for f in sheet["filename"]]
    tiles = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return tiles, torch.tensor([names.index(n) for n in sheet["label_name"]]), names


def leave_one_out(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    hits = []
    for i in range(len(labels)):
        train = torch.arange(len(labels)) != i
        hits.append(linear_probe(features[train], labels[train], features[i:i + 1], labels[i:i + 1], n_classes))
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trunk", action="append", required=True,
                        help="NAME=FILE: a pretrain run's trunk.safetensors and its row's name (repeatable)")
    parser.add_argument("--tile-px", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    tiles, labels, names = load_tiles(args.tile_px)
    stats = tiles.float().div(255).permute(1, 0, 2, 3).flatten(1)
    normalization = InputNormalization(tuple(stats.mean(1).tolist()), tuple(stats.std(1).tolist()))
    random_trunk = calibrated(timm_trunk("resnetv2_18"), normalization, tiles)
    features = {"pixel statistics": pixel_statistics(tiles),
                "random trunk": trunk_features(random_trunk, normalization, tiles)}
    for name, path in (trunk.split("=", 1) for trunk in args.trunk):
        pretrained = timm_trunk("resnetv2_18")
        load_weights(pretrained, path, "resnetv2_18")
        features[name] = trunk_features(pretrained, normalization, tiles)
    scores = {name: leave_one_out(F.normalize(f, dim=1) if f.shape[1] > 12 else f, labels, len(names))
              for name, f in features.items()}
    for name, score in scores.items():
        print(f"{name:28s} leave-one-out accuracy {score:.3f}  (chance {1 / len(names):.3f})")
    if args.json:
        args.json.write_text(json.dumps({"tile_px": args.tile_px, "classes": names, "accuracy": scores}, indent=2))


if __name__ == "__main__":
    main()
