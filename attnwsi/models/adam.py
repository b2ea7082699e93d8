"""Adam, as every model here is trained: torch's fused implementation, one kernel over all the parameters.

The same algorithm as torch's default (a loop over the parameters on the CPU, `foreach` on CUDA); results
differ only in float rounding, which moves a run's scores as another seed does. On the CPU default a step over
resnetv2_18's 11.6 M parameters takes 4-6 ms instead of 19-25, where a whole training step takes 120-170 ms
(experiments/speed/README.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
