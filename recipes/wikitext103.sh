#!/usr/bin/env bash
# WikiText-103 (tokenized, 267k vocabulary): alternating synthetic and real gradients at the warm
# restarts of a cosine schedule; 2 x 1024 LSTM, 512-d output projection, adaptive softmax
# (cutoffs 20000, 60000), Adam 1e-3, on GPUs through fairseq's own distributed training
# (all visible GPUs unless --gpus N).
#   bash recipes/wikitext103.sh --fp16                                 # downloads WikiText-103 (see MIRRORS)
#   bash recipes/wikitext103.sh --data-dir /data/wikitext-103 --gpus 8 --fp16
#   bash recipes/wikitext103.sh --data-dir DIR --cpu --size smoke      # the whole path on a CPU
# Hydra twin: fairseq-hydra-train --config-dir recipes/config --config-name wikitext103 task.data=DATA-BIN
# Periods are in updates: 12000 is about one epoch (103,227,021 tokens) on 8 GPUs x 32 streams x
# 35 tokens (92,168 updates per epoch on one GPU); cycles of 12000, 24000, 48000 updates
# (synthetic / real / synthetic) after a 1000-update warm-up.
CORPUS=wikitext103
NAME=WikiText-103
DOWNLOAD_DIR=wikitext-103
# The original address (s3.amazonaws.com/research.metamind.io) answers 403 since 2024: the corpus
# author's own copy of wikitext-103-v1.zip (183 MB; wikitext-103/wiki.{train,valid,test}.tokens).
MIRRORS=(
  "zip https://wikitext.smerity.com/wikitext-103-v1.zip wikitext-103"
)
# lines (torchtext's table) and tokens with one </s> per line (the paper's counts); md5s not published
EXPECTED=(
  "train 1801350 103227021 x"
  "valid 3760 217646 x"
  "test 4358 245569 x"
)
WHERE_ELSE="any copy of wikitext-103-v1.zip (md5 9ddaacaf6af0710eda8c456decff7832, e.g. a torchtext cache) works: unzip it; the Hugging Face dataset Salesforce/wikitext (wikitext-103-v1) holds the same lines as parquet"
ADAPTIVE_SOFTMAX=1
TRAIN_FLAGS=(
  --task dni_language_modeling --arch dni_lstm_lm_wikitext103 --batch-size 32 --tokens-per-sample 35
  --criterion dni_cross_entropy --dni-scale 0.1
  --optimizer alternating --base-optimizer adam --lr 1e-3 --clip-norm 0.25 --dni-lr 1e-4
  --lr-scheduler cosine_alternating --lr-period-updates 12000 --t-mult 2 --warmup-updates 1000 --min-lr 1e-5
  --mode-schedule alternate --first-mode synthetic
  --max-update 85000 --seed 1 --log-interval 100 --validate-interval-updates 6000
)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
[ "${BASH_SOURCE[0]}" != "$0" ] || recipe_main "$@"  # unless sourced (the tests source it)
