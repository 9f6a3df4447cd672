#!/usr/bin/env bash
# Create .venv and install fewlabels with its test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import fewlabels, torch, torchvision, timm, pytest, hypothesis, onnx, onnxruntime, tensorboard" \
    2>/dev/null; then
  .venv/bin/pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install --quiet -e ".[test]"
fi
# the C augmentation kernels are built by the install (setup.py); a checkout installed before that, or a changed
# _native.c, is built again here when a C compiler is present (fewlabels never compiles at run time)
if command -v "${CC:-cc}" >/dev/null 2>&1; then
  so=$(ls fewlabels/augment/_fl_augment*.so 2>/dev/null | head -1 || true)
  if [ -z "$so" ] || [ fewlabels/augment/_native.c -nt "$so" ]; then
    .venv/bin/pip install --quiet --no-deps -e . 2>/dev/null
  fi
fi
