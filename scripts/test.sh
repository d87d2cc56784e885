#!/usr/bin/env bash
# Installs what the tests need, then runs the whole test suite (CPU only; about 7 minutes on an idle 2-core
# machine, two to three times that when other jobs keep the cores busy; see the README's Quick start).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec ${PYTHON:-python3} -m pytest tests -q -p no:cacheprovider "$@"
