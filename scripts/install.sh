#!/usr/bin/env bash
# Installs d2csr and everything it needs, with the test tools and the optional extras (onnx, onnxruntime,
# spandrel), so that no test is skipped for a missing package (idempotent: a second run only checks).
#
# PyTorch: an installed torch 2.1-2.14 with its torchvision is kept as it is (e.g. a CPU-only build you installed
# first). Otherwise torch 2.14.1 / torchvision 0.29.1, the versions this project is tested with, are installed:
# from the package index that is the CUDA build (about 6 GB with its libraries; it runs on CPUs too). Set
# TORCH_INDEX_URL to install from another index instead, e.g. PyTorch's CPU-only wheels (about 1 GB):
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install -q --disable-pip-version-check)
if "$PY" - <<'CHECK' 2>/dev/null; then
import sys
import torch, torchvision  # noqa: F401
major, minor = (int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
sys.exit(0 if (2, 1) <= (major, minor) < (2, 15) else 1)
CHECK
    echo "Using the installed torch $("$PY" -c 'import torch; print(torch.__version__)')."
else
    "${PIP[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} 'torch==2.14.1' 'torchvision==0.29.1'
fi
"${PIP[@]}" -e '.[test,onnx,spandrel]'
