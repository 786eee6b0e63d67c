#!/usr/bin/env bash
# Create .venv and install pexir-tryon with its test dependencies. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision are pinned in pyproject.toml; pip takes them from this machine's disk when it can.
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "pexir-tryon installed in .venv" >&2
