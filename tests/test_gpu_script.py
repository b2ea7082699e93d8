"""experiments/gpu/run.sh, the first-GPU benchmark, runs on the CPU with tiny sizes and writes every key."""

import json
import os
import subprocess

from conftest import REPO

KEYS = {"device", "smoke", "torch", "bf16_streamed_training", "smoke_train", "streaming", "extractor_tiles_per_s",
        "train_step_tiles_per_s", "peak_memory_gib", "seconds"}


def test_the_gpu_benchmark_runs_on_the_cpu_and_writes_every_key(tmp_path, shared_data):
    out = tmp_path / "results.json"
    env = {**os.environ, "PY": os.sys.executable}
    proc = subprocess.run(["bash", "experiments/gpu/run.sh", "--device", "cpu", "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == KEYS and results["device"] == "cpu"
    training = results["bf16_streamed_training"]
    assert training["ok"] and training["finite"] and len(training["losses"]) == 3, training
    assert all(run["ok"] for run in results["smoke_train"].values()), results["smoke_train"]
    assert set(results["smoke_train"]) == {"attention", "attention_streaming", "meanpool", "sliding_window"}
    assert results["streaming"]["ok"] and results["streaming"]["max_relative_difference"] <= 1e-4
    assert results["extractor_tiles_per_s"]["fp32"] > 0 and results["extractor_tiles_per_s"]["bf16"] > 0
    rates = results["train_step_tiles_per_s"]
    assert rates["in_memory"] > 0 and rates["real_data"] > 0 and 0 < rates["real_over_in_memory"]
    assert results["peak_memory_gib"] == {"4096": None, "16384": None}  # CUDA only
