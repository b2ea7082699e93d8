"""What a trained attention model looked at: its m attention maps over one image, and which filters matter.

`explain` runs an `AttentionClassifier` on one image and ranks its attention filters by how much they speak
for the predicted class (`filter_relevance`). Maps are softmaxes over the grid (eq. 1); the "mean map" is
the mean of the m maps (the average attention weight of each tile). Drawing them is `attnwsi.viz`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attnwsi.models.attention import GridAttention


@dataclass
class Explanation:
    """One image through the model: class probabilities, its m attention maps and each filter's relevance."""

    probabilities: np.ndarray  # [C]
    attention_maps: np.ndarray  # [m, H', W'], each a softmax over the grid (sums to 1), eq. (1)
    relevance: np.ndarray  # [m], see `filter_relevance`

    @property
    def prediction(self) -> int:
        return int(self.probabilities.argmax())

    @property
    def mean_map(self) -> np.ndarray:
        """[H', W'] the average attention weight of each tile over the m filters."""
        return self.attention_maps.mean(0)

    def top_filters(self, k: int) -> list[int]:
        """The k filters most relevant to the predicted class, most relevant first."""
        return [int(i) for i in np.argsort(-self.relevance, kind="stable")[:k]]

    def relevant_map(self, k: int) -> np.ndarray:
        """[H', W'] the mean of the maps of the k filters most relevant to the predicted class."""
        return self.attention_maps[self.top_filters(k)].mean(0)


@torch.no_grad()
def explain(model, tiles: torch.Tensor, grid: tuple[int, int]) -> Explanation:
    """An AttentionClassifier (in eval mode) on one image's tiles [T, 3, h, w] uint8.

    The model's two steps, `forward_features` (chunked extraction into U) and `forward_head`, keeping U for
    the relevance of the filters; the probabilities are the model's answer (`image_logits`: with grid shifts,
    averaged over four grids), the maps and the relevance those of the image's own grid.
    """
    feature_map = model.forward_features(tiles, grid)
    logits, attention_maps = model.forward_head(feature_map)
    probabilities = model.image_logits([(tiles, grid)], logits[None])[0].float().softmax(0)
    relevance = filter_relevance(model.head, feature_map, attention_maps, int(probabilities.argmax()),
                                 cumulative=model.hparams.loss == "cumulative")
    return Explanation(probabilities.cpu().numpy(), attention_maps.float().cpu().numpy(),
                       relevance.float().cpu().numpy())


def filter_relevance(head, feature_map: torch.Tensor, attention_maps: torch.Tensor, target: int,
                     cumulative: bool = False) -> torch.Tensor:
    """[m] how much each filter's attended vector z_k speaks for the target class c (see below).

    The classifier is linear: logit_c = sum_k w_{c,k} . z_k + b_c, where w_{c,k} is the C-block of the fc
    weights that multiplies z_k (eq. 2). Filter k's relevance is (w_{c,k} - mean over classes of w_{.,k}) . z_k:
    its exact additive share of logit_c minus the mean logit (the softmax ignores what all classes share;
    dropout is off at inference). Positive: the filter speaks for class c; negative: against it.
    A cumulative head (`models/cumulative.py`) has an output a_j per answer "risk >= j+1" instead of per class;
    class c is a yes to "risk >= c" and a no to "risk >= c+1", so filter k's relevance is its exact additive
    share of a_{c-1} - a_c: (w_{c-1,k} - w_{c,k}) . z_k, without the first term for c = 0 and the second for
    the highest class.
    A mean-pooling head has one uniform "map", relevance 1.
    """
    if not isinstance(head, GridAttention):
        return torch.ones(attention_maps.shape[0])
    z = head.attended(attention_maps[None], feature_map[None])[0]  # eq. (2), [m, C]
    num_filters, channels = z.shape
    weights = head.fc.weight.view(-1, num_filters, channels)  # [classes, m, C], matching concat(z_1 ... z_m)
    if cumulative:  # weights: [classes - 1, m, C]
        direction = torch.zeros_like(weights[0])
        if target > 0:
            direction = direction + weights[target - 1]
        if target < len(weights):
            direction = direction - weights[target]
    else:
        direction = weights[target] - weights.mean(0)
    return (direction * z).sum(1)
