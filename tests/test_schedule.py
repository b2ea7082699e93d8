"""The paper's cyclical Adam schedule (1e-3 decaying by 0.95 per epoch, reset to 1e-4 every 50 epochs), and the
fused Adam every model trains with."""

import pytest
import torch

from attnwsi.models.schedule import cyclic_lr, cyclic_scheduler

EXPECTED = {0: 1e-3, 1: 1e-3 * 0.95, 49: 1e-3 * 0.95**49, 50: 1e-4, 51: 1e-4 * 0.95, 100: 1e-4, 199: 1e-4 * 0.95**49}


@pytest.mark.parametrize("epoch", sorted(EXPECTED))
def test_cyclic_lr(epoch):
    assert cyclic_lr(epoch, lr=1e-3, restart_lr=1e-4, gamma=0.95, cycle_epochs=50) == pytest.approx(EXPECTED[epoch])


def test_scheduler_steps_the_optimizer_through_the_cycles():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = cyclic_scheduler(optimizer, lr=1e-3, restart_lr=1e-4, gamma=0.95, cycle_epochs=50)
    seen = {}
    for epoch in range(200):
        seen[epoch] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    for epoch, lr in EXPECTED.items():
        assert seen[epoch] == pytest.approx(lr)


def test_every_model_trains_with_the_fused_adam():
    """The fused Adam is a tenth of the CPU default's training step (experiments/speed/README.md)."""
    from attnwsi.models.classifier import AttentionClassifier
    from attnwsi.models.crop_classifier import CropClassifier
    from attnwsi.models.self_supervised import SimCLR

    models = [AttentionClassifier(["normal", "tumor"], tile_um=64, tile_px=32, num_filters=4),
              CropClassifier(["normal", "tumor"], crop_um=64, crop_px=32), SimCLR()]
    for model in models:
        optimizer = model.configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
        assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"] is True, type(model).__name__
