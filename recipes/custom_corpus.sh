#!/usr/bin/env bash
# Your own raw text, the fairseq way: sacremoses tokenization, a sentencepiece subword model
# learned on the training text, fairseq-preprocess, then training with alternating synthetic and
# real gradients and fairseq-eval-lm; the checkpoint folder also receives dict.txt and
# sentencepiece.bpe.model, so the hub interface can score and sample raw sentences:
#   bash recipes/custom_corpus.sh --text raw.txt [--valid v.txt --test t.txt] [--vocab-size 8000]
#   bash recipes/custom_corpus.sh --text raw.txt --cpu --size smoke
#   python -c "from fairseq_dni.models.dni_lstm_lm import DNILSTMLanguageModel as M; \
#              lm = M.from_pretrained('runs/recipes/custom/checkpoints-full'); print(lm.sample('The'))"
# Other options as in the corpus recipes (--out, --cpu, --gpus, --fp16, --size, --dry-run, -- EXTRA).
# Periods are in updates (1000, doubling), since a custom corpus' epoch length is not known here.
CORPUS=custom
TRAIN_FLAGS=(
  --task dni_language_modeling --arch dni_lstm_lm --batch-size 20 --tokens-per-sample 35
  --criterion dni_cross_entropy --dni-scale 0.1
  --optimizer alternating --base-optimizer sgd --lr 20 --clip-norm 0.25 --dni-lr 1e-4
  --lr-scheduler cosine_alternating --lr-period-updates 1000 --t-mult 2 --min-lr 0
  --mode-schedule alternate --first-mode synthetic
  --max-update 15000 --seed 1 --log-interval 100
)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
set -euo pipefail
text="" valid="" test="" vocab=8000 out="" size=full rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --text) text="$2"; shift 2 ;;
    --valid) valid="$2"; shift 2 ;;
    --test) test="$2"; shift 2 ;;
    --vocab-size) vocab="$2"; shift 2 ;;
    --out) out="$2"; rest+=("$1" "$2"); shift 2 ;;
    --size) size="$2"; rest+=("$1" "$2"); shift 2 ;;
    --data-dir) echo "recipes/custom_corpus.sh: error: give raw text with --text (--data-dir is for the corpus recipes)" >&2; exit 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
[ -n "$text" ] || { echo "recipes/custom_corpus.sh: error: --text RAW_TEXT_FILE is required" >&2; exit 2; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${out:-$repo/runs/recipes/custom}"
[ "$size" = smoke ] && [ "$vocab" = 8000 ] && vocab=500
python="${DNI_PYTHON:-python3}"
opt=()
[ -n "$valid" ] && opt+=(--valid "$valid")
[ -n "$test" ] && opt+=(--test "$test")
# encode under the output folder's preparation lock (runs started at once share it); a binarization
# is dropped only when the encoded text differs from the one it was made from (sentencepiece
# learns the same pieces from the same text, so a rerun or a second arm keeps it)
prepare_lock "$out" || exit 1
rm -rf "$out/encoded.new"
"$python" "$repo/recipes/prepare_custom_corpus.py" --train "$text" "${opt[@]}" --out "$out/encoded.new" --vocab-size "$vocab"
same=1
for f in train.txt valid.txt test.txt sentencepiece.bpe.vocab; do
  cmp -s "$out/encoded.new/$f" "$out/encoded/$f" || { same=0; break; }
done
if [ "$same" = 1 ]; then
  rm -rf "$out/encoded.new"
else
  rm -rf "$out/encoded" "$out"/data-bin-*
  mv "$out/encoded.new" "$out/encoded"
fi
prepare_unlock
recipe_main --data-dir "$out/encoded" "${rest[@]}"
case " ${rest[*]} " in *" --dry-run "*) exit 0 ;; esac
cp "$out/data-bin-$size/dict.txt" "$out/encoded/sentencepiece.bpe.model" "$out/checkpoints-$size/"
echo "hub: DNILSTMLanguageModel.from_pretrained('$out/checkpoints-$size') scores and samples raw sentences"
