#!/usr/bin/env bash
# WikiText-2 (tokenized, 33k vocabulary): alternating synthetic and real gradients at the warm
# restarts of a cosine schedule, the 2 x 650 LSTM (dropout 0.5) as for PTB.
#   bash recipes/wikitext2.sh                                        # downloads WikiText-2 (see MIRRORS)
#   bash recipes/wikitext2.sh --data-dir path/to/wikitext-2          # a local copy
#   bash recipes/wikitext2.sh --cpu --size smoke                     # the whole path in about a minute
# Hydra twin: fairseq-hydra-train --config-dir recipes/config --config-name wikitext2 task.data=DATA-BIN
# Periods are in updates: 2984 = one WikiText-2 epoch (2,088,628 tokens) at 20 streams x 35 tokens
# on one GPU; cycles of 1, 2, 4, 8 epochs (15 in all), synthetic / real / synthetic / real.
CORPUS=wikitext2
NAME=WikiText-2
DOWNLOAD_DIR=wikitext-2
# The original address (s3.amazonaws.com/research.metamind.io) answers 403 since 2024. First the
# corpus author's own copy of wikitext-2-v1.zip (wikitext-2/wiki.{train,valid,test}.tokens), then
# PyTorch's word_language_model copy of the same three files ({train,valid,test}.txt).
MIRRORS=(
  "zip https://wikitext.smerity.com/wikitext-2-v1.zip wikitext-2"
  "files https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/{split}.txt"
)
# lines, tokens with one </s> per line (the paper's counts) and md5 of the tokenized v1 files
EXPECTED=(
  "train 36718 2088628 34a77ebe59551b3a3b3d8c0a2797c976"
  "valid 3760 217646 d756d22ab2310e7e60c094bea5c5a8eb"
  "test 4358 245569 781c9418ab9414bd09e4aad825aae752"
)
WHERE_ELSE="any copy of wikitext-2-v1.zip (md5 542ccefacc6c27f945fb54453812b3cd, e.g. a torchtext cache) or of PyTorch's examples/word_language_model/data/wikitext-2 works: unzip it"
TRAIN_FLAGS=(
  --task dni_language_modeling --arch dni_lstm_lm --batch-size 20 --tokens-per-sample 35
  --criterion dni_cross_entropy --dni-scale 0.1
  --optimizer alternating --base-optimizer sgd --lr 20 --clip-norm 0.25 --dni-lr 1e-4
  --lr-scheduler cosine_alternating --lr-period-updates 2984 --t-mult 2 --min-lr 0
  --mode-schedule alternate --first-mode synthetic
  --max-update 44760 --seed 1 --log-interval 200
)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
[ "${BASH_SOURCE[0]}" != "$0" ] || recipe_main "$@"  # unless sourced (the tests source it)
