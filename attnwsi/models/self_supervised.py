"""Self-supervised pretraining of a backbone on tissue tiles, with lightly's losses and projection heads:

- `SimCLR` (Chen et al., 2020): the NT-Xent loss pulls the two views of a tile together and pushes the
  other tiles of the batch away;
- `VICReg` (Bardes et al., 2022): the two views' embeddings agree (invariance) while each embedding
  dimension keeps its variance over the batch and the dimensions stay decorrelated; no negatives.

Two augmented views of every tile of a batch go through the backbone (pooled features, C channels) and a
projection head. Only the backbone is kept (`trunk_state_dict`): the grid extractor loads it as pretrained
weights.

The views are drawn on the device, per tile, from augmentations that suit H&E (`tile_views`): the 8
symmetries of the square (tissue has no orientation), a mild random crop resized back to the tile, and
stain jitter in HED space (haematoxylin, eosin and DAB optical densities each scaled and shifted), as
Tellez et al. (2019) found best for histopathology. lightly's own transforms work on one PIL image at a
time on the CPU; tiles here are augmented as one batch where the model runs.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss, VICRegLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.models.modules.heads import VICRegProjectionHead
from torch import nn

from attnwsi.models.adam import adam
from attnwsi.models.backbones import timm_trunk
from attnwsi.models.normalization import InputNormalization

# RGB optical density of haematoxylin, eosin and DAB (Ruifrok & Johnston; skimage.color's hed_from_rgb basis)
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)

# The 8 symmetries of the square as 2 x 2 matrices: 4 rotations, each with and without a flip.
_ROTATIONS = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, -1.0], [1.0, 0.0]]),
              torch.tensor([[-1.0, 0.0], [0.0, -1.0]]), torch.tensor([[0.0, 1.0], [-1.0, 0.0]])]
SYMMETRIES = torch.stack([r @ f for r in _ROTATIONS for f in (torch.eye(2), torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))])


def hed_jitter(images: torch.Tensor, generator: torch.Generator, scale: float, shift: float) -> torch.Tensor:
    """RGB images [N, 3, h, w] in 0..1 with each stain's optical density scaled by 1 +- `scale` and shifted by
    +- `shift` (drawn per image and stain)."""
    n = images.shape[0]
    od = -torch.log(images.clamp(min=1 / 255))  # optical density, [N, 3, h, w]
    hed = torch.einsum("nchw,cd->ndhw", od, HED_FROM_RGB.to(images))
    alpha = 1 + scale * (2 * torch.rand(n, 3, 1, 1, generator=generator, device=images.device) - 1)
    beta = shift * (2 * torch.rand(n, 3, 1, 1, generator=generator, device=images.device) - 1)
    od = torch.einsum("ndhw,dc->nchw", hed * alpha.to(images) + beta.to(images), RGB_FROM_HED.to(images))
    return torch.exp(-od).clamp(0, 1)


def tile_views(tiles: torch.Tensor, generator: torch.Generator, min_crop: float = 0.6, stain_scale: float = 0.1,
               stain_shift: float = 0.05) -> torch.Tensor:
    """One random view of each uint8 tile [N, 3, h, w]: float 0..1, the same size.

    A random symmetry of the square, a crop of `min_crop`..1 of the side at a random place (resized back,
    bilinear), then HED stain jitter.
    """
    n, _, height, width = tiles.shape
    device = tiles.device
    images = tiles.float() / 255.0
    symmetry = SYMMETRIES[torch.randint(8, (n,), generator=generator)]
    side = min_crop + (1 - min_crop) * torch.rand(n, generator=generator)
    offset = (1 - side)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    theta = torch.cat([symmetry * side[:, None, None], offset[:, :, None]], dim=2).to(device)
    grid = F.affine_grid(theta, [n, 3, height, width], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return hed_jitter(images, generator, stain_scale, stain_shift)


class TwoViews(L.LightningModule):
    """A timm backbone (pooled features) + a projection head, trained on two views of every tile.

    Tiles arrive as uint8 batches; views are drawn with a generator seeded from (seed, global step), so a run
    is repeatable. Inputs are normalized by `mean`, `std` (0..1), replaced by the data set's statistics at the
    start of training, as the attention model does. A method (a subclass) saves its settings as hparams
    (`lr`, `weight_decay`, the views' `min_crop`, `stain_scale`, `stain_shift`, `seed`) and sets `method`,
    `projection` and `loss`.
    """

    method: str
    projection: nn.Module
    loss: nn.Module

    def __init__(self, backbone: str, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.backbone = timm_trunk(backbone)
        self.normalization = InputNormalization(mean, std)

    def on_fit_start(self) -> None:
        stats = getattr(self.trainer.datamodule, "pixel_stats", None)
        if stats:
            self.normalization.set_stats(stats)

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """Views (float 0..1) -> projections [N, projection_dim]."""
        return self.projection(self.backbone(self.normalization(views * 255.0)))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (tiles,) = batch
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.seed * 1_000_003 + self.global_step * 2 + self.global_rank)
        view0, view1 = (tile_views(tiles, generator, hp.min_crop, hp.stain_scale, hp.stain_shift) for _ in range(2))
        loss = self.loss(self.embed(view0).float(), self.embed(view1).float())
        self.log("pretrain/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def trunk_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights (no projection head), as the grid extractor loads them."""
        return {key: value.detach().cpu().contiguous() for key, value in self.backbone.state_dict().items()}

    def configure_optimizers(self):
        return adam(self.parameters(), self.hparams.lr, self.hparams.weight_decay)


class SimCLR(TwoViews):
    """lightly's SimCLR projection head (C -> C -> projection_dim) and NT-Xent loss at `temperature`."""

    method = "simclr"

    def __init__(self, backbone: str = "resnetv2_18", projection_dim: int = 128, temperature: float = 0.5,
                 lr: float = 1e-3, weight_decay: float = 1e-6, min_crop: float = 0.6, stain_scale: float = 0.1,
                 stain_shift: float = 0.05, mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 std: tuple[float, float, float] = (0.5, 0.5, 0.5), seed: int = 0):
        super().__init__(backbone, mean, std)
        self.save_hyperparameters()
        channels = self.backbone.num_features
        self.projection = SimCLRProjectionHead(channels, channels, projection_dim)
        self.loss = NTXentLoss(temperature=temperature, gather_distributed=True)


class VICReg(TwoViews):
    """lightly's VICReg projection head (C -> hidden_dim -> projection_dim) and loss (invariance, variance and
    covariance terms weighted `invariance`, `variance`, `covariance`: 25, 25, 1 in the paper)."""

    method = "vicreg"

    def __init__(self, backbone: str = "resnetv2_18", projection_dim: int = 2048, hidden_dim: int = 2048,
                 invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0, lr: float = 1e-3,
                 weight_decay: float = 1e-6, min_crop: float = 0.6, stain_scale: float = 0.1,
                 stain_shift: float = 0.05, mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 std: tuple[float, float, float] = (0.5, 0.5, 0.5), seed: int = 0):
        super().__init__(backbone, mean, std)
        self.save_hyperparameters()
        self.projection = VICRegProjectionHead(self.backbone.num_features, hidden_dim, projection_dim)
        self.loss = VICRegLoss(invariance, variance, covariance, gather_distributed=True)
