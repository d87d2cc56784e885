#!/usr/bin/env bash
# Installs what the tests need, then runs the whole test suite (CPU only; about 5 minutes on an idle 2-core
# machine, several times that when other jobs keep the cores busy; see the README's Quick start).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec ${PYTHON:-python3} -m pytest tests -q -p no:cacheprovider "$@"
