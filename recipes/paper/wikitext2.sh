#!/usr/bin/env bash
# The seed paper's WikiText-2 arms (alternate_sg README) on AWD-LSTM (dni_awd_lstm_lm, 3 x 1150, tied 400):
#   bash recipes/paper/wikitext2.sh --arm ARM                # ARM: bptt dni dni-restart160 dni-restart5
#                                                            #      alternating-restart160 alternating-restart5
#   bash recipes/paper/wikitext2.sh --arm alternating-restart5 --cpu --size smoke
#   --synthesizer scan (default: the paper's --sgtype QRNN as its code computes it) or coordinatewise
# Everything else as recipes/wikitext2.sh (downloads WikiText-2 unless --data-dir); outputs in
# runs/recipes/wikitext2: checkpoints-SIZE-paper-ARM/, train-SIZE-paper-ARM.log, eval-SIZE-paper-ARM.log
# (paper-ARM-coordinatewise with --synthesizer coordinatewise).
# Hydra twins: fairseq-hydra-train --config-dir recipes/paper/config --config-name wikitext2_ARM task.data=DATA-BIN
# WikiText-2: the paper's --clip 0.25 --dropouth 0.2; its alternating arms also pass --whenswitch 2.
source "$(dirname "${BASH_SOURCE[0]}")/../wikitext2.sh"   # the corpus and the shared steps (sourced: runs nothing)
source "$(dirname "${BASH_SOURCE[0]}")/_arms.sh"
CLIP=0.25
DROPOUTH=0.2
[ "${BASH_SOURCE[0]}" != "$0" ] || paper_main "$@"  # unless sourced (the tests source it)
