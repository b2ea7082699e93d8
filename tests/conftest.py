"""Shared fixtures. Tests that need the real slides in ../shared/data skip with a reason when it is absent.

The smoke haystack, its SimCLR trunk and one trained smoke run are made once per test run (`smoke_run`,
the first `python -m attnwsi.train debug=smoke` a user runs, from an empty cache) and shared by the tests that
only read them: their commands get `smoke_cache` as ATTNWSI_CACHE. The run starts in the background once
collection has found a test that needs it; under pytest-xdist the workers share it (the first starts it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from commands import REPO
from filelock import FileLock

os.environ.setdefault("WANDB_MODE", "offline")

SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real test slides not found at {SHARED_DATA} (the project's ../shared folder)")
    return SHARED_DATA


def session_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """`name` under the test run's temporary folder; one folder for all pytest-xdist workers."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-of-USER/pytest-N/, the workers' popen-gwK/ folders lie in it
    return base / name


@dataclass
class SmokeRun:
    out: Path        # the run directory (hydra.run.dir)
    cache: Path      # its ATTNWSI_CACHE: haystack_smoke/ and trunks/
    stdout: str
    stderr: str

    @property
    def haystack(self) -> Path:
        return self.cache / "haystack_smoke"

    @property
    def results(self) -> dict:
        return json.loads((self.out / "results.json").read_text())

    @property
    def last_checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.ckpt"


# The wrapper around the smoke run: runs it and writes its exit status and output to command.json at the end.
RECORD = """if True:
    import json, os, subprocess, sys
    command, record = json.loads(sys.argv[1]), sys.argv[2]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    with open(record + ".tmp", "w") as f:
        json.dump({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}, f)
    os.replace(record + ".tmp", record)
"""


def start_smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Starts the test run's smoke run in the background unless started already (by this or another worker);
    returns its folder. Started as soon as collection has found a test that needs it, so that it runs while
    the tests that do not need it run."""
    root = session_dir(tmp_path_factory, "smoke")
    with FileLock(str(root) + ".lock"):
        if not root.exists():
            root.mkdir(parents=True)
            env = {**os.environ, "ATTNWSI_CACHE": str(root / "cache"), "WANDB_MODE": "offline"}
            command = [sys.executable, "-m", "attnwsi.train", "debug=smoke", f"hydra.run.dir={root / 'run'}"]
            subprocess.Popen([sys.executable, "-c", RECORD, json.dumps(command), str(root / "command.json")],
                             env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    return root


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly and any("smoke_run" in item.fixturenames for item in session.items):
        start_smoke_run(session.config._tmp_path_factory)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """`python -m attnwsi.train debug=smoke` from an empty cache, once per test run: it generates the smoke
    haystack, pretrains its trunk (SimCLR) and trains and tests the attention model on it."""
    root = start_smoke_run(tmp_path_factory)
    record, deadline = root / "command.json", time.monotonic() + 660
    while not record.exists():
        assert time.monotonic() < deadline, f"the smoke run into {root} did not end within 11 minutes"
        time.sleep(0.2)
    command = json.loads(record.read_text())
    assert command["returncode"] == 0, command["stdout"][-3000:] + command["stderr"][-5000:]
    return SmokeRun(root / "run", root / "cache", command["stdout"], command["stderr"])


@pytest.fixture(scope="session")
def smoke_cache(smoke_run) -> Path:
    """A cache folder (ATTNWSI_CACHE, paths.cache_dir) holding the smoke haystack and its SimCLR trunk, for
    commands that only read them. A command with other pretraining settings adds its own trunk (under the
    cache's file lock); one that must start from an empty trunk cache takes `haystack_cache`."""
    return smoke_run.cache


@pytest.fixture
def haystack_cache(smoke_run, tmp_path) -> Path:
    """A cache folder of this test's own holding a copy of the smoke haystack and no trunk."""
    cache = tmp_path / "cache"
    shutil.copytree(smoke_run.haystack, cache / "haystack_smoke")
    return cache
