"""Is DNI stable on a real corpus? Real vs synthetic gradients on PTB, curves from the logs.

The setting of the stability study (issue 3): 2x200 LSTM (``dni_lstm_lm_small``), window
35, 20 streams, Adam 1e-3, synthetic gradients scaled by 0.1, one epoch of PTB. Every arm
is a stock ``fairseq-train`` run with ``--criterion dni_cross_entropy`` (the synthesizer
learns in real mode too, so its cosine with the true gradient is measured in both). The
script writes each run's log, a CSV of the logged curves, a markdown summary (also into the
page, OUT/README.md, between its markers) and (with matplotlib installed) a PNG; every number in
them is read from the fairseq logs.

    python -m studies.dni_stability --text-dir ../shared/data/ptb --arms all
    python -m studies.dni_stability --arms real,synthetic --epochs 1 --max-update 300   # quicker look
    python -m studies.dni_stability --arms real,synthetic,... --report-only   # summary, CSV, plot from the logs
"""

import argparse
import csv
import os
import subprocess

from studies import common
from studies.common import BIN, REPO

# name -> extra fairseq-train flags (on top of the common setting below: the LM's Adam 1e-3 and the
# synthesizer's own optimizer, --optimizer alternating)
MLP_LR_1E3 = ["--dni-lr", "1e-3"]  # the synthesizer learning as fast as the LM (the study's first arms)
PAPER_SYNTH = ["--dni-synthesizer", "coordinatewise", "--dni-lr", "1e-3", "--dni-weight-decay", "1.2e-6"]
ARMS = {
    "real": ["--dni-mode", "real", *MLP_LR_1E3],
    "synthetic": ["--dni-mode", "synthetic", *MLP_LR_1E3],
    "synthetic-no-input-norm": ["--dni-mode", "synthetic", "--dni-no-input-norm", *MLP_LR_1E3],
    "synthetic-scale1": ["--dni-mode", "synthetic", "--dni-scale", "1.0", *MLP_LR_1E3],
    # the synthesizer with a 10x smaller learning rate
    "synthetic-dni-lr-1e-4": ["--dni-mode", "synthetic", "--dni-lr", "1e-4"],
    # ... and conditioned on the next window's first input token
    "synthetic-cond-dni-lr-1e-4": ["--dni-mode", "synthetic", "--dni-lr", "1e-4", "--dni-condition-on-next-input"],
    # ... and on the label of the next window's first target too (conditional DNI, as cDNI conditions on labels)
    "synthetic-cond-target-dni-lr-1e-4": ["--dni-mode", "synthetic", "--dni-lr", "1e-4",
                                          "--dni-condition-on-next-input", "--dni-condition-on-next-target"],
    # ... with the synthesizer learning 10x faster (lr 1e-3)
    "synthetic-cond-target-dni-lr-1e-3": ["--dni-mode", "synthetic", "--dni-lr", "1e-3",
                                          "--dni-condition-on-next-input", "--dni-condition-on-next-target"],
    # the seed paper's coordinate-wise recurrent synthesizer (50 units, input noise N(1, 0.5), Adam 1e-3,
    # weight decay 1.2e-6), with each cell; and in real mode (it still learns: is it any good?)
    "real-coordinatewise-gru": ["--dni-mode", "real", *PAPER_SYNTH, "--dni-synthesizer-cell", "gru"],
    "synthetic-coordinatewise-gru": ["--dni-mode", "synthetic", *PAPER_SYNTH, "--dni-synthesizer-cell", "gru"],
    "synthetic-coordinatewise-lstm": ["--dni-mode", "synthetic", *PAPER_SYNTH, "--dni-synthesizer-cell", "lstm"],
    "synthetic-coordinatewise-qrnn": ["--dni-mode", "synthetic", *PAPER_SYNTH, "--dni-synthesizer-cell", "qrnn"],
}
CURVES = ["loss", "state_norm", "dni_cos", "dni_rel_loss", "dni_loss", "dni_pred_norm", "dni_target_norm", "dni_nonfinite", "gnorm"]


def run_arm(name, data, out, args):
    log_path = os.path.join(out, "logs", f"{name}.log")
    cmd = [os.path.join(BIN, "fairseq-train"), data, "--user-dir", os.path.join(REPO, "fairseq_dni"),
           "--task", "dni_language_modeling", "--arch", "dni_lstm_lm_small",
           "--criterion", "dni_cross_entropy", "--tokens-per-sample", "35", "--batch-size", "20",
           "--optimizer", "alternating", "--base-optimizer", "adam", "--lr", "1e-3", "--dni-scale", "0.1",
           "--seed", str(args.seed),
           "--max-epoch", str(args.epochs), "--cpu", "--num-workers", "0", "--no-save",
           "--log-format", "json", "--log-interval", str(args.log_interval), "--no-progress-bar",
           *ARMS[name]]
    if args.max_update:
        cmd += ["--max-update", str(args.max_update)]
    if args.validate_interval_updates:
        cmd += ["--validate-interval-updates", str(args.validate_interval_updates)]
    print(f"[{name}] " + " ".join(cmd[1:]), flush=True)
    with open(log_path, "w") as log:
        log.write("# " + " ".join(cmd[1:]) + "\n")
        log.flush()
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return log_path


def parse(log_path):
    """train_inner rows and validation rows from a fairseq json log."""
    rows = common.records(log_path)
    return rows["train_inner"], rows["valid"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-dir", default=os.path.join(REPO, "..", "shared", "data", "ptb"))
    parser.add_argument("--data-bin", default=os.path.join(REPO, "runs", "ptb-bin"))
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--arms", default="real,synthetic,synthetic-no-input-norm")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-update", type=int, default=0)
    parser.add_argument("--validate-interval-updates", type=int, default=332)
    parser.add_argument("--log-interval", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="only re-read the existing logs (no binarizing, no training)")
    args = parser.parse_args()
    arms = list(ARMS) if args.arms == "all" else args.arms.split(",")
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    if not args.report_only:
        data = common.binarize(args.text_dir, args.data_bin, "ptb", prog="dni_stability")

    results = {}
    for name in arms:
        log_path = os.path.join(args.out, "logs", f"{name}.log")
        if not args.report_only:
            run_arm(name, data, args.out, args)
        results[name] = parse(log_path)

    with open(os.path.join(args.out, "curves.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "update"] + CURVES)
        for name, (train, _) in results.items():
            for row in train:
                w.writerow([name, row["num_updates"]] + [row.get(k, "") for k in CURVES])

    def extreme(rows, key, pick):
        vals = [float(r[key]) for r in rows if key in r]
        return pick(vals) if vals else float("nan")

    def at(rows, key, which):
        vals = [float(r[key]) for r in rows if key in r]
        return vals[which] if vals else float("nan")

    lines = ["| arm | valid ppl (end) | train loss first/last | state norm first/max/last | "
             "dni_cos first/max/last | dni_rel_loss first/min/last | dni_loss first/last | non-finite |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (train, valid) in results.items():
        ppl = float(valid[-1]["valid_ppl"]) if valid else float("nan")
        state_max = max((float(r["state_norm"]) for r in train if "state_norm" in r), default=float("nan"))
        nonfinite = sum(float(r.get("dni_nonfinite", 0)) for r in train)
        rel = (f"{at(train, 'dni_rel_loss', 0):.3f} / {extreme(train, 'dni_rel_loss', min):.3f} / "
               f"{at(train, 'dni_rel_loss', -1):.3f}" if any("dni_rel_loss" in r for r in train)
               else "(not logged then)")
        lines.append(
            f"| {name} | {ppl:.1f} | {at(train, 'loss', 0):.3f} / {at(train, 'loss', -1):.3f} | "
            f"{at(train, 'state_norm', 0):.1f} / {state_max:.1f} / {at(train, 'state_norm', -1):.1f} | "
            f"{at(train, 'dni_cos', 0):.3f} / {extreme(train, 'dni_cos', max):.3f} / {at(train, 'dni_cos', -1):.3f} | "
            f"{rel} | "
            f"{at(train, 'dni_loss', 0):.4f} / {at(train, 'dni_loss', -1):.4f} | {nonfinite:.0f} |")
    summary = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    common.replace_block(os.path.join(args.out, "README.md"), "summary", summary)
    print(summary)

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    panels = [("valid_ppl", "valid perplexity"), ("loss", "train loss (base 2)"), ("state_norm", "cell-state norm"),
              ("dni_cos", "cos(synthetic, true gradient)"), ("dni_rel_loss", "dni_rel_loss (1 - R^2)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels):
        for name, (train, valid) in results.items():
            rows = valid if key == "valid_ppl" else train
            xs = [int(r.get("num_updates", r.get("valid_num_updates"))) for r in rows if key in r]
            ax.plot(xs, [float(r[key]) for r in rows if key in r], label=name, marker="." if key == "valid_ppl" else None)
        ax.set_title(title)
        if key in ("state_norm", "valid_ppl"):
            ax.set_yscale("log")
        ax.set_xlabel("update")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curves.png"), dpi=90)


if __name__ == "__main__":
    main()
