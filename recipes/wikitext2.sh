#!/usr/bin/env bash
# WikiText-2 (tokenized, 33k vocabulary): alternating synthetic and real gradients at the warm
# restarts of a cosine schedule, the 2 x 650 LSTM (dropout 0.5) as for PTB.
#   bash recipes/wikitext2.sh                                        # downloads wikitext-2-v1.zip
#   bash recipes/wikitext2.sh --data-dir ../shared/data/wikitext-2   # a local copy
#   bash recipes/wikitext2.sh --data-dir ../shared/data/wikitext-2 --cpu --size smoke
# Hydra twin: fairseq-hydra-train --config-dir recipes/config --config-name wikitext2 task.data=DATA-BIN
# Periods are in updates: 2984 = one WikiText-2 epoch (2,088,628 tokens) at 20 streams x 35 tokens
# on one GPU; cycles of 1, 2, 4, 8 epochs (15 in all), synthetic / real / synthetic / real.
CORPUS=wikitext2
URL=https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip
ARCHIVE_DIR=wikitext-2
TRAIN_FLAGS=(
  --task dni_language_modeling --arch dni_lstm_lm --batch-size 20 --tokens-per-sample 35
  --criterion dni_cross_entropy --dni-scale 0.1
  --optimizer alternating --base-optimizer sgd --lr 20 --clip-norm 0.25 --dni-lr 1e-4
  --lr-scheduler cosine_alternating --lr-period-updates 2984 --t-mult 2 --min-lr 0
  --mode-schedule alternate --first-mode synthetic
  --max-update 44760 --seed 1 --log-interval 200
)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
recipe_main "$@"
