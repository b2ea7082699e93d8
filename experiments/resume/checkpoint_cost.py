"""What resumability costs the default run: the time of one `last.ckpt` save of the default model, against
the time of one training epoch measured in the same process (one epoch of the default haystack recipe).

    python experiments/resume/checkpoint_cost.py [--epochs-measured 1]

The default run saves `last.ckpt` once per epoch (18 epochs) plus every 20 minutes (never within its ~6
minutes), so the extra cost is about 18 x save / (18 x epoch) = save / epoch.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir

from attnwsi.training.resume import Resumable
from attnwsi.training.run import build_run

CONF = Path(__file__).resolve().parents[2] / "conf"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["ssl=none", "trainer.max_epochs=1", "logger=[]", "callbacks=[]",
                                          f"paths.output_dir={tmp}", f"paths.root_dir={CONF.parent}"])
        datamodule, model, trainer = build_run(cfg)
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        epoch = time.perf_counter() - start
        resumable = Resumable(f"{tmp}/checkpoints", seed=0)
        saves = []
        for _ in range(5):
            start = time.perf_counter()
            resumable.write_last(trainer)
            saves.append(time.perf_counter() - start)
        size = (Path(tmp) / "checkpoints" / "last.ckpt").stat().st_size / 2**20
    save = sorted(saves)[len(saves) // 2]
    print(f"one epoch (incl. validation, first-epoch overheads): {epoch:.1f} s")
    print(f"one last.ckpt save ({size:.0f} MiB), median of 5: {save:.3f} s")
    print(f"time ratio with / without the per-epoch last.ckpt: {(epoch + save) / epoch:.4f}")


if __name__ == "__main__":
    L.seed_everything(0)
    main()
