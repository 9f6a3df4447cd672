#!/usr/bin/env bash
# Create .venv and install fewlabels with its test tools. Idempotent: a second run only checks.
# --dev (and CI=true) also installs Chromium, for the browser test of the HTML report (tests/test_report.py).
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
for a in "$@"; do [ "$a" = "--dev" ] && DEV=1; done
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
# the browser test of the HTML report needs Chromium: Debian's package, where --dev or CI asks for it
if { [ "$DEV" = 1 ] || [ "${CI:-}" = "true" ]; } && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v chromium-browser >/dev/null 2>&1 && [ -z "${FEWLABELS_CHROMIUM:-}" ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "installing chromium (apt-get) for the browser test" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
