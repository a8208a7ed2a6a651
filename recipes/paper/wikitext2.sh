#!/usr/bin/env bash
# The seed paper's WikiText-2 arms (alternate_sg README) on its QRNN (dni_awd_qrnn_lm, 1550/1550/1550/400, tied):
#   bash recipes/paper/wikitext2.sh --arm ARM                # ARM: bptt dni dni-restart160 dni-restart5
#                                                            #      alternating-restart160 alternating-restart5
#   bash recipes/paper/wikitext2.sh --arm alternating-restart5 --cpu --size smoke
#   --synthesizer scan (default: the paper's --sgtype QRNN as its code computes it) or coordinatewise
#   --base qrnn (default: the paper's --model QRNN) or lstm (AWD-LSTM's LSTM, dni_awd_lstm_lm, 3 x 1150)
# Everything else as recipes/wikitext2.sh (downloads WikiText-2 unless --data-dir); outputs in
# runs/recipes/wikitext2: checkpoints-SIZE-paper-ARM/, train-SIZE-paper-ARM.log, eval-SIZE-paper-ARM.log
# (paper-ARM-lstm with --base lstm, paper-ARM[-lstm]-coordinatewise with --synthesizer coordinatewise).
# Hydra twins: fairseq-hydra-train --config-dir recipes/paper/config --config-name wikitext2_ARM task.data=DATA-BIN
#   (each names its overrides for --base lstm, the DNI ones also for --synthesizer coordinatewise)
# WikiText-2: the paper's --clip 0.25 --dropouth 0.2; its alternating arms also pass --whenswitch 2.
source "$(dirname "${BASH_SOURCE[0]}")/../wikitext2.sh"   # the corpus and the shared steps (sourced: runs nothing)
source "$(dirname "${BASH_SOURCE[0]}")/_arms.sh"
CLIP=0.25
DROPOUTH=0.2
[ "${BASH_SOURCE[0]}" != "$0" ] || paper_main "$@"  # unless sourced (the tests source it)
