#!/usr/bin/env bash
# Check and measure a CUDA GPU: scripts/gpu_check.sh OUT_DIR [--quick] [--data PATH]
# (stages, limits and outputs: scripts/gpu_check.py). Exits 2 without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py "$@"
