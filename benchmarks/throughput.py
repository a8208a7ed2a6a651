"""Training throughput, in one run, on the same dims and data:

  (a) a bare PyTorch TBPTT loop with nn.LSTM (what a researcher would write by hand),
  (b) stock ``fairseq-train --user-dir fairseq_dni --arch dni_lstm_lm`` (this plugin),
  (c) stock ``fairseq-train --task language_modeling --arch lstm_lm`` (fairseq's own LSTM LM).

All three: same embedding/hidden/layers, B streams x T tokens per update, Adam with
the same learning rate, gradient-norm clipping, no dropout, same binarized corpus,
same torch thread count, the first ``--warmup`` updates excluded. The bare loop is
timed before and after the fairseq runs and its mean is the baseline, so drift of
the machine over the run shows up in the spread. Tokens/s for fairseq is its own
``wps`` meter (wall time between log lines: data loading, step, logging all in),
combined over the measured intervals as total tokens / total time.

    python -m benchmarks.throughput                                 # after examples/quickstart.sh
    python -m benchmarks.throughput --text-dir ../shared/data/ptb    # binarizes first

Writes benchmarks/results/throughput.{csv,md} and prints the ratios b/a and b/c.
"""

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch

from benchmarks.bare_lstm import BareSizes, tbptt_tokens_per_s

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)


def load_tokens(data_bin, split="train"):
    """The binarized split as one flat array (fairseq's mmap format, read with numpy only)."""
    with open(os.path.join(data_bin, f"{split}.idx"), "rb") as f:
        f.read(9 + 8 + 1)  # magic, version, dtype code
        f.seek(9 + 8)
        code = f.read(1)[0]
    dtype = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.double, 8: np.uint16, 9: np.uint32, 10: np.uint64}[code]
    return np.fromfile(os.path.join(data_bin, f"{split}.bin"), dtype=dtype).astype(np.int64)


def vocab_size(data_bin):
    with open(os.path.join(data_bin, "dict.txt")) as f:
        n = 4 + sum(1 for _ in f)
    return n + (-n % 8)  # fairseq pads the dictionary to a multiple of 8


def bare_pytorch(args, tokens, vocab):
    """(a): the hand-written loop (benchmarks/bare_lstm.py), no dropout, full softmax, Adam."""
    sizes = BareSizes(vocab=vocab, embed=args.embed_dim, hidden=args.hidden, layers=args.layers)
    tokens_per_s, _ = tbptt_tokens_per_s(tokens, sizes, args.batch_size, args.window, optimizer="adam", lr=args.lr,
                                         clip=args.clip, warmup=args.warmup, updates=args.updates, seed=args.seed)
    return tokens_per_s


def fairseq_wps(args, extra, label, after=()):
    """Run fairseq-train for warmup+updates updates; tokens/s over the measured intervals.
    ``after``: flags that override the common ones (e.g. another optimizer)."""
    interval = args.warmup
    total = args.warmup + args.updates
    cmd = [
        os.path.join(BIN, "fairseq-train"), args.data_bin, *extra,
        "--decoder-embed-dim", args.embed_dim, "--decoder-hidden-size", args.hidden,
        "--decoder-layers", args.layers, "--batch-size", args.batch_size,
        "--tokens-per-sample", args.window, "--optimizer", "adam", "--lr", args.lr,
        "--clip-norm", args.clip, "--max-update", total, "--seed", args.seed,
        "--cpu", "--num-workers", "0", "--no-save", "--disable-validation",
        "--log-format", "json", "--log-interval", interval, "--no-progress-bar", *after,
    ]
    out = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=REPO)
    if out.returncode != 0:
        sys.exit(f"{label} failed:\n{out.stdout[-3000:]}")
    inner = [json.loads(m) for m in re.findall(r"\| train_inner \| (\{.*\})", out.stdout)]
    return measured_tokens_per_s(inner, args.warmup, interval)


def measured_tokens_per_s(inner, warmup, interval):
    """Tokens/s over the ``train_inner`` records after update ``warmup``: total tokens / total time.

    fairseq's ``wps`` of a record is that interval's tokens (``wpb`` x ``interval`` updates)
    over its wall time, so the intervals are combined by their times, not averaged.
    """
    measured = [r for r in inner if int(r["num_updates"]) > warmup]
    tokens = sum(float(r["wpb"]) * interval for r in measured)
    seconds = sum(float(r["wpb"]) * interval / float(r["wps"]) for r in measured)
    return tokens / seconds


def write_results(out, rows, setting, verdict, tokens_header="tokens/s", note_header="note"):
    """rows: (arm, what, tokens/s, note) -> out.csv and out.md (also printed)."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "what", "tokens_per_s", "note", "setting"])
        for arm, what, tps, note in rows:
            w.writerow([arm, what, f"{tps:.1f}", note, setting])
    lines = [f"Setting: {setting}", "", f"| arm | what | {tokens_header} | {note_header} |", "|---|---|---|---|"]
    lines += [f"| {arm} | {what} | {tps:,.0f} | {note} |" if tps == tps else f"| {arm} | {what} | - | {note} |"
              for arm, what, tps, note in rows]   # tps nan: a row with no tokens/s of its own
    lines += ["", verdict]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def benchmark_parser(name, data_bin, embed_dim=200, hidden=200, layers=2, updates=200, window=35, warmup=20, extra=()):
    """The options every throughput benchmark shares (model size, windows, optimizer, timing), with the
    script's defaults; ``extra``: (flags, add_argument kwargs) pairs of its own, listed before ``--out``
    (results/NAME.{md,csv} by default)."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-bin", default=data_bin)
    parser.add_argument("--embed-dim", type=int, default=embed_dim)
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--batch-size", type=int, default=20, help="streams B")
    parser.add_argument("--window", "--tokens-per-sample", dest="window", type=int, default=window,
                        help="tokens per window T (fairseq's --tokens-per-sample)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--warmup", type=int, default=warmup, help="updates excluded from timing (also fairseq's log interval)")
    parser.add_argument("--updates", type=int, default=updates, help="timed updates")
    parser.add_argument("--seed", type=int, default=1)
    for flags, kwargs in extra:
        parser.add_argument(*flags, **kwargs)
    parser.add_argument("--out", default=os.path.join(HERE, "results", name))
    return parser


def parse_benchmark_args(parser):
    args = parser.parse_args()
    if args.updates % args.warmup:
        parser.exit(2, f"{parser.prog}: error: --updates must be a multiple of --warmup (fairseq logs every "
                       "--warmup updates)\n")
    return args


def main():
    parser = benchmark_parser("throughput", os.path.join(REPO, "runs", "quickstart", "data-bin"), extra=[
        (["--text-dir"], dict(default=None, help="binarize ptb.{train,valid,test}.txt from here first"))])
    args = parse_benchmark_args(parser)

    if args.text_dir:
        args.data_bin = os.path.join(tempfile.mkdtemp(), "bin")
        subprocess.run([os.path.join(BIN, "fairseq-preprocess"), "--only-source",
                        "--trainpref", os.path.join(args.text_dir, "ptb.train.txt"),
                        "--validpref", os.path.join(args.text_dir, "ptb.valid.txt"),
                        "--destdir", args.data_bin, "--workers", "2"], check=True, stdout=subprocess.DEVNULL)
    tokens, vocab = load_tokens(args.data_bin), vocab_size(args.data_bin)

    common_dni = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling",
                  "--arch", "dni_lstm_lm", "--dropout", "0"]
    common_lstm = ["--task", "language_modeling", "--arch", "lstm_lm", "--sample-break-mode", "none",
                   "--decoder-out-embed-dim", str(args.hidden), "--dropout", "0"]
    a1 = bare_pytorch(args, tokens, vocab)
    b = fairseq_wps(args, common_dni, "dni_lstm_lm")
    c = fairseq_wps(args, common_lstm, "lstm_lm")
    a2 = bare_pytorch(args, tokens, vocab)
    a = (a1 + a2) / 2
    rows = [
        ("a", "bare PyTorch nn.LSTM TBPTT loop", a, f"{a1:.0f} / {a2:.0f} (before / after)"),
        ("b", "fairseq-train --arch dni_lstm_lm", b, ""),
        ("c", "fairseq-train --arch lstm_lm (stock)", c, ""),
    ]
    setting = (f"{args.layers}x{args.hidden} LSTM, embed {args.embed_dim}, vocab {vocab}, B={args.batch_size}, "
               f"T={args.window}, Adam, clip {args.clip}, {args.updates} timed updates after {args.warmup}; "
               f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    write_results(args.out, rows, setting, f"**b/a = {b / a:.3f}**, **b/c = {b / c:.2f}**")

if __name__ == "__main__":
    main()
