#!/usr/bin/env bash
# Installs what the tests need, then runs the whole test suite (CPU only; about 3 minutes on an idle 2-core
# machine, two to three times that when other jobs keep the cores busy; see the README's Quick start).
# Two pytest-xdist workers, one per core (each test runs one intra-op thread), which take queued tests from each
# other (--dist worksteal: the long tests do not end up queued behind each other); extra arguments go to pytest, e.g. `bash scripts/test.sh -n 0` for one process, `-n 4` on a larger machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec ${PYTHON:-python3} -m pytest tests -q -p no:cacheprovider -n 2 --dist worksteal "$@"
