# The arms of the seed paper's README (parap1uie-s/alternate_sg; Shang & Zhang, arXiv 1902.10630) on
# its QRNN, dni_awd_qrnn_lm (or AWD-LSTM's LSTM, dni_awd_lstm_lm, with --base lstm), sourced by
# recipes/paper/ptb.sh and wikitext2.sh after the corpus recipe (which sets CORPUS, the download and
# recipes/_common.sh). The corpus script sets CLIP and DROPOUTH (the paper's --clip and --dropouth);
# recipes/README.md maps every flag of the paper's main.py to ours.

ARMS="bptt dni dni-restart160 dni-restart5 alternating-restart160 alternating-restart5"
SYNTHESIZERS="scan coordinatewise"
BASES="qrnn lstm"

# paper_arm ARM [SYNTHESIZER] [BASE]: TRAIN_FLAGS (full size), SMOKE_FLAGS (--size smoke), RUN, EVAL_FLAGS,
# EVAL_CHECKPOINT. SYNTHESIZER (default scan): one of $SYNTHESIZERS (docs/synthesizers.md). BASE (default
# qrnn): one of $BASES (the base model's choice is here, and only here).
paper_arm() {
  local arm="$1" synthesizer="${2:-scan}" base="${3:-qrnn}"
  # the base LM, with the paper's --dropouti 0.4 and --dropouth; the rest is the arch's: qrnn is the paper's
  # --model QRNN --nhid 1550 --nlayers 4 --emsize 400 --wdrop 0.1 (4 layers 1550/1550/1550/400, tied, first
  # layer window 2); lstm is AWD-LSTM's LSTM instead, at its own sizes and weight drop (3 layers
  # 1150/1150/400, --wdrop 0.5)
  local arch
  case "$base" in
    qrnn) arch=dni_awd_qrnn_lm ;;
    lstm) arch=dni_awd_lstm_lm ;;
    *) echo "recipes/paper/$CORPUS.sh: error: --base must be one of: $BASES (got '${base}')" >&2
       return 2 ;;
  esac
  local lm=(--arch "$arch" --decoder-dropout-in 0.4 --decoder-hidden-dropout "$DROPOUTH")
  # the paper's settings that apply to it: 20 streams, bptt 200 (AWD-LSTM's variable windows, learning
  # rate scaled by length), eval 10 streams; its defaults --dropout 0.4 --dropoute 0.1 --alpha 2
  # --beta 1 --wdecay 1.2e-6; Adam 1e-3, 320 epochs, seed 42
  TRAIN_FLAGS=(
    --task dni_language_modeling "${lm[@]}" --batch-size 20 --batch-size-valid 10
    --tokens-per-sample 200 --variable-window
    --alpha 2 --beta 1 --optimizer alternating --base-optimizer adam --lr 0.001 --weight-decay 1.2e-6
    --clip-norm "$CLIP" --max-epoch 320 --seed 42 --log-interval 200
  )
  # the paper's synthesizer, --use_sg --sgtype QRNN --sg_hidden_num 50 --sg_nlayers 1, as its code computes
  # it: one QRNN scan across the flattened state of all streams, its U(-0.1, 0.1) initialisation (scan);
  # or coordinate-wise, one sequence per coordinate, what its code computes with --sgtype GRU/LSTM (here with
  # a QRNN cell, as the paper grid's coordinate-wise rows; -- --dni-synthesizer-cell gru|lstm for those)
  local synth
  case "$synthesizer" in
    scan) synth=(--dni-synthesizer scan --dni-synthesizer-hidden 50 --dni-synthesizer-layers 1
                 --dni-synthesizer-init paper) ;;
    coordinatewise) synth=(--dni-synthesizer coordinatewise --dni-synthesizer-cell qrnn --dni-synthesizer-hidden 50
                           --dni-synthesizer-layers 1) ;;
    *) echo "recipes/paper/$CORPUS.sh: error: --synthesizer must be one of: $SYNTHESIZERS (got '${synthesizer}')" >&2
       return 2 ;;
  esac
  # its own Adam 1e-3 with weight decay 1.2e-6, synthetic gradient x 0.1, input noise N(1, 0.5) (the default)
  local dni=(--criterion dni_cross_entropy --dni-scale 0.1 "${synth[@]}" --dni-lr 0.001 --dni-weight-decay 1.2e-6)
  # SGDR per epoch as the paper's loop sets it (--restart_lr: one rate per epoch, cosine down to 0)
  local cosine=(--lr-scheduler cosine_alternating --lr-step-per-epoch --min-lr 0)
  # the paper's switch starts at real: --whenswitch 2 makes epoch 1 real; PTB's alternating arms
  # (--mixture without --whenswitch) start with a real cycle, WikiText-2's (with it) with epoch 1
  # real and the rest of the first cycle synthetic
  local alternate=(--mode-schedule alternate --first-mode real)
  [ "$CORPUS" = wikitext2 ] && alternate=(--mode-schedule alternate --first-mode synthetic --real-first-epochs 1)
  # --size smoke: a tiny model (qrnn: 4 layers 32/32/32/16; lstm: 3 layers 32/32/16), 4 epochs, the same
  # schedule shapes (cycles 1,1,2 for 5,5,10,...; 2,2 for 160,160)
  SMOKE_FLAGS=(--decoder-embed-dim 16 --decoder-hidden-size 32 --max-epoch 4 --log-interval 5)
  case "$arm" in
    bptt)  # no --use_sg: real gradients, constant learning rate
      TRAIN_FLAGS+=(--criterion lm_cross_entropy --lr-scheduler fixed) ;;
    dni)  # --use_sg --whenswitch 2, no restarts: constant learning rate (a cosine whose floor is the peak)
      TRAIN_FLAGS+=("${dni[@]}" "${cosine[@]}" --lr-period-epochs 320 --min-lr 0.001 --mode-schedule synthetic
                    --real-first-epochs 1)
      SMOKE_FLAGS+=(--lr-period-epochs 4) ;;
    dni-restart160)  # --restart_base 160 320 --restart_lr
      TRAIN_FLAGS+=("${dni[@]}" "${cosine[@]}" --lr-period-epochs 160,160 --mode-schedule synthetic --real-first-epochs 1)
      SMOKE_FLAGS+=(--lr-period-epochs 2,2) ;;
    dni-restart5)  # --restart_base 5 --restart_lr: cycles of 5, 5, 10, 20, 40, 80, 160 epochs
      TRAIN_FLAGS+=("${dni[@]}" "${cosine[@]}" --lr-period-epochs 5,5,10,20,40,80,160 --mode-schedule synthetic
                    --real-first-epochs 1)
      SMOKE_FLAGS+=(--lr-period-epochs 1,1,2) ;;
    alternating-restart160)  # --mixture --restart_base 160 320 --restart_lr
      TRAIN_FLAGS+=("${dni[@]}" "${cosine[@]}" --lr-period-epochs 160,160 "${alternate[@]}")
      SMOKE_FLAGS+=(--lr-period-epochs 2,2) ;;
    alternating-restart5)  # --mixture --restart_base 5 --restart_lr
      TRAIN_FLAGS+=("${dni[@]}" "${cosine[@]}" --lr-period-epochs 5,5,10,20,40,80,160 "${alternate[@]}")
      SMOKE_FLAGS+=(--lr-period-epochs 1,1,2) ;;
    *) echo "recipes/paper/$CORPUS.sh: error: --arm must be one of: $ARMS (got '${arm}')" >&2; return 2 ;;
  esac
  # its own checkpoints and logs: paper-ARM[-lstm][-coordinatewise]
  RUN="paper-$arm"
  [ "$base" = qrnn ] || RUN="$RUN-$base"
  [ "$synthesizer" = scan ] || [ "$arm" = bptt ] || RUN="$RUN-$synthesizer"
  EVAL_FLAGS=(--batch-size 1 --tokens-per-sample 200)   # the paper scores the test set as one stream
  EVAL_CHECKPOINT=checkpoint_best.pt                      # with the best validation checkpoint
}

# paper_main --arm ARM [--base BASE] [--synthesizer SYNTHESIZER] [the corpus recipe's options]: the
# corpus recipe with ARM's flags
paper_main() {
  local arm="" synthesizer=scan base=qrnn rest=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --arm) arm="${2:-}"; shift 2 || shift ;;
      --base) base="${2:-}"; shift 2 || shift ;;
      --synthesizer) synthesizer="${2:-}"; shift 2 || shift ;;
      --) rest+=("$@"); break ;;   # fairseq-train's extra flags, for the corpus recipe
      -h|--help)
        echo "usage: bash recipes/paper/$CORPUS.sh --arm ARM [--base BASE] [--synthesizer SYNTHESIZER] [options of recipes/$CORPUS.sh]"
        echo "  ARM: $ARMS (the arms of the alternate_sg README; recipes/README.md)"
        echo "  BASE: qrnn (default: the paper's --model QRNN, dni_awd_qrnn_lm, 4 layers 1550/1550/1550/400) or lstm"
        echo "        (AWD-LSTM's LSTM, dni_awd_lstm_lm, 3 layers 1150/1150/400; runs named paper-ARM-lstm)"
        echo "  SYNTHESIZER: scan (default: the paper's --sgtype QRNN as its code computes it) or coordinatewise"
        echo "               (what its code computes with --sgtype GRU/LSTM, here with a QRNN cell)"
        echo "  --size smoke here: a 4-layer QRNN 32/32/32/16 wide (lstm: 3 layers 32/32/16), 4 epochs of 2000 lines"
        echo "               (PTB test perplexity about 4,600 on either base: expected; dni-restart5 and"
        echo "               alternating-restart5 end alike, the synthesizer predicting almost nothing in 4 tiny epochs)"
        echo "The corpus recipe's options follow; its --size smoke line describes recipes/$CORPUS.sh's own model,"
        echo "which the line above replaces here:"
        usage; return 0 ;;
      *) rest+=("$1"); shift ;;
    esac
  done
  paper_arm "$arm" "$synthesizer" "$base" || return $?
  recipe_main "${rest[@]}"
}
