"""The sliding-window baseline's crop classifier (the paper's section 4.2, after DeepSlide)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from attnwsi.models.adam import adam
from attnwsi.models.backbones import build_trunk
from attnwsi.models.guards import check_finite
from attnwsi.models.normalization import InputNormalization


class CropClassifier(L.LightningModule):
    """A backbone on crops, then a linear layer, trained with cross-entropy on the crops' lesion classes.

    The backbone is torchvision's ResNet-18 by default (the paper's), or any trunk `build_trunk` makes (the
    attention model's `resnetv2_18`, any timm model). Without weights torchvision's ResNet-18 has the
    paper's initialization: He (Kaiming) normal for convolutions, unit weight and zero bias for BatchNorm.
    `pretrained` loads weights from a local file (nothing is downloaded): ImageNet's, or a `trunk.safetensors`
    of `python -m attnwsi.pretrain` with `backbone=resnetv2_18`. Adam with weight decay; the learning rate
    decays by `lr_decay` after each epoch (DeepSlide's defaults: 1e-3, 1e-4, 0.95). Crops arrive as uint8
    and are normalized inside the model by `mean`, `std` (0..1), replaced by the data set's own pixel
    statistics at the start of training when `dataset_normalization`, so a checkpoint is self-contained.
    """

    def __init__(self, classes: list[str], crop_um: float, crop_px: int, backbone: str = "resnet18",
                 pretrained: bool = False, weights_path: str | None = None,
                 mean: tuple[float, float, float] = (0.5, 0.5, 0.5), std: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 dataset_normalization: bool = True,
                 lr: float = 1e-3, weight_decay: float = 1e-4, lr_decay: float = 0.95):
        super().__init__()
        self.save_hyperparameters()
        self.classes = list(classes)
        trunk = build_trunk(backbone, pretrained, weights_path)
        self.trunk = nn.Sequential(trunk.stem, *trunk.stages, *trunk.tail)  # uint8 crops -> [B, channels]
        self.fc = nn.Linear(trunk.channels, len(classes))
        self.normalization = InputNormalization(mean, std)
        # ModuleDict keys may not shadow nn.Module attributes such as `train`
        self.accuracy = nn.ModuleDict({f"{split}_acc": MulticlassAccuracy(len(classes), average="micro")
                                       for split in ("train", "val")})

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops [B, 3, h, w] -> class logits [B, C]."""
        return self.fc(self.trunk(self.normalization(crops)))

    @torch.inference_mode()
    def predict_proba(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops [B, 3, h, w] -> class probabilities [B, C] (on the CPU), in evaluation mode."""
        self.eval()
        return self(crops.to(self.device)).float().softmax(1).cpu()

    def on_fit_start(self) -> None:
        stats = getattr(getattr(self.trainer, "datamodule", None), "pixel_stats", None)
        if self.hparams.dataset_normalization and stats:
            self.normalization.set_stats(stats)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        crops, labels = batch
        logits = self(crops)
        loss = F.cross_entropy(logits, labels)
        accuracy = self.accuracy[f"{split}_acc"]
        accuracy(logits.argmax(1), labels)
        self.log(f"{split}/loss", loss, on_step=split == "train", on_epoch=True, prog_bar=True)
        self.log(f"{split}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        check_finite(loss, self, batch_idx, f"a batch of {len(batch[0])} training crops")
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = adam(self.parameters(), hp.lr, hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=hp.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
