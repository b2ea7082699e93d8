"""Nothing lost: a killed training run, rerun with its own command, ends with the uninterrupted run's weights;
a finished run or multirun job is not trained again; a stopped run (SIGTERM) writes its last checkpoint.

The runs that are killed, stopped and compared run as processes of their own; the others in this one
(tests/commands.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from commands import REPO, command_env, run_command, run_process

from attnwsi.data.sampling import EpochSampler, loader_options, resume_position
from attnwsi.data.synthetic import CLASSES, write_pyramidal_tiff

SMOKE = ["debug=smoke", "ssl=none", "trainer.max_epochs=3", "logger=csv"]


def command(out, *overrides) -> list[str]:
    return [sys.executable, "-m", "attnwsi.train", *SMOKE, f"hydra.run.dir={out}", *overrides]


def env(cache) -> dict:
    return command_env(cache, OMP_NUM_THREADS="1")


def run(args, cache) -> subprocess.CompletedProcess:
    """`args` as a process of its own, with `cache` as ATTNWSI_CACHE."""
    return run_process(args, cache, OMP_NUM_THREADS="1")


def start_and_stop(args, cache, checkpoint, sig) -> tuple[int, str]:
    """Start a run, wait for `checkpoint` to appear, then send `sig`; returns its exit status and stderr."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(cache),
                            cwd=REPO)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped: " + proc.stderr.read()[-3000:]
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def weights(out) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def results_without_paths(out) -> dict:
    results = json.loads((out / "results.json").read_text())
    results.pop("checkpoint")
    return results


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, smoke_cache):
    """The uninterrupted run, the folder for the others beside it, and the smoke haystack's cache."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    out = tmp_path / "run"
    run(command(out, "callbacks.resumable.every_n_steps=3"), smoke_cache)
    return out, tmp_path, smoke_cache


def test_a_run_killed_and_rerun_ends_with_the_uninterrupted_runs_weights(uninterrupted):
    reference, tmp_path, cache = uninterrupted
    out = tmp_path / "killed"
    # last.ckpt every 3 steps of 4-step epochs: saved mid-epoch (step 3) and at epoch ends (step 4)
    args = command(out, "callbacks.resumable.every_n_steps=3")
    status, _ = start_and_stop(args, cache, out / "checkpoints" / "last.ckpt", signal.SIGKILL)
    assert status == -signal.SIGKILL and not (out / "results.json").exists()
    step_at_kill = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step_at_kill < 12

    resumed = run(args, cache)
    assert "resuming from" in resumed.stdout and str(out / "checkpoints" / "last.ckpt") in resumed.stdout
    expected, got = weights(reference), weights(out)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), [k for k in expected
                                                                     if not torch.equal(expected[k], got[k])]
    assert results_without_paths(out) == results_without_paths(reference)


def test_sigterm_writes_the_last_checkpoint_and_the_rerun_completes_it(uninterrupted):
    reference, tmp_path, cache = uninterrupted
    out = tmp_path / "stopped"
    args = command(out, "callbacks.resumable.every_n_steps=1")  # stopped once training is under way
    last = out / "checkpoints" / "last.ckpt"
    status, stderr = start_and_stop(args, cache, last, signal.SIGTERM)
    assert status != 0 and "rerun the same command to resume" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr and not (out / "results.json").exists()
    assert torch.load(last, weights_only=False)["global_step"] < 12
    run(args, cache)
    expected, got = weights(reference), weights(out)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_finished_run_is_not_trained_again(uninterrupted):
    reference, tmp_path, cache = uninterrupted
    before = (reference / "results.json").stat().st_mtime_ns, (reference / "checkpoints" / "last.ckpt").stat()
    proc = run_command("attnwsi.train", *SMOKE, f"hydra.run.dir={reference}", "callbacks.resumable.every_n_steps=3",
                       cache=cache)
    assert f"{reference / 'results.json'} exists: this run is finished" in proc.stdout
    assert (reference / "results.json").stat().st_mtime_ns == before[0]
    assert (reference / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before[1].st_mtime_ns


def test_a_rerun_multirun_trains_no_job_again(tmp_path, smoke_cache):
    sweep = tmp_path / "sweep"
    args = ["-m", "debug=smoke", "ssl=none", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    run_command("attnwsi.train", *args, cache=smoke_cache)
    stamps = {job: (sweep / job / "results.json").stat().st_mtime_ns for job in ("0", "1")}
    proc = run_command("attnwsi.train", *args, cache=smoke_cache)
    assert proc.stdout.count("this run is finished") == 2
    assert {job: (sweep / job / "results.json").stat().st_mtime_ns for job in ("0", "1")} == stamps


def test_the_epoch_sampler_orders_each_epoch_from_the_seed_and_skips_what_a_resumed_run_trained_on():
    data = list(range(10))
    sampler = EpochSampler(data, seed=3, shuffle=True)
    sampler.set_epoch(2)
    epoch_2 = list(sampler)
    assert sorted(i for _, i in epoch_2) == data and {e for e, _ in epoch_2} == {2}
    again = EpochSampler(data, seed=3, shuffle=True)  # a new process, straight into epoch 2
    again.set_epoch(2)
    again.skip_once(2, 4)
    assert list(again) == epoch_2[4:]
    assert list(again) == epoch_2  # the skip holds for one pass only
    sampler.set_epoch(3)
    assert [i for _, i in sampler] != [i for _, i in epoch_2]
    assert resume_position(None) == (0, 0)


def test_preprocess_killed_mid_batch_is_completed_by_its_rerun_as_if_never_killed(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    rows = []
    for k in range(12):
        image = np.full((1600, 1600, 3), 245, np.uint8)
        image[200 + 20 * k: 1400, 300: 1300 - 20 * k] = (200, 110, 160)
        write_pyramidal_tiff(slides / f"s{k:02d}.tiff", image, mpp=0.5)
        rows.append(dict(slide_id=f"s{k:02d}", patient_id=f"p{k}", label=CLASSES[k % 4]))
    sheet = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)

    def args(out):
        return [f"slides={slides}", f"labels={sheet}", f"out={out}"]

    run_command("attnwsi.preprocess", *args(tmp_path / "whole"))
    out = tmp_path / "killed"
    status, _ = start_and_stop([sys.executable, "-m", "attnwsi.preprocess", *args(out)], tmp_path / "cache",
                               out / "done" / "s02.json", signal.SIGKILL)
    assert status == -signal.SIGKILL and not (out / "manifest.csv").exists()
    assert 3 <= len(list((out / "done").glob("*.json"))) < 12
    rerun = run_command("attnwsi.preprocess", *args(out))
    assert "slides were already done" in rerun.stdout
    for name in ("manifest.csv", "stats.json", "class_distribution.csv"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert sorted(p.name for p in (out / "qa").iterdir()) == [f"s{k:02d}.png" for k in range(12)]
    assert not list(out.rglob("*.tmp"))


def test_a_finished_run_directory_is_not_taken_for_a_run_with_other_settings(uninterrupted):
    reference, tmp_path, cache = uninterrupted
    proc = run_command("attnwsi.train", *SMOKE, f"hydra.run.dir={reference}", "callbacks.resumable.every_n_steps=3",
                       "seed=5", cache=cache, check=False)
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2 and "Traceback" not in text, text[-3000:]
    assert "is the result of a run with other settings" in text and "'seed=5'" in text


def test_a_two_trial_optuna_search_runs_and_report_prints_it(tmp_path, smoke_cache):
    sweep = tmp_path / "sweep"
    run_command("attnwsi.train", "-m", "hparams_search=attention_optuna", "debug=smoke", "ssl=none",
                "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", cache=smoke_cache)
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and "best_value" in best
    trials = [json.loads((sweep / job / "results.json").read_text()) for job in ("0", "1")]
    assert all(any(o.startswith("model.lr=") for o in trial["overrides"]) for trial in trials)
    assert trials[0]["overrides"] != trials[1]["overrides"]
    best_value = float(best.split("best_value:")[1].split()[0])
    assert best_value == max(trial["val"]["mean"]["f1"] for trial in trials)  # chosen on validation
    report = run_command("attnwsi.report", str(sweep), "--draws", "20")
    assert "attention (2 runs)" in report.stdout and str(sweep / "0" / "results.json") in report.stdout


def test_loader_options_default_to_the_cpus_available_capped_and_read_ahead():
    cpus = len(os.sched_getaffinity(0))
    assert loader_options(None, None) == {"num_workers": min(8, cpus), "pin_memory": False,
                                          "persistent_workers": True, "prefetch_factor": 4}
    assert loader_options(0, None) == {"num_workers": 0, "pin_memory": False}  # no workers: nothing to keep
