"""Self-supervised pretraining of the grid extractor's trunk on a data set's own tissue tiles, no labels.

`pretrain` trains a method of `attnwsi.models.self_supervised` (settings: conf/ssl/simclr.yaml, vicreg.yaml;
what they share: conf/ssl/common/two_views.yaml) on the tissue tiles of the development split (train + val
sub-images, never test) at the data's tile geometry, then writes into the run directory:

| file | what |
|---|---|
| `trunk.safetensors` | the backbone's weights (no projection head): `model.pretrained=true model.weights_path=FILE` |
| `pretrain.json` | provenance: data root, method, backbone, tile geometry, epochs, steps, seconds, final loss, probe |
| `checkpoints/last.ckpt` | the Lightning state: rerunning the same command into the same directory resumes |

`cached_trunk` does the same once into the cache for `train ssl=simclr` and reuses it. When the data root
has lesion annotations, a linear probe (`attnwsi.training.probe`) of the pretrained trunk
is printed beside the same probe of a random trunk and of plain pixel statistics.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from filelock import FileLock
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from attnwsi.data.layout import DataRoot
from attnwsi.data.slides import READER
from attnwsi.data.tiles import TileDataModule, Tiles
from attnwsi.io import write_atomic, write_json_atomic
from attnwsi.models.backbones import timm_trunk
from attnwsi.models.self_supervised import TwoViews
from attnwsi.training.probe import calibrated, linear_probe, pixel_statistics, trunk_features

TRUNK_FILE = "trunk.safetensors"


def pretrain(data: DictConfig, ssl: DictConfig, trainer: DictConfig, output_dir: Path, seed: int,
             callbacks: list | None = None, loggers: list | None = None) -> dict:
    """Pretrain (resuming from `output_dir/checkpoints/last.ckpt` when there is one) and write the trunk.

    `data` is the data set's config (a `SlideDataModule`), `ssl` the pretraining settings (conf/ssl/),
    `trainer` a Lightning Trainer config; checkpoints go to `output_dir/checkpoints`.
    """
    L.seed_everything(seed, workers=True)
    datamodule = TileDataModule(hydra.utils.instantiate(data), **ssl.tiles, seed=seed)
    model = hydra.utils.instantiate(ssl.model, seed=seed)
    checkpoints = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="epoch_{epoch:03d}",
                                  save_last=True, auto_insert_metric_name=False)
    trainer = hydra.utils.instantiate(trainer, callbacks=[checkpoints, *(callbacks or [])], logger=loggers or False,
                                      default_root_dir=str(output_dir))
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        Console().print(f"resuming the pretraining from {last}")
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    seconds = time.perf_counter() - start
    record = {"data_root": str(datamodule.slides.root.path), "method": model.method,
              "backbone": model.hparams.backbone,
              "tile_um": data.tile_um, "tile_px": data.tile_px, "n_tiles": len(datamodule.tiles.tiles),
              "epochs": trainer.current_epoch, "steps": trainer.global_step, "seconds": round(seconds, 1),
              "final_loss": float(trainer.callback_metrics.get("pretrain/loss_epoch", float("nan"))),
              "settings": OmegaConf.to_container(ssl, resolve=True)}
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        state = model.trunk_state_dict()
        write_atomic(output_dir / TRUNK_FILE, lambda tmp: save_file(state, str(tmp)))
        if ssl.probe_tiles:
            record["linear_probe"] = probe_readout(model, datamodule, ssl.probe_tiles, seed)
        write_json_atomic(output_dir / "pretrain.json", record)
        Console().print(f"trunk: {output_dir / TRUNK_FILE} (load it with model.pretrained=true "
                        f"model.weights_path=...); provenance: {output_dir / 'pretrain.json'}")
    return record


def pretraining_asked(cfg: DictConfig) -> bool:
    """Whether `ssl=` names a method (conf/ssl/simclr.yaml, vicreg.yaml). `ssl=none` over an experiment that
    tunes its method (slides_cpu's `ssl.max_epochs`) leaves those settings without a method: no pretraining."""
    return bool(cfg.get("ssl")) and "model" in cfg.ssl


def cached_trunk(cfg: DictConfig) -> Path:
    """The trunk of `cfg.ssl` pretraining on `cfg.data`, pretrained once into `trunk_folder(cfg)`. The data set
    is prepared first."""
    slides = hydra.utils.instantiate(cfg.data)
    slides.prepare_data()
    folder, settings = trunk_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock"):  # processes started together (torchrun, SLURM) pretrain once, then reuse
        if not (folder / TRUNK_FILE).exists():
            method = hydra.utils.get_class(cfg.ssl.model._target_).method  # as pretrain.json names it
            Console().print(f"pretraining the trunk once into {folder} (ssl={method})")
            write_json_atomic(folder / "settings.json", settings)
            trainer = OmegaConf.merge(cfg.trainer, {"max_epochs": cfg.ssl.max_epochs, "devices": 1,
                                                    "strategy": "auto", "enable_model_summary": False})
            pretrain(cfg.data, cfg.ssl, trainer, folder, cfg.ssl.seed)
    return folder / TRUNK_FILE


def trunk_folder(cfg: DictConfig) -> tuple[Path, dict]:
    """`paths.cache_dir/trunks/<backbone>_<key>/` and the settings behind the key, of a prepared data set.

    The key hashes the data set's manifest and statistics, every data and pretraining setting (`ssl.seed`
    included; not the training seed, loader or augmentation settings: one trunk serves every training run on
    the same tiles) and the reader's version (`slides.READER`), so a changed data set, setting or reading path
    never reuses a stale trunk.
    """
    root = DataRoot(cfg.data.root)
    settings = {"data": OmegaConf.to_container(cfg.data, resolve=True),
                "ssl": OmegaConf.to_container(cfg.ssl, resolve=True),
                "limit_train_batches": cfg.trainer.get("limit_train_batches"), "reader": READER}
    for key in ("num_workers", "batch_size", "seed", "augment"):  # how the attention model is fed, not what
        settings["data"].pop(key, None)                            # the trunk learns from
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in (root.manifest, root.stats):
        if path.exists():
            digest.update(path.read_bytes())
    return Path(cfg.paths.cache_dir) / "trunks" / f"{cfg.ssl.model.backbone}_{digest.hexdigest()[:16]}", settings


def probe_readout(model: TwoViews, datamodule: TileDataModule, max_tiles: int, seed: int) -> dict | None:
    """Balanced accuracy of the linear probe for the pretrained trunk, a random trunk and pixel statistics
    (fitted on the training sub-images' tiles, scored on the validation ones); None without annotations."""
    tiles = datamodule.tiles
    n_train = len(datamodule.slides.datasets["train"])
    known = tiles.labels >= 0
    splits = {"train": known & (tiles.sub_image < n_train), "val": known & (tiles.sub_image >= n_train)}
    if not all(split.any() for split in splits.values()) or len(tiles.labels[known].unique()) < 2:
        return None
    generator = torch.Generator().manual_seed(seed)
    chosen = {name: subsample(tiles, mask, max_tiles // 2, generator) for name, mask in splits.items()}
    random_trunk = calibrated(timm_trunk(model.hparams.backbone), model.normalization.cpu(), chosen["train"].tiles)
    n_classes = len(datamodule.slides.classes)
    features = {
        "pretrained trunk": lambda t: trunk_features(model.backbone.cpu(), model.normalization, t),
        "random trunk": lambda t: trunk_features(random_trunk, model.normalization, t),
        "pixel statistics": pixel_statistics,
    }
    scores = {name: linear_probe(extract(chosen["train"].tiles), chosen["train"].labels,
                                 extract(chosen["val"].tiles), chosen["val"].labels, n_classes)
              for name, extract in features.items()}
    table = Table(title="Linear probe of tile features against the lesion annotations (balanced accuracy, "
                        f"chance {1 / n_classes:.2f})")
    for column in ("features", "balanced accuracy"):
        table.add_column(column)
    for name, score in scores.items():
        table.add_row(name, f"{score:.3f}")
    Console().print(table)
    counts = {name: torch.bincount(c.labels, minlength=n_classes).tolist() for name, c in chosen.items()}
    return {"balanced_accuracy": scores, "tiles_per_class": counts}


def subsample(tiles: Tiles, mask: torch.Tensor, limit: int, generator: torch.Generator) -> Tiles:
    """The masked tiles, at most `limit`: every lesion tile is kept (they are rare), normal ones drawn at random."""
    index = mask.nonzero().squeeze(1)
    lesion, normal = index[tiles.labels[index] > 0], index[tiles.labels[index] == 0]
    n_normal = max(0, limit - len(lesion))
    normal = normal[torch.randperm(len(normal), generator=generator)[:n_normal]]
    return tiles.take(torch.cat([lesion[:limit], normal]).sort().values)
