#!/usr/bin/env bash
# The GPU check of fairseq-dni (docs/gpu_check.md): throughput of stock fairseq-train against a bare
# PyTorch nn.LSTM loop, short fp16 / bf16 / amp runs of the alternating recipe with fairseq-eval-lm,
# and peak GPU memory, in one command of under 8 minutes on one GPU, install and build included.
#
#   bash benchmarks/gpu_check.sh --prepare     # here (pip works): wheels + fairseq's sdist into .gpu_wheels/
#   bash benchmarks/gpu_check.sh               # on the GPU machine (no package index): install, then check
#   bash benchmarks/gpu_check.sh --cpu --tiny  # anywhere, about a minute: the same path at tiny sizes
#
# The GPU machine has Python 3.12 and a CUDA torch but no fairseq, omegaconf, hydra-core, antlr4
# runtime or bitarray: they come from .gpu_wheels/ (carried along with the tree, git-ignored), installed
# with --no-index --no-deps into <work>/site (never another torch), fairseq built from its sdist against
# the torch that is there. Results: benchmarks/results/gpu/ (GPU runs only; --cpu runs write to
# runs/gpu_check/results/), copied to --out (default: $OUT when set) after every run.
set -euo pipefail
# Everything runs inside main, which bash reads whole before running: editing this file while it runs
# (a long build) cannot change what the running copy does next.
main() {
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$(date +%s)

usage() {
  cat <<EOF
usage: bash benchmarks/gpu_check.sh [--prepare] [--cpu] [--tiny] [--python PY] [--wheels DIR] [--work DIR]
                                    [--results DIR] [--out DIR] [--budget SECONDS] [--install] [--spawn] [--list]
  --prepare       download the wheels for Python 3.12 (manylinux x86_64) and fairseq-fixed's sdist into
                  --wheels (default .gpu_wheels), then stop; needs pip and an index (run it here, not there)
  --cpu           run on the CPU; --tiny: tiny sizes (about a minute on 2 cores)
  --python PY     interpreter (default: python3 on the GPU machine; with --cpu, \$DNI_PYTHON or the
                  project venv from tools/bootstrap.sh)
  --install       install from --wheels even if PY already imports fairseq (the rehearsal)
  --work DIR      scratch: data, checkpoints, logs, the installed packages (default \${TMPDIR:-/tmp}/fairseq-dni-gpu-check)
  --results DIR   default benchmarks/results/gpu (GPU), runs/gpu_check/results (--cpu)
  --out DIR       also copy the results here after every run (default: \$OUT if set)
  --budget S      start no run that would end more than S seconds after this script started
                  (default 460 on a GPU: the whole check, build included, within 8 minutes; 1500 with --cpu)
  --spawn         every run a fresh process (default: forked from one that imported fairseq once)
  --list          print every run's command and stop
  -- ARGS         passed to benchmarks/gpu_check.py (e.g. -- --interval 2 --timed 2 --period 2: real
                  sizes, few updates)
EOF
}

prepare=0; cpu=0; tiny=0; python=""; wheels="$repo/.gpu_wheels"; work=""; results=""; out="${OUT:-}"
budget=""; install=0; list=0; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) prepare=1; shift ;;
    --cpu) cpu=1; shift ;;
    --tiny) tiny=1; shift ;;
    --python) python="$2"; shift 2 ;;
    --wheels) wheels="$(cd "$2" 2>/dev/null && pwd || echo "$2")"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --install) install=1; shift ;;
    --spawn) extra+=("$1"); shift ;;
    --list) extra+=("$1"); list=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) echo "gpu_check.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "gpu_check.sh: error: $*" >&2; exit 1; }

project_python() {
  if [ -n "${DNI_PYTHON:-}" ]; then echo "$DNI_PYTHON"; else bash "$repo/tools/bootstrap.sh" | tail -n 1; fi
}


# ---- part 1, here: the folder that travels -------------------------------------------------------
# Pins: fairseq-fixed, hydra-core and omegaconf from requirements.txt; antlr4-python3-runtime and
# bitarray at the versions the project's (CPU) route resolved. antlr4's 4.9.3 exists only as an sdist
# (pure Python), so it is built into a wheel here.
if [ "$prepare" = 1 ]; then
  py="${python:-$(project_python)}"
  pin() { sed -n "s/^\($1==[^ ]*\).*/\1/p" "$repo/requirements.txt"; }
  installed() { "$py" -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }
  pins=("$(pin hydra-core)" "$(pin omegaconf)" "$(installed bitarray)")
  antlr="$(installed antlr4-python3-runtime)"; fairseq="$(pin fairseq-fixed)"
  rm -rf "$wheels"; mkdir -p "$wheels"
  pip=("$py" -m pip --disable-pip-version-check -q)
  plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux1_x86_64)
  "${pip[@]}" download --no-deps "${plat[@]}" -d "$wheels" "${pins[@]}"
  "${pip[@]}" wheel --no-deps -w "$wheels" "$antlr"
  # the sdist's metadata step imports torch: no build isolation, the project venv has it
  "${pip[@]}" download --no-deps --no-binary :all: --no-build-isolation -d "$wheels" "$fairseq"
  {
    echo "# bash benchmarks/gpu_check.sh --prepare, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    (cd "$wheels" && sha256sum -- *.whl *.tar.gz)
  } > "$wheels/MANIFEST"
  cat "$wheels/MANIFEST"
  echo "wheels: $(du -sh "$wheels" | cut -f1) in $wheels (the tree that travels: $(git -C "$repo" ls-files -z | (cd "$repo" && xargs -0 du -cb) | tail -n 1 | cut -f1) bytes tracked; 64 MiB in all)"
  exit 0
fi

# ---- part 2: the check ----------------------------------------------------------------------------
if [ "$cpu" = 1 ]; then
  python="${python:-$(project_python)}"
  results="${results:-$repo/runs/gpu_check/results}"
  budget="${budget:-1500}"
else
  python="${python:-python3}"
  results="${results:-$repo/benchmarks/results/gpu}"
  budget="${budget:-460}"
fi
if [ "$cpu" = 0 ] && [ "$list" = 0 ]; then
  "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "no GPU visible to $python's torch; for a rehearsal run with --cpu --tiny"
fi
results="$(realpath -m "$results")"
case "$results/" in
  "$repo/benchmarks/results/gpu/"*) [ "$cpu" = 0 ] && [ "$tiny" = 0 ] \
      || die "benchmarks/results/gpu/ holds real GPU measurements only; give --cpu/--tiny runs another --results" ;;
esac
work="${work:-${TMPDIR:-/tmp}/fairseq-dni-gpu-check}"
mkdir -p "$work" "$results"
log="$results/install.log"
: > "$log"
mirror() { if [ -n "$out" ]; then mkdir -p "$out"; cp "$log" "$out/install.log"; fi; }
imports_all() { "$python" -c "import fairseq, omegaconf, hydra, bitarray" 2>/dev/null; }

site="$work/site"
if [ "$install" = 1 ] || ! imports_all; then
  if [ -f "$site/.dni-installed" ] && [ "$install" = 0 ] && [ "$(cat "$site/.dni-installed")" = "$(cat "$wheels/MANIFEST" 2>/dev/null)" ]; then
    echo "[gpu_check] reusing $site (installed from the same wheels)" | tee -a "$log"
  else
    [ -f "$wheels/MANIFEST" ] || die "$python lacks fairseq and there is no $wheels/MANIFEST: run 'bash benchmarks/gpu_check.sh --prepare' where pip reaches an index, and carry that folder along"
    rm -rf "$site"
    jobs="$(nproc 2>/dev/null || echo 4)"
    echo "[gpu_check] installing from $wheels into $site with no index ($jobs parallel compile jobs)" | tee -a "$log"
    cat "$wheels/MANIFEST" >> "$log"
    t0=$(date +%s)
    # No index, no dependencies, no other torch: only the files in the folder; fairseq builds against the
    # torch, numpy and cython of $python. Faster builds, same code: CUDA_HOME unset (fairseq's optional
    # CUDA kernels, for translation only, would take minutes); setuptools builds the six C++/Cython
    # extensions in parallel threads (DIST_EXTRA_CONFIG), with plain compiler calls, since torch's ninja
    # backend writes one build.ninja per build folder, which parallel builds would share (a 'ninja' that
    # fails its --version check makes torch fall back); -g0 drops the debug information Python's flags
    # ask for (about 40% of each torch extension's compile time here; newer setuptools compile C++ with
    # CXXFLAGS, older ones with CFLAGS).
    printf '[build_ext]\nparallel = %s\n' "$jobs" > "$work/build_ext.cfg"
    mkdir -p "$work/no-ninja" && printf '#!/bin/sh\nexit 1\n' > "$work/no-ninja/ninja" && chmod +x "$work/no-ninja/ninja"
    # the log: pip -v, time-stamped, without its thousands of file-copying lines
    stamp() { local l; while IFS= read -r l; do
      case "$l" in *copying\ *|*creating\ *|*adding\ \'*|*changing\ mode*) ;; *) printf '%(%H:%M:%S)T %s\n' -1 "$l" ;; esac
    done; }
    if ! env -u CUDA_HOME -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
        DIST_EXTRA_CONFIG="$work/build_ext.cfg" PATH="$work/no-ninja:$PATH" \
        CFLAGS="${CFLAGS:-} -g0" CXXFLAGS="${CXXFLAGS:-} -g0" \
        "$python" -m pip install -v --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$site" "$wheels"/*.whl "$wheels"/*.tar.gz 2>&1 | stamp >> "$log"; then
      mirror
      tail -n 30 "$log" >&2
      die "install from $wheels failed (log: $log)"
    fi
    cp "$wheels/MANIFEST" "$site/.dni-installed"
    export DNI_INSTALL_S=$(( $(date +%s) - t0 ))
    echo "[gpu_check] installed in ${DNI_INSTALL_S} s" | tee -a "$log"
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$site/bin:$PATH"
fi
"$python" - "$site" >> "$log" 2>&1 <<'PY' || { mirror; tail -n 20 "$log" >&2; die "the environment does not import (log: $log)"; }
import os, sys
import torch, numpy, fairseq, omegaconf, hydra, bitarray
print(f"[gpu_check] python {sys.version.split()[0]} ({sys.executable}); torch {torch.__version__} from {torch.__file__}; "
      f"numpy {numpy.__version__}; fairseq {fairseq.__version__} from {fairseq.__file__}")
if os.path.realpath(torch.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep):
    sys.exit("a torch was installed into the work folder; the machine's own torch must be used")
PY
tail -n 1 "$log"
mirror
export DNI_COMMIT="${DNI_COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo "unknown (no git)")}"
args=(--work "$work" --results "$results" --deadline $((start + budget)))
[ "$cpu" = 1 ] && args+=(--cpu)
[ "$tiny" = 1 ] && args+=(--tiny)
[ -n "$out" ] && args+=(--out "$out")
export PYTHONUNBUFFERED=1
exec "$python" "$repo/benchmarks/gpu_check.py" "${args[@]}" ${extra[@]+"${extra[@]}"}
}

main "$@"
