#!/usr/bin/env bash
# The wheels USB needs on a GPU device machine, where there is no package index (benchmarks/peers/PATCHES.md).
# Its image has torch, torchvision, timm, transformers, scikit-learn, scikit-image, scipy, matplotlib, tqdm and
# tensorboard; semilearn itself and three small pure-Python packages it imports are missing (aim and wandb, which it
# also imports, are stood in for by benchmarks/peers/stubs). For CPython 3.12 on x86-64 (the device's python3), into
# .whl/ (git-ignored), to be carried with `carry: [".whl", "shared-data"]` by gpu_side_by_side.sh:
#
#     bash benchmarks/peers/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl \
    semilearn==0.3.2 progress==1.6.1 ruamel.yaml==0.19.1 ruamel.yaml.clib==0.2.15
ls -la .whl
du -sh .whl
