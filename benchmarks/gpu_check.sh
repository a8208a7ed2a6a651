#!/usr/bin/env bash
# The GPU check (docs/gpu_check.md): stock fairseq-train runs of the plugin at a small and at the seed
# paper's AWD-LSTM size, in fp32/amp/bf16/fp16 (tokens/s, peak GPU memory), fairseq-eval-lm, a CSV.
#   bash benchmarks/gpu_check.sh --prepare      # here, where pip reaches an index: the wheels into .gpu_wheels/
#   bash benchmarks/gpu_check.sh                # on the GPU machine (no index): install, then the runs
#   bash benchmarks/gpu_check.sh --cpu --tiny   # anywhere: the same path at tiny sizes (tests/test_gpu_check.py)
set -euo pipefail
main() {  # bash reads the whole function before running it: editing this file meanwhile changes nothing
start=$(date +%s)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prepare=0 cpu=0 tiny=0 install=0 python="" wheels="$repo/.gpu_wheels" work="" results="" out="${OUT:-}" budget=480 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) prepare=1; shift ;;
    --cpu) cpu=1; shift ;;
    --tiny) tiny=1; shift ;;
    --install) install=1; shift ;;   # install from --wheels even where fairseq imports (a rehearsal)
    --python) python="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;  # seconds from this script's start after which no run starts
    --) shift; extra=("$@"); break ;;   # to gpu_check.py: --updates N --log-interval N --run-timeout S
    -h|--help) sed -n '2,6p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "gpu_check.sh: error: $*" >&2; exit 1; }

# ---- here: the wheels the GPU machine lacks (Python 3.12 there, a CUDA torch, no index) ----------
# fairseq-fixed is built here as a pure-Python wheel: its setup.py skips its C++/Cython extensions
# when READTHEDOCS is set, and this plugin imports none of them (fairseq's translation and BLEU code
# does). Its metadata step imports torch: run with a Python that has one (--no-build-isolation).
if [ "$prepare" = 1 ]; then
  python="${python:-${DNI_PYTHON:-python3}}"
  pin() { sed -n "s/^\($1==[^ ]*\).*/\1/p" "$repo/requirements.txt"; }
  pip=("$python" -m pip --disable-pip-version-check -q)
  rm -rf "$wheels" && mkdir -p "$wheels"
  "${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" "$(pin hydra-core)" "$(pin omegaconf)" bitarray==3.12.3
  "${pip[@]}" wheel --no-deps -w "$wheels" antlr4-python3-runtime==4.9.3   # an sdist only on PyPI
  READTHEDOCS=1 "${pip[@]}" wheel --no-deps --no-build-isolation --no-binary :all: --no-cache-dir -w "$wheels" "$(pin fairseq-fixed)"
  ls -l "$wheels"
  echo "gpu_check.sh: $(du -sm "$wheels" | cut -f1) MiB in $wheels; carry it: run(carry=[\".gpu_wheels\"])"
  exit 0
fi

# ---- the check ----------------------------------------------------------------------------------
if [ "$cpu" = 1 ]; then
  python="${python:-${DNI_PYTHON:-python3}}"
  results="${results:-$repo/runs/gpu_check}"
else
  python="${python:-python3}"
  results="${results:-$repo/benchmarks/results/gpu}"
  "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "no GPU visible to $python's torch; rehearse with --cpu --tiny"
fi
results="$(realpath -m "$results")"
case "$results/" in "$repo/benchmarks/results/gpu/"*) [ "$cpu$tiny" = 00 ] \
  || die "benchmarks/results/gpu/ holds GPU measurements only; give --cpu/--tiny runs another --results" ;; esac
work="${work:-${TMPDIR:-/tmp}/fairseq-dni-gpu-check}"
mkdir -p "$work" "$results"
log="$results/install.log"
copy_log() { if [ -n "$out" ]; then mkdir -p "$out" && cp "$log" "$out/"; fi; }
need=$install site="$work/site"
[ "$need" = 1 ] || "$python" -c "import fairseq, hydra, omegaconf, bitarray" 2>/dev/null || need=1
if [ "$need" = 1 ]; then
  ls "$wheels"/*.whl >/dev/null 2>&1 \
    || die "$python lacks fairseq and $wheels holds no wheels: run --prepare where pip reaches an index, carry .gpu_wheels"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
t0=$(date +%s)
{ # only these files, none of their dependencies, never another torch (the folder holds none)
  echo "[gpu_check] $(date -u +%FT%TZ) $python: $("$python" -c 'import sys; print(sys.version.split()[0])')"
  [ "$need" = 0 ] || { rm -rf "$site" && env PIP_CONFIG_FILE=/dev/null "$python" -m pip install -q \
      --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
    && echo "[gpu_check] installed $(cd "$wheels" && ls *.whl | tr '\n' ' ')into $site in $(( $(date +%s) - t0 )) s"; } \
  && "$python" -c 'import sys, fairseq, torch
print(f"[gpu_check] torch {torch.__version__} (CUDA {torch.version.cuda}) at {torch.__file__}; fairseq {fairseq.__version__} at {fairseq.__file__}")
sys.exit("a torch in the work folder: the machine'"'"'s own must be used" if torch.__file__.startswith(sys.argv[1] + "/") else 0)' "$site"
} > "$log" 2>&1 || { copy_log; cat "$log" >&2; die "install failed (log: $log)"; }
cat "$log"
copy_log
args=(--work "$work" --results "$results" --deadline $((start + budget)))
[ "$cpu" = 1 ] && args+=(--cpu)
[ "$tiny" = 1 ] && args+=(--tiny --updates 4 --log-interval 1 --run-timeout 120)
[ -n "$out" ] && args+=(--out "$out")
export PYTHONUNBUFFERED=1 PYTORCH_NVML_BASED_CUDA_CHECK=1
exec "$python" "$repo/benchmarks/gpu_check.py" "${args[@]}" ${extra[@]+"${extra[@]}"}
}
main "$@"
