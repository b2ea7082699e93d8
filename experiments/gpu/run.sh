#!/usr/bin/env bash
# The first-GPU benchmark (experiments/gpu/benchmark.py): bash experiments/gpu/run.sh [--device cpu --smoke] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export WANDB_MODE=offline
exec "$PY" experiments/gpu/benchmark.py "$@"
