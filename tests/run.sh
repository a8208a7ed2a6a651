#!/usr/bin/env bash
# Set up (venv + pinned install, see tools/bootstrap.sh) and run the whole test suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k stream -x`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$repo/tools/bootstrap.sh" | tail -n 1)"
cd "$repo"
exec "$python" -m pytest "$@"
