"""Loggers on the real training entry point: W&B offline (nothing touches the network), CSV, a multirun.

The attention-map and confusion-matrix callbacks are selected with `callbacks=[default,attention_maps]`
(which also holds once `default` includes them).
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from commands import REPO, run_command

from attnwsi.training.callbacks import log_picture

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]
CALLBACKS = "callbacks=[default,attention_maps]"


def offline_env(tmp_path: Path) -> dict:
    """W&B offline, with every folder it writes to (and HOME, for its settings and .netrc) under tmp_path."""
    wandb_env = {f"WANDB_{name}_DIR": str(tmp_path / f"wandb_{name.lower()}") for name in ("CONFIG", "CACHE", "DATA")}
    return {**os.environ, **wandb_env, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"),
            "HOME": str(tmp_path / "home"), "ATTNWSI_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def train(tmp_path: Path, cache: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    """The smoke run with the attention-map callbacks, its haystack and trunk read from `cache`, in a process of
    its own (W&B's run belongs to its process)."""
    flags = ["--multirun"] if multirun else []
    env = {**offline_env(tmp_path), "ATTNWSI_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "attnwsi.train", *flags, "debug=smoke", CALLBACKS, *overrides],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def check_offline_wandb_run(run_dir: Path) -> None:
    """One offline W&B run in `run_dir/wandb` holding attention maps, the confusion matrix, a Table, metrics."""
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    media = runs[0] / "files" / "media"
    assert list((media / "images" / "val" / "attention_maps").glob("*.png"))
    assert list((media / "images" / "val").glob("confusion_matrix_*.png"))
    assert list((media / "table" / "val").glob("attention_table_*.table.json"))
    history = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in ("val/f1_mean", "test/f1_mean", *(f"val/{m}/{c}" for m in ("f1", "recall") for c in CLASSES)):
        assert key.encode() in history, key


def test_wandb_offline_run_holds_attention_maps_and_metrics(tmp_path, smoke_cache):
    out = tmp_path / "run"
    train(tmp_path, smoke_cache, "logger=wandb", f"hydra.run.dir={out}")
    check_offline_wandb_run(out)
    assert not (out / "attention_maps").exists()  # W&B takes the pictures itself


def test_csv_logger_gets_the_pictures_as_pngs_in_the_run_dir(tmp_path, smoke_cache):
    out = tmp_path / "run"
    run_command("attnwsi.train", "debug=smoke", CALLBACKS, "logger=csv", f"hydra.run.dir={out}", cache=smoke_cache)
    manifest = pd.read_csv(smoke_cache / "haystack_smoke" / "manifest.csv")
    val_ids = manifest.loc[manifest["split"] == "val"].groupby("label")["sub_image_id"].first()
    assert sorted(p.stem for p in (out / "attention_maps" / "epoch_000").glob("*.png")) == sorted(val_ids)
    assert sorted(p.name for p in (out / "confusion_matrix").glob("*.png")) == [
        "epoch_000.png", "test.png", "validate.png"]
    metrics = pd.read_csv(out / "csv" / "version_0" / "metrics.csv")
    assert {f"val/{m}/{c}" for m in ("accuracy", "recall", "precision", "f1") for c in CLASSES} <= set(metrics)


@pytest.mark.slow
def test_every_job_of_a_multirun_gets_its_own_wandb_run(tmp_path, smoke_cache):
    sweep = tmp_path / "sweep"
    train(tmp_path, smoke_cache, "seed=0,1", "logger=[csv,wandb]", f"hydra.sweep.dir={sweep}", multirun=True)
    for job in ("0", "1"):
        check_offline_wandb_run(sweep / job)
        assert list((sweep / job / "attention_maps" / "epoch_000").glob("*.png"))


def test_each_wandb_logger_made_in_one_process_starts_its_own_run(tmp_path):
    """The jobs of a multirun share one process: the second job's logger must not log into the first's run
    (the fast guard of the promise; the multirun end to end above is `slow`)."""
    code = """if True:
        import sys
        from attnwsi.training.loggers import wandb_logger
        ids = []
        for job in ("job_0", "job_1"):  # each job of a multirun has its own run directory
            logger = wandb_logger(project="attnwsi", name=job, save_dir=f"{sys.argv[1]}/{job}")
            logger.log_metrics({"val/f1_mean": 0.5})
            ids.append(logger.experiment.id)
        import wandb
        wandb.finish()
        print(" ".join(ids))
    """
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                          timeout=120, env=offline_env(tmp_path), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.split()[-2:]
    assert first != second
    runs = sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "runs").glob("job_*/wandb/offline-run-*"))
    assert runs == sorted([first, second])


def test_a_resumed_run_logs_into_the_same_wandb_run(tmp_path):
    code = """if True:
        import sys
        from attnwsi.training.loggers import wandb_logger
        logger = wandb_logger(project="attnwsi", name="run", save_dir=sys.argv[1])
        logger.log_metrics({"val/f1_mean": 0.5})
        print("run id:", logger.experiment.id)
    """
    ids = []
    for _ in range(2):  # the run, then its resumption in a new process
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                              timeout=120, env=offline_env(tmp_path), stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ids.append(proc.stdout.split("run id:")[-1].split()[0])
    assert ids[0] == ids[1] == (tmp_path / "run" / "wandb_run_id.txt").read_text().strip()


def test_wandb_goes_offline_without_a_login(tmp_path):
    env = offline_env(tmp_path)
    env.pop("WANDB_MODE")
    env.pop("WANDB_API_KEY", None)
    env.pop("NETRC", None)
    code = "from attnwsi.training.loggers import wandb_offline; print(wandb_offline())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.stdout.strip() == "True", proc.stderr[-3000:]


def test_pictures_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tensorboard")
    trainer = SimpleNamespace(loggers=[logger], global_step=7)
    picture = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    log_picture(trainer, "val/attention_maps/a", picture, "a caption", tmp_path / "unused.png")
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("val/attention_maps/a")
    assert (image.step, image.width, image.height) == (7, 40, 30)
    assert not (tmp_path / "unused.png").exists()  # only a CSVLogger gets PNG files
