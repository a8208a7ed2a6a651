#!/usr/bin/env bash
# The seed paper's PTB arms (alternate_sg README) on its QRNN (dni_awd_qrnn_lm, 1550/1550/1550/400, tied):
#   bash recipes/paper/ptb.sh --arm ARM                      # ARM: bptt dni dni-restart160 dni-restart5
#                                                            #      alternating-restart160 alternating-restart5
#   bash recipes/paper/ptb.sh --arm dni-restart5 --cpu --size smoke    # a tiny model, 4 epochs of 2000 lines
#   --synthesizer scan (default: the paper's --sgtype QRNN as its code computes it) or coordinatewise
#   --base qrnn (default: the paper's --model QRNN) or lstm (AWD-LSTM's LSTM, dni_awd_lstm_lm, 3 x 1150)
# Everything else as recipes/ptb.sh (--data-dir, --out, --gpus, --fp16, --dry-run, -- EXTRA); outputs in
# runs/recipes/ptb: checkpoints-SIZE-paper-ARM/, train-SIZE-paper-ARM.log, eval-SIZE-paper-ARM.log
# (paper-ARM-lstm with --base lstm, paper-ARM[-lstm]-coordinatewise with --synthesizer coordinatewise).
# Hydra twins: fairseq-hydra-train --config-dir recipes/paper/config --config-name ptb_ARM task.data=DATA-BIN
#   (each names its overrides for --base lstm, the DNI ones also for --synthesizer coordinatewise)
# PTB: the paper's --clip 0.2 --dropouth 0.3.
source "$(dirname "${BASH_SOURCE[0]}")/../ptb.sh"   # the corpus and the shared steps (sourced: runs nothing)
source "$(dirname "${BASH_SOURCE[0]}")/_arms.sh"
CLIP=0.2
DROPOUTH=0.3
[ "${BASH_SOURCE[0]}" != "$0" ] || paper_main "$@"  # unless sourced (the tests source it)
