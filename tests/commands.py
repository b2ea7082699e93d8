"""Running the commands from the tests: `run_command` calls a command's `main` in the test's own process, as
`python -m attnwsi.NAME ARGS` would run it, and returns its exit status and console output.

A new Python process pays 13-15 s of imports (torch, Lightning, torchmetrics, wandb) on a 2-core machine
before the command starts; in the test process those are imported once. What only a process of its own can
show (a quiet console from start to end, a kill, a signal, DDP's processes) is run with `run_process`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Completed:
    """What a command left: its exit status and what it printed (as subprocess.CompletedProcess has them)."""
    returncode: int
    stdout: str
    stderr: str


def command_env(cache: Path | None, **extra: str) -> dict[str, str]:
    """The environment a test runs a command in: `cache` as ATTNWSI_CACHE, W&B offline."""
    env = {**os.environ, "WANDB_MODE": "offline", **extra}
    if cache is not None:
        env["ATTNWSI_CACHE"] = str(cache)
    return env


def run_command(module: str, *args: str, cache: Path | None = None, check: bool = True, cwd: Path = REPO,
                **extra_env: str) -> Completed:
    """`python -m MODULE ARGS` (with `cache` as ATTNWSI_CACHE and `extra_env`, from `cwd`) in this process: its
    `main()` under that command line, stdout and stderr captured, its SystemExit taken as the exit status, an
    exception's traceback printed on stderr as Python would (status 1). `check`: the status must be 0."""
    main = importlib.import_module(module).main
    if main.__code__.co_filename.endswith(os.path.join("hydra", "main.py")):  # a Hydra command: its config
        # folder, which `python -m` finds from __main__
        args = (f"--config-path={REPO / 'conf'}", *args)
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    with (mock.patch.dict(os.environ, command_env(cache, **extra_env)), mock.patch.object(sys, "argv", [module, *args]),
          contextlib.chdir(cwd), log_handlers_to(stdout, stderr), contextlib.redirect_stdout(stdout),
          contextlib.redirect_stderr(stderr)):
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code
            returncode = code if isinstance(code, int) else (0 if code is None else 1)
        except Exception:  # noqa: BLE001  (what the interpreter would print, then exit 1)
            traceback.print_exc()
            returncode = 1
    completed = Completed(returncode, stdout.getvalue(), stderr.getvalue())
    if check:
        assert returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return completed


@contextlib.contextmanager
def log_handlers_to(stdout: io.StringIO, stderr: io.StringIO):
    """The console handlers that libraries attached to their loggers when imported (Lightning's "Seed set
    to 0", on the stderr of that moment) write into `stdout`/`stderr` for a while."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.Logger.manager.loggerDict)]
    handlers = {h for logger in loggers for h in logger.handlers
                if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)}
    streams = {h: h.stream for h in handlers}
    for h in handlers:
        h.setStream(stdout if h.stream is sys.stdout else stderr)
    try:
        yield
    finally:
        for h, stream in streams.items():
            h.setStream(stream)


def run_process(args: list[str], cache: Path | None = None, check: bool = True, timeout: int = 600,
                **extra_env: str) -> subprocess.CompletedProcess:
    """`args` as a process of its own (`[sys.executable, "-m", MODULE, ...]`), from the repository."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=command_env(cache, **extra_env),
                          cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def python_module(module: str, *args: str) -> list[str]:
    """The command line `python -m MODULE ARGS` with this interpreter."""
    return [sys.executable, "-m", module, *args]
