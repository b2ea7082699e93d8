"""AttentionClassifier: the paper's end-to-end model as a LightningModule."""

from __future__ import annotations

import lightning as L
import pandas as pd
import torch
import torch.nn.functional as F

from attnwsi.metrics import Table2Metrics, flat_metrics
from attnwsi.models.adam import adam
from attnwsi.models.attention import GridAttention, MeanPool
from attnwsi.models.cumulative import class_log_probabilities, cumulative_loss
from attnwsi.models.extractor import GridExtractor
from attnwsi.models.grid_shifts import shifted_grids
from attnwsi.models.guards import check_finite
from attnwsi.models.normalization import InputNormalization
from attnwsi.models.schedule import cyclic_scheduler
from attnwsi.models.streaming import stream_features

STREAMING_DEFAULTS = {"enabled": False, "chunk_size": 32, "keep_frozen": False}


class AttentionClassifier(L.LightningModule):
    """Grid extractor + attention head, trained on image (slide or sub-image) labels only: with cross-entropy
    over the classes (`loss="cross_entropy"`, the paper's, and what a checkpoint written before `loss` existed
    was trained with) or with one "risk >= k" answer per class above the first (`loss="cumulative"`,
    `attnwsi.models.cumulative`: an image's label is its highest-risk finding; the configs' default).

    Everything needed to use a checkpoint alone is a hyper-parameter: classes, tile geometry (`tile_um`
    micrometres per tile, resized to `tile_px` pixels) and the input normalization (`mean`, `std` in 0..1;
    replaced by the data set's own statistics at the start of training when `dataset_normalization`).
    With `streaming["enabled"]` the extractor runs over the tiles `chunk_size` at a time in training too and
    recomputes them in the backward (`attnwsi.models.streaming`): memory no longer grows with the image.
    With `grid_shifts` a trained model answers for an image (test, `eval`, `predict`) with the class
    probabilities averaged over its tile grid and three copies moved by half a tile (`image_logits`);
    training and validation see the one grid.
    """

    def __init__(
        self,
        classes: list[str],
        tile_um: float,
        tile_px: int,
        backbone: str = "resnetv2_18",
        pretrained: bool = False,
        weights_path: str | None = None,
        trainable_stages: int = 1,
        head: str = "attention",
        num_filters: int = 64,
        kernel_size: int = 3,
        dropout: float = 0.5,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        dataset_normalization: bool = True,
        lr: float = 1e-3,
        restart_lr: float = 1e-4,
        gamma: float = 0.95,
        cycle_epochs: int = 50,
        weight_decay: float = 0.0,
        class_weights: str | list[float] | None = None,
        loss: str = "cross_entropy",
        inference_chunk: int = 256,
        calibrate_batchnorm: int = 32,
        streaming: dict | None = None,
        channels_last: bool = False,
        compile: bool = False,
        grid_shifts: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.classes = list(classes)
        self.streaming = {**STREAMING_DEFAULTS, **(streaming or {})}
        if loss not in ("cross_entropy", "cumulative"):
            raise ValueError(f"unknown loss {loss!r}; choose 'cross_entropy' or 'cumulative'")
        if len(classes) < 2:
            raise ValueError(f"classes {list(classes)}: a classifier needs at least two")
        self.extractor = GridExtractor(backbone, pretrained, weights_path, trainable_stages, channels_last, compile)
        outputs = len(classes) - 1 if loss == "cumulative" else len(classes)  # models/cumulative.py
        if head == "attention":
            self.head = GridAttention(outputs, self.extractor.out_channels, num_filters, kernel_size, dropout)
        elif head == "meanpool":
            self.head = MeanPool(outputs, self.extractor.out_channels, dropout)
        else:
            raise ValueError(f"unknown head {head!r}; choose 'attention' or 'meanpool'")
        self.normalization = InputNormalization(mean, std)
        self.register_buffer("loss_weights", torch.ones(len(classes)))
        # ModuleDict keys may not shadow nn.Module attributes such as `train`
        splits = ("train", "val", "test")
        self.metrics = torch.nn.ModuleDict({f"{s}_metrics": Table2Metrics(self.classes) for s in splits})
        self.results: dict[str, dict] = {}
        self._test_rows: list[dict] = []

    # ---------------------------------------------------------------------------------------- forward

    def extract(self, tiles: torch.Tensor) -> torch.Tensor:
        """Tile features [T, C]: without a graph in chunks of `inference_chunk` tiles when not training;
        streamed (chunks, recomputed in the backward) when `streaming["enabled"]`; else all tiles at once."""
        if not torch.is_grad_enabled():
            return stream_features(self.extractor, tiles, self.normalization, self.hparams.inference_chunk,
                                   self.device)
        if self.streaming["enabled"]:
            return stream_features(self.extractor, tiles, self.normalization, self.streaming["chunk_size"],
                                   self.device, self.streaming["keep_frozen"])
        return self.extractor(self.normalization(tiles.to(self.device)))

    def forward_features(self, tiles: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """One image's tiles [T, 3, h, w] in row-major grid order -> its feature map U [C, H', W']."""
        return GridExtractor.feature_map(self.extract(tiles), grid)

    def forward_head(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's feature map U [C, H', W'] -> (logits [classes], attention_maps [m, H', W'])."""
        outputs, attention_maps = self.head(feature_map[None])
        return self.class_logits(outputs)[0], attention_maps[0]

    def class_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The head's outputs [N, outputs] -> [N, classes] whose softmax is the class probabilities: the
        outputs themselves, or with `loss="cumulative"` the log-probabilities its "risk >= k" answers give."""
        return class_log_probabilities(outputs) if self.hparams.loss == "cumulative" else outputs

    def forward(self, tiles: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: tiles [T, 3, h, w] in row-major grid order -> (logits [C], attention_maps [m, H', W'])."""
        return self.forward_head(self.forward_features(tiles, grid))

    def forward_batch(self, batch: list) -> torch.Tensor:
        """Images (`Sample`s) of different grids -> the head's outputs [N, outputs] (see `class_logits`)."""
        return self.forward_images([(sample.tiles, sample.grid) for sample in batch])

    def forward_images(self, images: list[tuple[torch.Tensor, tuple[int, int]]]) -> torch.Tensor:
        """(tiles, grid) of images of different grids: all tiles through the extractor at once, then one head
        call each -> the head's outputs [N, outputs]."""
        features = self.extract(torch.cat([tiles for tiles, _ in images]))
        return torch.cat([self.head(GridExtractor.feature_map(feats, grid)[None])[0]
                          for (_, grid), feats in zip(images, features.split([len(t) for t, _ in images]))])

    def image_logits(self, images: list[tuple[torch.Tensor, tuple[int, int]]], logits: torch.Tensor) -> torch.Tensor:
        """What the trained model answers for images (tiles, grid) whose own grids gave class `logits` [N, C]:
        those, or with `grid_shifts` the log of the class probabilities averaged over the own grid and three
        grids moved by half a tile (`attnwsi.models.grid_shifts`), so that the answer depends less on
        where the grid happens to cut a small lesion (test mean F1 0.966 against 0.944 over seeds 0-4 at 48-um
        tiles: experiments/haystack/README.md, 2026-12-06, commit 45dec88)."""
        if not self.hparams.grid_shifts:
            return logits
        moved = [view for tiles, grid in images for view in shifted_grids(tiles, grid)]
        moved_logits = self.class_logits(self.forward_images(moved)).view(len(images), -1, logits.shape[1])
        return torch.cat([logits[:, None], moved_logits], 1).float().softmax(-1).mean(1).log()

    def transfer_batch_to_device(self, batch: list, device: torch.device, dataloader_idx: int) -> list:
        """Streaming keeps the tiles on the host and moves one chunk at a time; else Lightning moves them."""
        if self.streaming["enabled"]:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # ---------------------------------------------------------------------------------------- training

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.hparams.dataset_normalization and getattr(datamodule, "pixel_stats", None):
            self.normalization.set_stats(datamodule.pixel_stats)
        if not self.hparams.pretrained and self.hparams.calibrate_batchnorm and not self.trainer.ckpt_path:
            self._calibrate_batchnorm(datamodule.datasets["train"], self.hparams.calibrate_batchnorm)
        weights = self.hparams.class_weights
        if weights == "balanced":  # inverse class frequency in the training split, mean 1
            counts = torch.tensor(datamodule.class_counts("train"), dtype=torch.float32).clamp(min=1)
            weights = counts.sum() / (len(counts) * counts)
        if weights is not None:
            self.loss_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))

    def on_train_start(self) -> None:
        self.extractor.train()  # the BatchNorm policy (extractor.py): Lightning leaves the modules' modes alone;
                                # also here, as a run resumed mid-epoch skips on_train_epoch_start

    def on_train_epoch_start(self) -> None:
        self.extractor.train()  # again after every validation, which left the model in eval mode

    def _calibrate_batchnorm(self, dataset, n_images: int) -> None:
        """A trunk trained from scratch: BatchNorm statistics from the first `n_images` training images.

        Read from the data set in its fixed order, so every process of a distributed run gets the same ones.
        """
        n_images = min(n_images, len(dataset))
        chunk = self.hparams.inference_chunk  # an image's tiles at once could exceed the memory
        self.extractor.calibrate_batchnorm(self.normalization(tiles.to(self.device)) for i in range(n_images)
                                           for tiles in dataset[i].tiles.split(chunk))

    def _shared_step(self, batch: list, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.forward_batch(batch)
        labels = torch.tensor([s.label for s in batch], device=self.device)
        if self.hparams.loss == "cumulative":
            loss = cumulative_loss(outputs, labels, self.loss_weights)
        else:
            loss = F.cross_entropy(outputs, labels, weight=self.loss_weights)
        logits = self.class_logits(outputs)
        if split == "test":
            logits = self.image_logits([(sample.tiles, sample.grid) for sample in batch], logits)
        self.metrics[f"{split}_metrics"].update(logits.argmax(1), labels)
        self.log(f"{split}/loss", loss, on_step=split == "train", on_epoch=True, batch_size=len(batch),
                 prog_bar=split == "train", sync_dist=split != "train")
        return loss, logits

    def training_step(self, batch: list, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")[0]
        check_finite(loss, self, batch_idx, f"the sub-images {[s.sub_image_id for s in batch]}")
        return loss

    def validation_step(self, batch: list, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: list, batch_idx: int) -> None:
        _, logits = self._shared_step(batch, "test")
        probs = logits.float().softmax(1).cpu()  # the model's answer (`image_logits`, in `_shared_step`)
        for sample, p in zip(batch, probs):
            row = {"sub_image_id": sample.sub_image_id, "label": self.classes[sample.label],
                   "prediction": self.classes[int(p.argmax())]}
            row.update({f"p_{c}": float(v) for c, v in zip(self.classes, p)})
            self._test_rows.append(row)

    def _end_epoch(self, split: str) -> None:
        metric = self.metrics[f"{split}_metrics"]
        results = metric.compute()
        metric.reset()
        self.results[split] = results
        self.log_dict(flat_metrics(results, split), sync_dist=True)  # equal on all ranks: synced in compute

    def on_train_epoch_end(self) -> None:
        self._end_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._end_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        self._end_epoch("test")
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every process's images
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self._test_rows)
            self._test_rows = sorted((row for rows in gathered for row in rows), key=lambda r: r["sub_image_id"])

    @property
    def test_predictions(self) -> pd.DataFrame:
        return pd.DataFrame(self._test_rows)

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = adam(params, hp.lr, hp.weight_decay)
        scheduler = cyclic_scheduler(optimizer, hp.lr, hp.restart_lr, hp.gamma, hp.cycle_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
