#!/usr/bin/env bash
# Installs what the tests need, then runs the whole test suite (CPU only; about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec ${PYTHON:-python3} -m pytest tests -q -p no:cacheprovider "$@"
