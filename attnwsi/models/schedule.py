"""The paper's cyclical learning rate (section 4.3).

Adam starts at 1e-3 and decays by 0.95 after each epoch; every 50 epochs the rate is reset, to 1e-4:

    lr(epoch) = base * gamma ** (epoch mod cycle),   base = lr in the first cycle, restart_lr after
"""

from __future__ import annotations

from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cyclic_lr(epoch: int, lr: float, restart_lr: float, gamma: float, cycle_epochs: int) -> float:
    base = lr if epoch < cycle_epochs else restart_lr
    return base * gamma ** (epoch % cycle_epochs)


def _factor(epoch: int, lr: float, restart_lr: float, gamma: float, cycle_epochs: int) -> float:
    return cyclic_lr(epoch, lr, restart_lr, gamma, cycle_epochs) / lr


def cyclic_scheduler(optimizer: Optimizer, lr: float, restart_lr: float, gamma: float,
                     cycle_epochs: int) -> LambdaLR:
    """Stepped once per epoch; `optimizer` must have been built with learning rate `lr`."""
    return LambdaLR(optimizer, partial(_factor, lr=lr, restart_lr=restart_lr, gamma=gamma,
                                       cycle_epochs=cycle_epochs))
