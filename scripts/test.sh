#!/usr/bin/env bash
# Set up and run the tests (what CI runs). Unit tests need neither ../shared nor the internet.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check fewlabels tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
