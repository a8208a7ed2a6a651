"""Synthetic-gradient training throughput against real mode, measured in one run.

Arms (stock fairseq-train, same model, data, optimizer, updates; see throughput.py for
how tokens/s are read from fairseq's own wps meter):

  real-tbptt   --criterion cross_entropy                         plain TBPTT, no synthesizer
  real         --criterion dni_cross_entropy --dni-mode real      synthesizer still learning
  synthetic    --criterion dni_cross_entropy --dni-mode synthetic

The baseline (real-tbptt) runs first and last; its mean is the reference. Prints and
writes synthetic/real and synthetic/real-tbptt to benchmarks/results/dni_throughput.{md,csv}.

    python benchmarks/dni_throughput.py --data-bin data-bin/ptb
"""

import argparse
import csv
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import HERE, REPO, fairseq_wps  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-bin", default=os.path.join(REPO, "data-bin", "ptb"))
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
    parser.add_argument("--out", default=os.path.join(HERE, "results", "dni_throughput"))
    args = parser.parse_args()

    base = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling",
            "--arch", "dni_lstm_lm", "--dropout", "0"]
    tbptt1 = fairseq_wps(args, base + ["--criterion", "cross_entropy"], "real-tbptt")
    real = fairseq_wps(args, base + ["--criterion", "dni_cross_entropy", "--dni-mode", "real"], "real")
    synthetic = fairseq_wps(args, base + ["--criterion", "dni_cross_entropy", "--dni-mode", "synthetic"], "synthetic")
    tbptt2 = fairseq_wps(args, base + ["--criterion", "cross_entropy"], "real-tbptt")
    tbptt = (tbptt1 + tbptt2) / 2
    rows = [
        ("real-tbptt", "cross_entropy (no synthesizer)", tbptt, f"{tbptt1:.0f} / {tbptt2:.0f} (first / last)"),
        ("real", "dni_cross_entropy --dni-mode real", real, ""),
        ("synthetic", "dni_cross_entropy --dni-mode synthetic", synthetic, ""),
    ]
    setting = (f"{args.layers}x{args.hidden} LSTM, embed {args.embed_dim}, B={args.batch_size}, T={args.window}, "
               f"Adam, clip {args.clip}, synthesizer 2 layers of width {2 * args.layers * args.hidden}, "
               f"{args.updates} timed updates after {args.warmup}; torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, {platform.machine()}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "what", "tokens_per_s", "note", "setting"])
        for arm, what, tps, note in rows:
            w.writerow([arm, what, f"{tps:.1f}", note, setting])
    lines = [f"Setting: {setting}", "", "| arm | what | tokens/s | note |", "|---|---|---|---|"]
    lines += [f"| {arm} | {what} | {tps:,.0f} | {note} |" for arm, what, tps, note in rows]
    lines += ["", f"**synthetic/real = {synthetic / real:.3f}**, **synthetic/real-tbptt = {synthetic / tbptt:.3f}**"]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
