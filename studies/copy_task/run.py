"""The Copy and Repeat Copy tasks (Graves et al. 2014; Jaderberg et al. 2016, sec. 3.1) as LM corpora.

A positive control for synthetic gradients: the future gradient at a window boundary depends
on symbols the model has already read, so a synthesizer has something to predict (on
word-level text it has almost nothing, see studies/dni_stability).

One sequence per line; ``fairseq-preprocess`` ends every line with ``</s>``, and the task
``dni_language_modeling`` concatenates the lines into streams::

    Copy, length L:         x3 x0 x7 x1 go y3 y0 y7 y1 </s>
    Repeat Copy, L, R=2:    x3 x0 x7 x1 go r2 y3 y0 y7 y1 y3 y0 y7 y1 </s>

``x*`` are the random symbols read, ``go`` the stop symbol that starts the output phase, ``r*``
the number of repeats, ``y*`` the symbols to write (``yk`` copies ``xk``). Only the ``y*`` are
scored: every other symbol is passed to ``--unscored-symbols`` (its position stays an input, its
target becomes padding), so the logged ``loss`` / ``valid_loss`` is the output-phase loss in
bits per output symbol; chance is log2(symbols). Writing ``y_i`` needs ``x_i``, read L+1
(Copy) steps earlier: at window T the information must cross about L/T window boundaries.

Every split holds a multiple of 64 sequences, so with a stream count dividing 64 every stream
starts at a sequence start; with ``--tokens-per-sample`` equal to the sequence length every
window is exactly one sequence (the full-BPTT ceiling). Runs are stock ``fairseq-train``; every
number the ``table`` command prints is read back from their logs (studies/copy_task)::

    python -m studies.copy_task data --out data-bin/copy-L4 --length 4
    python -m studies.copy_task train --length 4 --window 2 --arm dni --log run.log [-- FAIRSEQ FLAGS]
    python -m studies.copy_task grid --windows 2,3,4,5 --lengths T,2T --arms bptt,dni,ceiling
    python -m studies.copy_task table --windows 2,3,4,5 --lengths T,2T --arms bptt,dni,ceiling
"""

import argparse
import json
import math
import os
import re
import subprocess
import time

import numpy as np

from studies import common
from studies.common import BIN, REPO

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- corpora
def sequences(count, length, symbols, repeats=0, seed=0):
    """``count`` lines of the Copy (``repeats`` = 0) or Repeat Copy task, as strings."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(count):
        xs = rng.integers(0, symbols, size=length)
        head = [f"x{k}" for k in xs] + ["go"] + ([f"r{repeats}"] if repeats else [])
        lines.append(" ".join(head + [f"y{k}" for k in xs] * max(repeats, 1)))
    return lines


def unscored_symbols(symbols, repeats=0):
    """Everything but the output symbols: the value for --unscored-symbols."""
    return ",".join([f"x{k}" for k in range(symbols)] + ["go"] + ([f"r{repeats}"] if repeats else []) + ["</s>"])


def sequence_length(length, repeats=0):
    """Tokens per sequence in the stream, its ``</s>`` included."""
    return length + 1 + (1 if repeats else 0) + length * max(repeats, 1) + 1


def write_corpus(out, length, symbols=8, repeats=0, train=65536, valid=256, test=256, align=64, seed=0):
    """Text and fairseq-binarized splits under ``out`` (``out/text``, ``out`` itself for the binaries)."""
    if any(n % align for n in (train, valid, test)):
        raise SystemExit(f"copy_task: error: sequence counts must be multiples of --align {align}")
    text = os.path.join(out, "text")
    os.makedirs(text, exist_ok=True)
    for i, (split, count) in enumerate((("train", train), ("valid", valid), ("test", test))):
        with open(os.path.join(text, f"{split}.txt"), "w") as f:
            f.write("\n".join(sequences(count, length, symbols, repeats, seed=1000 * seed + i)) + "\n")
    if os.path.exists(os.path.join(out, "dict.txt")):
        os.remove(os.path.join(out, "dict.txt"))   # new text: binarize it again
    common.binarize(text, out, "copy task", prog="copy_task", workers=1)
    return out


# ---------------------------------------------------------------- runs
# An arm is a name and the fairseq-train flags that make it. Every arm trains the same LSTM on the
# same data with --criterion dni_cross_entropy (so the synthesizer learns and is logged in every
# arm; it injects only in synthetic mode) and the SETTING flags. Adding an arm is one line.
ARMS = {
    "bptt": ["--dni-mode", "real"],                   # truncated BPTT at window T
    "ceiling": ["--dni-mode", "real"],                # BPTT, every window exactly one whole sequence
    "dni": ["--dni-mode", "synthetic"],               # the MLP synthesizer (README defaults: 2 layers, 256 wide)
    "dni-linear": ["--dni-mode", "synthetic", "--dni-synthesizer-layers", "1"],
    "dni-scale0": ["--dni-mode", "synthetic", "--dni-scale", "0"],   # negative control: injects nothing
    # the seed paper's coordinate-wise recurrent synthesizer (hidden 50, input noise N(1, 0.5)), at the
    # runner's --dni-lr; "-paper": with the paper's Adam lr 1e-3 and weight decay 1.2e-6
    "dni-cw": ["--dni-mode", "synthetic", "--dni-synthesizer", "coordinatewise", "--dni-synthesizer-cell", "gru"],
    "dni-cw-paper": ["--dni-mode", "synthetic", "--dni-synthesizer", "coordinatewise", "--dni-synthesizer-cell", "gru",
                     "--dni-lr", "1e-3", "--dni-weight-decay", "1.2e-6"],
    # the seed paper's QRNN synthesizer as its code runs it (--sgtype QRNN: one scan across all B x D scalars
    # of the state, hidden 50, input noise N(1, 0.5), decoder U(-0.1, 0.1) as the paper initialises it;
    # docs/synthesizers.md), at the paper's Adam lr 1e-3 and weight decay 1.2e-6 as dni-cw-paper
    "dni-scan": ["--dni-mode", "synthetic", "--dni-synthesizer", "scan", "--dni-synthesizer-init", "paper",
                 "--dni-lr", "1e-3", "--dni-weight-decay", "1.2e-6"],
}
LABELS = {"dni": "DNI, MLP", "dni-cw": "DNI, coordinate-wise GRU", "dni-cw-paper": "DNI, coordinate-wise GRU (paper's lr)",
          "dni-scan": "DNI, QRNN scan (paper's)"}
# fairseq's default normalisation: each window's gradient is divided by its number of scored tokens,
# and by 1 in windows with none (the input phase of every stream at once, since the streams are
# aligned): there the injected synthetic gradient weighs B times more than in a scored window. That
# is what makes --dni-scale 0.1 strong enough here; see studies/copy_task/README.md ("Why").
SETTING = []


def data_dir(work, length, symbols, repeats, train=65536, seed=0):
    name = f"{'repeat' if repeats else 'copy'}-L{length}{f'-R{repeats}' if repeats else ''}-K{symbols}-n{train}-d{seed}"
    path = os.path.join(work, name)
    if not os.path.isfile(os.path.join(path, "dict.txt")):
        write_corpus(path, length, symbols, repeats, train=train, seed=seed)
    return path


def run(log, cmd, env):
    """Append ``# command``, the tool's output and ``# exit RC after S s`` to ``log``; the exit status."""
    start = time.time()
    with open(log, "a") as f:
        f.write("# " + " ".join(["OMP_NUM_THREADS=" + env["OMP_NUM_THREADS"], os.path.basename(cmd[0])]
                               + [os.path.relpath(w, REPO) if os.path.isabs(w) else w for w in cmd[1:]]) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
        f.write(f"# exit {rc} after {time.time() - start:.0f} s\n")
    return rc


def train(args, arm, window, length, log, extra=()):
    """One stock fairseq-train run, its whole output in ``log`` (written as ``log.tmp`` until it succeeds)."""
    data = data_dir(args.work_dir, length, args.symbols, args.repeats, args.train_sequences, args.data_seed)
    window = sequence_length(length, args.repeats) if arm == "ceiling" else window
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [os.path.join(BIN, "fairseq-train"), data, "--user-dir", os.path.join(REPO, "fairseq_dni"),
           "--task", "dni_language_modeling", "--cpu", "--num-workers", "0",
           "--unscored-symbols", unscored_symbols(args.symbols, args.repeats), "--tokens-per-sample", str(window),
           "--arch", "dni_lstm_lm_small", "--decoder-layers", "1", "--dropout", "0",
           "--decoder-embed-dim", str(args.hidden), "--decoder-hidden-size", str(args.hidden),
           "--decoder-out-embed-dim", str(args.hidden), "--batch-size", str(args.streams),
           "--batch-size-valid", "8", "--criterion", "dni_cross_entropy",
           "--optimizer", "alternating", "--base-optimizer", "adam", "--lr", str(args.lr), "--dni-lr", str(args.dni_lr),
           *SETTING, *ARMS[arm], *extra, "--max-update", str(args.updates), "--seed", str(args.seed),
           "--validate-interval-updates", str(args.validate_every), "--validate-interval", "1000000", "--no-save",
           "--log-format", "json", "--log-interval", str(args.log_interval), "--no-progress-bar"]
    tmp = log + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    rc = run(tmp, cmd, env)
    if rc != 0:
        raise SystemExit(f"copy_task: error: run failed (exit {rc}); see {tmp}")
    os.replace(tmp, log)
    return log


# ---------------------------------------------------------------- reading logs back
def read_log(path):
    """The command (first line), train_inner and valid records, and the wall time of one run's log."""
    with open(path) as f:
        lines = f.read().splitlines()
    inner, valid, wall = [], [], None
    for line in lines:
        m = re.search(r"\| (train_inner|valid) \| (\{.*\})", line)
        if m:
            (inner if m.group(1) == "train_inner" else valid).append(json.loads(m.group(2)))
        m = re.match(r"# exit 0 after (\d+) s", line)
        if m:  # the training run, plus the fairseq-validate that may follow it
            wall = (wall or 0) + int(m.group(1))
    return lines[0][2:], inner, valid, wall


def per_token(record, prefix="", sentence_avg=True):
    """Loss per scored token, in bits. Under --sentence-avg fairseq's ``loss`` is per stream and
    window (its ``nll_loss`` is logged only when the two differ), so rescale by streams / tokens."""
    loss = float(record[prefix + "loss"])
    return loss * float(record[prefix + "bsz"]) / float(record[prefix + "wpb"]) if sentence_avg else loss


def summarize(path, tail=0.1):
    """Copy-phase loss (bits per output symbol) over the last ``tail`` of the updates, the last
    validation, and the synthesizer's cosine over the same updates. A run that trained with every
    token a target (no --unscored-symbols) has no training copy-phase loss; its validation is the
    fairseq-validate with --unscored-symbols that follows it in the log."""
    command, inner, valid, wall = read_log(path)
    words = command.split()
    avg = "--sentence-avg" in words
    last = int(inner[-1]["num_updates"])
    recent = [r for r in inner if int(r["num_updates"]) > last * (1 - tail)]
    cos = [float(r["dni_cos"]) for r in recent if "dni_cos" in r]
    state = [float(r["state_norm"]) for r in recent if "state_norm" in r]
    scored = "--unscored-symbols" in words
    return dict(copy_loss=sum(per_token(r, "", avg) for r in recent) / len(recent) if scored else float("nan"),
                valid_copy_loss=per_token(valid[-1], "valid_", avg) if valid else float("nan"),
                dni_cos=sum(cos) / len(cos) if cos else float("nan"),
                state_norm=sum(state) / len(state) if state else float("nan"),
                updates=last, wall_s=wall, command=command)


# ---------------------------------------------------------------- grid and table
SOLVED = 0.15  # bits per output symbol: Jaderberg et al.'s threshold for "solved"


def lengths_for(window, spec):
    """``spec`` items are ints or ``kT`` (k times the window): "T,2T" at T=3 -> [3, 6]."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        out.append(int(item[:-1] or 1) * window if item.endswith("T") else int(item))
    return out


def run_name(args, length, window, arm):
    task = f"repeat{args.repeats}" if args.repeats else "copy"
    window = sequence_length(length, args.repeats) if arm == "ceiling" else window
    return f"{task}-L{length}-T{window}-{arm}-s{args.seed}"


def cells(args):
    """(window, length, arm) of every run of the grid, ceilings once per length."""
    out, seen = [], set()
    for window in map(int, args.windows.split(",")):
        for length in lengths_for(window, args.lengths):
            for arm in args.arms.split(","):
                key = (length, arm) if arm == "ceiling" else (window, length, arm)
                if key not in seen:
                    seen.add(key)
                    out.append((window, length, arm))
    return out


def grid(args):
    os.makedirs(args.logs, exist_ok=True)
    for window, length, arm in cells(args):
        log = os.path.join(args.logs, run_name(args, length, window, arm) + ".log")
        if os.path.exists(log) and not args.force:
            continue
        start = time.time()
        train(args, arm, window, length, log)
        s = summarize(log)
        print(f"{os.path.basename(log)}: copy-phase loss {s['copy_loss']:.3f} bits "
              f"(valid {s['valid_copy_loss']:.3f}), {time.time() - start:.0f} s", flush=True)


def table(args):
    """Markdown table and CSV from the logs alone: rows (T, L), one column per arm."""
    arms = args.arms.split(",")
    rows, records = [], []
    for window in map(int, args.windows.split(",")):
        for length in lengths_for(window, args.lengths):
            row = [str(window), str(length), str(-(-length // window))]
            for arm in arms:
                log = os.path.join(args.logs, run_name(args, length, window, arm) + ".log")
                if not os.path.exists(log):
                    row.append("-")
                    continue
                s = summarize(log)
                records.append(dict(window=window, length=length, arm=arm, **{k: v for k, v in s.items()}))
                cell = f"{s['copy_loss']:.2f}"
                row.append(f"**{cell}**" if s["copy_loss"] < SOLVED else cell)
            rows.append(row)
    chance = math.log2(args.symbols)
    head = ["T", "L", "boundaries"] + [LABELS.get(a, a) + (" (whole sequence)" if a == "ceiling" else " at T")
                                       for a in arms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append(f"Copy-phase loss in bits per output symbol, mean over the last 10% of {args.updates} updates "
                 f"(65,536 training sequences, each seen 1 to 2 times, 5 by the ceiling; the last validation, on held-out sequences, "
                 f"is in results.csv); chance {chance:.2f}; **bold**: solved "
                 f"(< {SOLVED} bits); `-`: not run. `boundaries`: ceil(L/T), the window boundaries the information "
                 f"must cross.")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.csv"), "w") as f:
        keys = ["window", "length", "arm", "copy_loss", "valid_copy_loss", "dni_cos", "state_norm", "updates", "wall_s",
                "command"]
        f.write(",".join(keys) + "\n")
        for r in records:
            f.write(",".join(json.dumps(r[k]) if k == "command" else
                             (f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])) for k in keys) + "\n")
    blocks = {"table": text}
    for name in ("control", "ablation"):  # control.tsv: logs/control/; ablation.tsv: logs/ablation/
        listing = os.path.join(args.out, name + ".tsv")
        if os.path.exists(listing):
            blocks[name] = ablation(listing, os.path.join(args.logs, name), args.out)
    readme = os.path.join(args.out, "README.md")
    if os.path.exists(readme):  # the blocks between the markers are regenerated, the prose is not
        with open(readme) as f:
            doc = f.read()
        for name, block in blocks.items():
            doc = re.sub(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", lambda m: m.group(1) + block + m.group(2),
                         doc, flags=re.S)
        with open(readme, "w") as f:
            f.write(doc)
    print("\n".join(blocks.values()))


def ablation(listing, log_dir, out):
    """One row per (label, log) line of ``listing`` (tab-separated; # comments), read from the logs."""
    fmt = lambda x, spec=".2f": "-" if x is None or x != x else format(x, spec)  # noqa: E731
    lines = ["| run | copy-phase loss, last 10% | last validation | dni_cos | cell-state norm | updates | log |",
             "|---|---|---|---|---|---|---|"]
    with open(listing) as f:
        for row in f:
            if not row.strip() or row.startswith("#"):
                continue
            label, name = row.rstrip("\n").split("\t")
            s = summarize(os.path.join(log_dir, name))
            lines.append(f"| {label} | {fmt(s['copy_loss'])} | {fmt(s['valid_copy_loss'])} | {fmt(s['dni_cos'])} | "
                         f"{fmt(s['state_norm'], '.0f')} | {s['updates']} | [{name}]({os.path.relpath(os.path.join(log_dir, name), out)}) |")
    return "\n".join(lines) + "\n"


def add_run_args(parser):
    parser.add_argument("--repeats", type=int, default=0, help="0: Copy; R > 0: Repeat Copy with R repeats")
    parser.add_argument("--symbols", type=int, default=8, help="alphabet size K (chance: log2 K bits)")
    parser.add_argument("--train-sequences", type=int, default=65536)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64, help="LSTM size (one layer)")
    parser.add_argument("--streams", type=int, default=32, help="--batch-size; must divide 64 (stream starts "
                                                                 "then fall on sequence starts)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the LSTM")
    parser.add_argument("--dni-lr", type=float, default=1e-4, help="the synthesizer's Adam learning rate")
    parser.add_argument("--updates", type=int, default=10000)
    parser.add_argument("--validate-every", type=int, default=1000)
    parser.add_argument("--log-interval", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", default=os.path.join(REPO, "runs", "copy_task"),
                        help="generated corpora (not committed)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="write and binarize one corpus")
    p.add_argument("--out", required=True)
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--symbols", type=int, default=8)
    p.add_argument("--repeats", type=int, default=0)
    p.add_argument("--train", type=int, default=65536)
    p.add_argument("--valid", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("train", help="one run; unknown arguments go to fairseq-train")
    add_run_args(p)
    p.add_argument("--arm", choices=sorted(ARMS), required=True)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--length", type=int, default=4)
    p.add_argument("--log", required=True)
    for name in ("grid", "table"):
        p = sub.add_parser(name, help="run the grid (skipping runs whose log exists)" if name == "grid"
                           else "table.md, results.csv and README.md's table from the logs")
        add_run_args(p)
        p.add_argument("--windows", default="2,3,4,5")
        p.add_argument("--lengths", default="T,2T", help="copy lengths per window: ints or kT (k times T)")
        p.add_argument("--arms", default="bptt,dni,ceiling")
        p.add_argument("--out", default=HERE)
        p.add_argument("--logs", default=os.path.join(HERE, "logs"))
        p.add_argument("--force", action="store_true", help="rerun runs whose log exists")
    args, extra = parser.parse_known_args()
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "data":
        write_corpus(args.out, args.length, args.symbols, args.repeats, args.train, args.valid, args.valid,
                     seed=args.seed)
        print("--unscored-symbols", unscored_symbols(args.symbols, args.repeats))
    elif args.command == "train":
        train(args, args.arm, args.window, args.length, args.log, [e for e in extra if e != "--"])
        print(json.dumps(summarize(args.log)))
    elif args.command == "grid":
        grid(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
