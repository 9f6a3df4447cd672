#!/usr/bin/env bash
# Install USB (semilearn, the Unified Semi-supervised learning Benchmark) into its own venv, beside fewlabels' own
# .venv and never mixed with it: benchmarks/peers/.venv-usb (git-ignored). Then apply the CPU patches of PATCHES.md.
#
#   bash benchmarks/peers/setup_usb.sh            # install the pinned versions of usb-requirements.txt
#   bash benchmarks/peers/setup_usb.sh --unpinned # resolve semilearn's dependencies afresh and rewrite the pin file
#
# torch and torchvision are installed first, at the versions fewlabels uses, and held there by a constraints file
# while semilearn pulls the rest (its own requirement is only torch>=1.12): PyPI's default torch wheels bring GBs
# of CUDA libraries this CPU comparison does not use. Idempotent: a second run only checks and re-applies patches.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
VENV=${USB_VENV:-$HERE/.venv-usb}
PY=${PYTHON:-python3}
TORCH=torch==2.14.1
TORCHVISION=torchvision==0.29.1
SEMILEARN=semilearn==0.3.2
UNPINNED=0
for a in "$@"; do [ "$a" = "--unpinned" ] && UNPINNED=1; done

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --quiet)
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
printf '%s\n' "$TORCH" "$TORCHVISION" > "$CONSTRAINTS"

if [ "$UNPINNED" = 1 ] || ! "$VENV/bin/python" -c "import semilearn" 2>/dev/null; then
  "${PIP[@]}" install --upgrade pip >/dev/null 2>&1 || true
  "${PIP[@]}" install "$TORCH" "$TORCHVISION"
  if [ "$UNPINNED" = 1 ] || [ ! -s usb-requirements.txt ]; then
    "${PIP[@]}" install -c "$CONSTRAINTS" "$SEMILEARN"
    {
      echo "# USB's environment as installed by benchmarks/peers/setup_usb.sh --unpinned ($(date -u +%Y-%m-%d)," \
           "Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')): $SEMILEARN"
      echo "# with torch/torchvision held at fewlabels' versions (the CUDA packages below are torch's own dependencies)"
      "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v -E '^(pip|setuptools|wheel)=='
    } > usb-requirements.txt
    echo "pinned $(grep -c '==' usb-requirements.txt) packages in benchmarks/peers/usb-requirements.txt"
  else
    "${PIP[@]}" install -c "$CONSTRAINTS" -r usb-requirements.txt
  fi
fi
"$VENV/bin/python" "$HERE/patch_usb.py"
"$VENV/bin/python" -W ignore -c "import importlib.metadata as m, torch; \
print('semilearn', m.version('semilearn'), 'torch', torch.__version__, 'ready in', '$VENV')"
