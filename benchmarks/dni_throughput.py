"""Synthetic-gradient training throughput against real mode, measured in one run.

Arms (stock fairseq-train, same model, data, optimizer, updates; see throughput.py for
how tokens/s are read from fairseq's own wps meter):

  real-tbptt   --criterion cross_entropy                         plain TBPTT, no synthesizer
  real         --criterion dni_cross_entropy --dni-mode real      synthesizer still learning
  synthetic    --criterion dni_cross_entropy --dni-mode synthetic

This machine's throughput drifts by several percent between identical runs, so the arms
run interleaved ``--repeats`` times (in rotating order) and each arm's median is used.
Prints and writes synthetic/real and synthetic/real-tbptt to
benchmarks/results/dni_throughput.{md,csv}.

    python benchmarks/dni_throughput.py        # after examples/quickstart.sh (its PTB data-bin)
"""

import argparse
import os
import platform
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import HERE, REPO, fairseq_wps, write_results  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-bin", default=os.path.join(REPO, "runs", "quickstart", "data-bin"))
    parser.add_argument("--embed-dim", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--window", type=int, default=35)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "dni_throughput"))
    args = parser.parse_args()

    base = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling",
            "--arch", "dni_lstm_lm", "--dropout", "0"]
    arms = {
        "real-tbptt": ("cross_entropy (no synthesizer)", base + ["--criterion", "cross_entropy"]),
        "real": ("dni_cross_entropy --dni-mode real", base + ["--criterion", "dni_cross_entropy", "--dni-mode", "real"]),
        "synthetic": ("dni_cross_entropy --dni-mode synthetic",
                      base + ["--criterion", "dni_cross_entropy", "--dni-mode", "synthetic"]),
    }
    names = list(arms)
    measured = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            measured[name].append(fairseq_wps(args, arms[name][1], name))
    median = {name: statistics.median(v) for name, v in measured.items()}
    rows = [(name, arms[name][0], median[name], " / ".join(f"{x:.0f}" for x in measured[name])) for name in names]
    synthetic, real, tbptt = median["synthetic"], median["real"], median["real-tbptt"]
    setting = (f"{args.layers}x{args.hidden} LSTM, embed {args.embed_dim}, B={args.batch_size}, T={args.window}, "
               f"Adam, clip {args.clip}, default synthesizer (2 layers, width 256), {args.repeats} interleaved repeats, "
               f"{args.updates} timed updates after {args.warmup}; torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, {platform.machine()}")
    write_results(args.out, rows, setting,
                  f"**synthetic/real = {synthetic / real:.3f}**, **synthetic/real-tbptt = {synthetic / tbptt:.3f}**",
                  tokens_header="tokens/s (median)", note_header="each repeat")

if __name__ == "__main__":
    main()
