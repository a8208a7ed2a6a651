"""Does alternation beat BPTT *as the seed paper ran it*? The paper grid, scaled to this machine.

Shang & Zhang (arXiv 1902.10630; code ``parap1uie-s/alternate_sg``) train AWD-LSTM with Adam 1e-3,
bptt 200 with AWD's variable windows, the paper's clip, its coordinate-wise QRNN synthesizer and
SGDR restarts counted in epochs: cycles of 5, 5, 10, 20, ... epochs against one long cycle, the
first epoch real (``--whenswitch 2``) where the paper does so. Scaled down in proportion to a CPU:
``dni_awd_lstm_lm_small`` (3 layers 256/256/128, tied 128-d embedding), 4 epochs, cycles of
1, 1, 2 epochs (the paper's 5, 5, 10 divided by 5) against one 4-epoch cycle, the rate annealing
within epochs (the paper holds it for a whole epoch: over 5-epoch cycles that still anneals, over
1-epoch cycles it would not). Arms:

  bptt-one-cycle            real gradients, one 4-epoch cosine cycle (no synthesizer)
  bptt-restarts             real gradients, cycles 1, 1, 2 (no synthesizer)
  dni-restarts              synthetic gradients, coordinate-wise QRNN synthesizer, cycles 1, 1, 2,
                            epoch 1 real (the paper's --use_sg --whenswitch 2)
  alternating-restarts      the mode switching at every restart, coordinate-wise QRNN synthesizer
                            (PTB: real first, as the paper's --mixture; WikiText-2: epoch 1 real and
                            the first cycle's rest synthetic, as its --mixture --whenswitch 2)
  alternating-restarts-mlp  the same with Jaderberg et al.'s MLP synthesizer

Every run ends at the bottom of its last cycle (epoch 4). Each run is a stock ``fairseq-train``
followed by ``fairseq-eval-lm`` on the test split (one stream of 200-token windows, as the paper
scores) of the last checkpoint and of the best-validation checkpoint (validated at every epoch end;
mid-epoch validations only draw the curves). Logs land in docs/results/paper/logs; ``--commit``
commits each run's logs as it finishes, and runs whose logs exist are skipped.

    python examples/paper_grid.py --corpus ptb --seeds 1,2 --commit
    python examples/paper_grid.py --corpus wikitext2 --seeds 1 --commit   # bptt-one-cycle, bptt-restarts, alternating-restarts
    python examples/paper_grid.py --report-only
"""

import argparse
import os
import sys

import grid_runner
from grid_runner import REPO, Run

ARMS = ["bptt-one-cycle", "bptt-restarts", "dni-restarts", "alternating-restarts", "alternating-restarts-mlp"]
WIKITEXT2_ARMS = ["bptt-one-cycle", "bptt-restarts", "alternating-restarts"]
EPOCHS = 4
PERIODS = {"one-cycle": "4", "restarts": "1,1,2"}   # epochs per cosine cycle
PAPER_PERIODS = {"one-cycle": "160,160", "restarts": "5,5,10,20,40,80,160"}   # the paper's (alternate_sg README)
CLIP = {"ptb": 0.2, "wikitext2": 0.25}   # the paper's --clip per corpus
WINDOW, STREAMS = 200, 20                # the paper's --bptt and --batch_size
OUT = os.path.join(REPO, "docs", "results", "paper")

# the paper's synthesizer (--use_sg --sgtype QRNN --sg_hidden_num 50 --sg_nlayers 1, its own Adam 1e-3
# with weight decay 1.2e-6, synthetic gradient x 0.1, input noise N(1, 0.5) by default)
COORDINATEWISE = ["--dni-synthesizer", "coordinatewise", "--dni-synthesizer-cell", "qrnn",
                  "--dni-synthesizer-hidden", "50", "--dni-synthesizer-layers", "1"]
MLP = ["--dni-synthesizer", "mlp"]   # Jaderberg et al.'s, its defaults; everything else as above
DNI = ["--criterion", "dni_cross_entropy", "--dni-scale", "0.1", "--dni-lr", "0.001", "--dni-weight-decay", "1.2e-6"]


def alternate(corpus):
    if corpus == "wikitext2":
        return ["--mode-schedule", "alternate", "--first-mode", "synthetic", "--real-first-epochs", "1"]
    return ["--mode-schedule", "alternate", "--first-mode", "real"]


def arm_flags(arm, corpus):
    """Criterion, synthesizer, schedule and mode of an arm: the only things that differ between arms."""
    cycle = "one-cycle" if arm.endswith("one-cycle") else "restarts"
    # the rate anneals within epochs (no --lr-step-per-epoch): the paper holds it for a whole epoch, which
    # over its 5-epoch cycles still anneals (1, .90, .65, .35, .10), but would leave our 1-epoch cycles flat
    schedule = ["--lr-scheduler", "cosine_alternating", "--min-lr", "0", "--lr-period-epochs", PERIODS[cycle]]
    if arm.startswith("bptt"):
        return ["--criterion", "lm_cross_entropy", *schedule]
    if arm == "dni-restarts":
        return [*DNI, *COORDINATEWISE, *schedule, "--mode-schedule", "synthetic", "--real-first-epochs", "1"]
    synth = MLP if arm.endswith("-mlp") else COORDINATEWISE
    return [*DNI, *synth, *schedule, *alternate(corpus)]


def train_args(corpus, arm, seed, data_bin):
    half_epoch = max(1, grid_runner.updates_per_epoch(data_bin, STREAMS, WINDOW) // 2)
    return ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling", "--cpu",
            "--arch", "dni_awd_lstm_lm_small", "--batch-size", str(STREAMS), "--batch-size-valid", "10",
            "--tokens-per-sample", str(WINDOW), "--variable-window", "--alpha", "2", "--beta", "1",
            "--optimizer", "alternating", "--base-optimizer", "adam", "--lr", "0.001", "--weight-decay", "1.2e-6",
            "--clip-norm", str(CLIP[corpus]), *arm_flags(arm, corpus), "--max-epoch", str(EPOCHS),
            "--seed", str(seed), "--validate-interval-updates", str(half_epoch), "--no-epoch-checkpoints",
            "--num-workers", "0", "--log-format", "json", "--log-interval", "10", "--no-progress-bar"]


EVAL_ARGS = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling", "--cpu",
             "--gen-subset", "test", "--batch-size", "1", "--tokens-per-sample", str(WINDOW), "--num-workers", "0"]


def runs_for(corpus, seeds, arms, data_bin):
    return [Run(f"{corpus}-{arm}-s{seed}", data_bin, train_args(corpus, arm, seed, data_bin), EVAL_ARGS,
                {"last": "checkpoint_last.pt", "best": "checkpoint_best.pt"})
            for seed in seeds for arm in arms]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", choices=sorted(grid_runner.CORPORA), default="ptb")
    p.add_argument("--text-dir", help="folder with the corpus' train/valid/test text (default ../shared/data/...)")
    p.add_argument("--data-bin", help="binarized corpus (default runs/<corpus>-bin, made by fairseq-preprocess)")
    p.add_argument("--out", default=OUT)
    p.add_argument("--work-dir", default=os.path.join(REPO, "runs", "paper_grid"), help="checkpoints (not committed)")
    p.add_argument("--arms", help="comma-separated (default: all five on PTB, "
                                  f"{', '.join(WIKITEXT2_ARMS)} on WikiText-2)")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (threads per run = 2 // jobs, at least 1)")
    p.add_argument("--commit", action="store_true", help="git-commit each run's logs as soon as it finishes")
    p.add_argument("--force", action="store_true", help="rerun runs whose logs exist")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    log_dir = os.path.join(args.out, "logs")
    if not args.report_only:
        arms = args.arms.split(",") if args.arms else (ARMS if args.corpus == "ptb" else WIKITEXT2_ARMS)
        for a in arms:
            if a not in ARMS:
                sys.exit(f"paper_grid: error: unknown arm {a!r} (choose from {', '.join(ARMS)})")
        data_bin = args.data_bin or os.path.join(REPO, "runs", f"{args.corpus}-bin")
        grid_runner.binarize(args.corpus, args.text_dir or grid_runner.CORPORA[args.corpus][0], data_bin,
                             prog="paper_grid")
        runs = runs_for(args.corpus, [int(s) for s in args.seeds.split(",")], arms, data_bin)
        grid_runner.run_grid(runs, log_dir, args.work_dir, args.jobs, args.commit, args.force, "Paper grid run")


if __name__ == "__main__":
    main()
