#!/usr/bin/env bash
# Installs d2csr and everything it needs (idempotent: a second run only checks).
# torch 2.14.1 / torchvision 0.29.1 are the versions this project is tested with; pip takes them from the
# local wheel cache where one exists, else from the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check 'torch==2.14.1' 'torchvision==0.29.1'
$PY -m pip install -q --disable-pip-version-check -e '.[test]'
