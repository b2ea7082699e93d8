"""Self-supervised pretraining of a backbone on tissue tiles: SimCLR (Chen et al., 2020) with lightly's loss
and projection head.

Two augmented views of every tile of a batch go through the backbone (pooled features, C channels) and a
projection head; the NT-Xent loss pulls the two views of a tile together and pushes the other tiles of the
batch away. Only the backbone is kept (`trunk_state_dict`): the grid extractor loads it as pretrained weights.

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
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

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


class SimCLR(L.LightningModule):
    """A timm backbone (pooled features) + lightly's SimCLR projection head, trained with NT-Xent.

    Tiles arrive as uint8 batches; views are drawn with a generator seeded from (seed, global step), so a run
    is repeatable. Inputs are normalized by `mean`, `std` (0..1), replaced by the data set's statistics at the
    start of training, as the attention model does.
    """

    def __init__(self, backbone: str = "resnetv2_18", projection_dim: int = 128, temperature: float = 0.5,
                 lr: float = 1e-3, weight_decay: float = 1e-6, min_crop: float = 0.6, stain_scale: float = 0.1,
                 stain_shift: float = 0.05, mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 std: tuple[float, float, float] = (0.5, 0.5, 0.5), seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = timm_trunk(backbone)
        channels = self.backbone.num_features
        self.projection = SimCLRProjectionHead(channels, channels, projection_dim)
        self.normalization = InputNormalization(mean, std)
        self.loss = NTXentLoss(temperature=temperature, gather_distributed=True)

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
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
