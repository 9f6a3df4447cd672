#!/usr/bin/env bash
# The main job on the embedded default dataset: Noisy Student self-training on scikit-learn's digits with
# 5 labels per class, printed next to the supervised-only baseline (round 0). Works offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fewlabels selftrain --data digits --labels-per-class 5 --student-models cnn-s,cnn-s --student-epochs 12 --out runs/demo-digits "$@"
