#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the pinned CPU route.
# Usage: source-free; prints the venv's python path on its last line.
#   DNI_VENV=path   where the venv lives (default: <repo>/.venv)
# Idempotent: a stamp holding the hash of the pins skips the slow fairseq build next time.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DNI_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

"$python" - <<'PY' || { echo "fairseq-dni's pinned route needs Python 3.11 (fairseq-fixed); for Python < 3.11 install 'fairseq==0.12.2' and 'pip install .' yourself" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY

stage1="torch==2.13.0 numpy==2.4.6 cython==3.3.1 setuptools wheel"
stamp_want="$(cat "$repo/requirements.txt" | sha1sum | cut -c1-12)-$(echo "$stage1" | sha1sum | cut -c1-12)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if [ "$(cat "$venv/.dni-stamp" 2>/dev/null)" != "$stamp_want" ]; then
  echo "[bootstrap] installing pinned dependencies into $venv (first time: ~4 minutes, fairseq builds from source)" >&2
  # shellcheck disable=SC2086
  "${pip[@]}" install $stage1
  "${pip[@]}" install --no-build-isolation -r "$repo/requirements.txt"
  echo "$stamp_want" > "$venv/.dni-stamp"
fi
# the package itself, non-editable, as a user would have it (so '--user-dir fairseq_dni' works anywhere)
"${pip[@]}" install --no-build-isolation --no-deps --force-reinstall "$repo" >/dev/null
echo "$venv/bin/python"
