#!/usr/bin/env bash
# Set up (venv + pinned install, see tools/bootstrap.sh) and run the whole test suite, one pytest-xdist
# worker per core (PYTEST_WORKERS=N to choose; 0 runs in this process), each test file on one worker
# (a file's module-scoped fixtures share their runs). Extra arguments go to pytest, e.g.
# `bash tests/run.sh -k stream -x`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$repo/tools/bootstrap.sh" | tail -n 1)"
cd "$repo"
exec "$python" -m pytest -n "${PYTEST_WORKERS:-auto}" --dist loadfile "$@"
