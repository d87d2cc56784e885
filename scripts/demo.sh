#!/usr/bin/env bash
# Installs everything, then runs the demo: builds a real-photo data set, trains a small D2C-SR in two
# stages on the CPU, tests it and prints PSNR/SSIM for bicubic, each branch, the fused output and the oracle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec ${PYTHON:-python3} scripts/demo.py "$@"
