"""Labels that are an image's highest-risk finding: one "risk >= class k" output per class above the first.

When the class list is in risk order (normal < ... < adenocarcinoma) and an image takes the class of its
worst lesion, as in the paper's Barrett's data and the synthetic haystack, a softmax over the classes makes
the classes compete: an image with a dysplastic lesion beside a non-dysplastic one holds evidence for both,
and the more common one can win. `model.loss=cumulative` asks instead, for each k = 1 .. C-1, "is there a
finding of risk >= k?" (a sigmoid each, trained by binary cross-entropy: an image of class y answers yes for
k <= y, no above), so evidence of a lower-risk lesion never speaks against a higher-risk one (the cumulative
ordinal model, e.g. CORAL, Cao et al. 2020, without its shared weights).

The class probabilities follow from the answers: p(y) = P(risk >= y) - P(risk >= y+1), with the answers made
non-increasing in k first. Their logarithms stand in for a softmax model's logits everywhere downstream (a
softmax of them gives back p), so prediction, metrics and maps read both models alike: the prediction is the
most probable class, as for a softmax (which can differ from counting the yes answers when they are unsure).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_log_probabilities(risk_logits: torch.Tensor) -> torch.Tensor:
    """[N, C-1] logits of P(risk >= k), k = 1 .. C-1 -> [N, C] log class probabilities."""
    at_least = torch.sigmoid(risk_logits.float()).cummin(dim=1).values  # non-increasing in k
    upper = torch.cat([at_least.new_ones(len(at_least), 1), at_least], dim=1)  # P(risk >= y), y = 0 .. C-1
    lower = torch.cat([at_least, at_least.new_zeros(len(at_least), 1)], dim=1)  # P(risk >= y + 1)
    return (upper - lower).clamp_min(1e-12).log()  # float32: a class below about 1e-7 gets 1e-12


def cumulative_loss(risk_logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each "risk >= k" output against (label >= k), averaged over k, and over the
    images weighted by their class's weight (as cross_entropy's `weight`)."""
    thresholds = torch.arange(1, risk_logits.shape[1] + 1, device=labels.device)
    targets = (labels[:, None] >= thresholds).to(risk_logits.dtype)
    per_image = F.binary_cross_entropy_with_logits(risk_logits, targets, reduction="none").mean(1)
    weights = class_weights[labels]
    return (weights * per_image).sum() / weights.sum()
