"""How well do a trunk's tile features tell real tumour from benign tissue, and is that enough for a slide?

The tiles: the source set of a real-tile data set (`python -m attnwsi.synth kind=real_tiles ... out=SYNTH`),
split as the generator split them (SYNTH/tile_splits.csv: by LC25000's original field). A class-balanced
logistic regression (attnwsi.training.probe) learns tumour vs non-tumour from the features of the
development tiles (train + val) and is scored on the test tiles, which no trunk pretrained on the
development split has seen. Each tile is read at `--tile-px` (the 224-px source tile resized), described by
- the 12 pixel statistics (per channel mean, std, 10th and 90th percentile),
- a random resnetv2_18 trunk (BatchNorm statistics estimated on the development tiles),
- trunks given with `--trunk NAME=FILE` (a `pretrain` run's trunk.safetensors),
and scored by tile AUC, balanced accuracy, and the slide ceiling: the AUC, over 4,000 drawn bags of
`--bag` test tiles (half of them with one tumour tile), of the bag's highest tile score. A MIL model
trained from slide labels cannot read a bag better than this probe fitted on tile labels with the same
features, so the ceiling says whether a trunk is good enough before any training.

    python experiments/real_tiles/probe_tiles.py SYNTH [--tile-px 112] [--stats DATA/stats.json]
        [--trunk "SimCLR=RUN/trunk.safetensors"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchmetrics.functional import auroc

from attnwsi.data.real_tiles import DEFAULT_TILES_DIR, SOURCES
from attnwsi.models.backbones import load_weights, timm_trunk
from attnwsi.models.normalization import InputNormalization
from attnwsi.training.probe import balanced_accuracy, calibrated, pixel_statistics, probe_logits, trunk_features


def bag_ceiling(scores: np.ndarray, labels: np.ndarray, bag: int, n_bags: int = 2000, seed: int = 0) -> float:
    """AUC of the highest tile score over bags of `bag` test tiles, negative bags against bags with one tumour tile."""
    rng = np.random.default_rng(seed)
    normal, tumour = scores[labels == 0], scores[labels == 1]
    negatives = rng.choice(normal, size=(n_bags, bag)).max(1)
    positives = np.maximum(rng.choice(normal, size=(n_bags, bag - 1)).max(1), rng.choice(tumour, size=n_bags))
    truth = torch.cat([torch.zeros(n_bags), torch.ones(n_bags)]).long()
    return float(auroc(torch.from_numpy(np.concatenate([negatives, positives])).float(), truth, task="binary"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("synth", type=Path, help="a real-tile data set's folder (its tile_splits.csv, spec.json)")
    parser.add_argument("--tile-px", type=int, default=112)
    parser.add_argument("--bag", type=int, default=32, help="tiles per drawn bag (a tissue piece's tiles)")
    parser.add_argument("--trunk", action="append", default=[], help="NAME=FILE: a pretrained resnetv2_18 trunk")
    parser.add_argument("--stats", type=Path, help="the data root's stats.json (the normalization the trunks were "
                        "pretrained with); default: ImageNet's")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    spec = json.loads((args.synth / "spec.json").read_text())
    folder = Path(spec.get("tiles_dir") or DEFAULT_TILES_DIR) / SOURCES[spec["source"]].folder
    sheet = pd.read_csv(args.synth / "tile_splits.csv")
    images = [np.asarray(Image.open(folder / f).convert("RGB").resize((args.tile_px,) * 2, Image.Resampling.BOX))
              for f in sheet["file"]]
    tiles = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(sheet["tumour"].to_numpy().copy()).long()
    dev = torch.from_numpy(sheet["split"].isin(["train", "val"]).to_numpy().copy())
    normalization = InputNormalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if args.stats:
        normalization.set_stats(json.loads(args.stats.read_text()))
    torch.manual_seed(0)
    features = {"pixel statistics": pixel_statistics(tiles),
                "random trunk": trunk_features(calibrated(timm_trunk("resnetv2_18"), normalization, tiles[dev]),
                                               normalization, tiles)}
    for item in args.trunk:
        name, file = item.split("=", 1)
        net = timm_trunk("resnetv2_18")
        load_weights(net, file, "resnetv2_18")
        features[name] = trunk_features(net, normalization, tiles)
    rows = {}
    print(f"{spec['source']}: {int(dev.sum())} development tiles, {int((~dev).sum())} test tiles "
          f"({int(labels[~dev].sum())} tumour), read at {args.tile_px} px")
    for name, x in features.items():
        logits = probe_logits(x[dev], labels[dev], x[~dev], 2)
        scores = logits[:, 1] - logits[:, 0]  # the tumour log-odds
        rows[name] = {
            "tile_auc": float(auroc(scores, labels[~dev], task="binary")),
            "balanced_accuracy": balanced_accuracy(labels[~dev], logits.argmax(1), 2),
            f"bag_{args.bag}_ceiling_auc": bag_ceiling(scores.numpy(), labels[~dev].numpy(), args.bag),
        }
        print(f"  {name:22s} " + "  ".join(f"{k} {v:.3f}" for k, v in rows[name].items()))
    if args.json:
        args.json.write_text(json.dumps({"source": spec["source"], "tile_px": args.tile_px, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
