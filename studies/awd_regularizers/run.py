"""Do AWD-LSTM's regularisers earn their place? The small AWD-LSTM on PTB with and without them.

Two runs of stock fairseq-train, identical but for the regularisers (same model shape, initial
weights, data order, updates, seed; one core each, one after the other):

  on    --arch dni_awd_lstm_lm_small (locked dropouts 0.2 / 0.125 / 0.2, embedding dropout 0.05,
        weight drop 0.25) and --criterion lm_cross_entropy --alpha 2 --beta 1 (AR, TAR)
  off   the same with every rate and weight set to 0

Both: Adam 1e-3, weight decay 1.2e-6, clip 0.25 (the seed paper's optimizer), 20 streams x 35 tokens,
--epochs epochs, validation every half epoch; then fairseq-eval-lm scores the test set with each run's best
checkpoint as one stream (--batch-size 1, AWD-LSTM's test setting). Logs go to studies/awd_regularizers/logs/,
the per-epoch table to regularizers.{csv,md} beside them and into the study's page (README.md), all read
from the logs.

    python -m studies.awd_regularizers --text-dir /work/shared/data/ptb    # ~1 hour of one core
    python -m studies.awd_regularizers --report-only                        # the table from the logs
"""
import argparse
import csv
import os
import subprocess
import sys

from studies import common
from studies.common import BIN, REPO
OFF = ["--dropout", "0", "--decoder-dropout-in", "0", "--decoder-hidden-dropout", "0", "--decoder-dropout-out", "0",
       "--decoder-embed-dropout", "0", "--weight-drop", "0", "--alpha", "0", "--beta", "0"]

ARMS = {"off": OFF, "on": ["--alpha", "2", "--beta", "1"]}


def run(tool, args, log_path):
    """Run a fairseq console script on one core, its output to ``log_path``; return the output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log_path, "w") as f:  # written as it runs
        code = subprocess.run([os.path.join(BIN, tool), *map(str, args)], env=env, cwd=REPO, stdout=f,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"{tool} failed, see {log_path}")
    with open(log_path) as f:
        return f.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-dir", default="/work/shared/data/ptb", help="ptb.{train,valid,test}.txt")
    parser.add_argument("--work-dir", default=os.path.join(REPO, "runs", "awd_regularizers"))
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--validate-every", type=int, default=664,
                        help="updates (664: half a PTB epoch of 20 streams x 35 tokens)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table from the logs")
    args = parser.parse_args()
    data = os.path.join(args.work_dir, "data-bin")
    logs = os.path.join(args.out, "logs")
    os.makedirs(logs, exist_ok=True)
    if not args.report_only:
        os.makedirs(args.work_dir, exist_ok=True)
        common.binarize(args.text_dir, data, "ptb", prog="awd_regularizers", workers=1)
        for arm, flags in ARMS.items():
            train_and_score(arm, flags, data, logs, args)
    report(logs, args.out)


def train_and_score(arm, flags, data, logs, args):
    """One arm: fairseq-train, then fairseq-eval-lm of its best checkpoint, each into its log in ``logs``."""
    save = os.path.join(args.work_dir, arm)
    run("fairseq-train", [
        data, "--user-dir", "fairseq_dni", "--task", "dni_language_modeling", "--arch", "dni_awd_lstm_lm_small",
        "--criterion", "lm_cross_entropy", *flags, "--batch-size", "20", "--tokens-per-sample", "35",
        "--batch-size-valid", "10", "--optimizer", "adam", "--lr", "0.001", "--weight-decay", "1.2e-6",
        "--clip-norm", "0.25", "--max-epoch", args.epochs, "--seed", args.seed, "--save-dir", save,
        "--validate-interval-updates", args.validate_every, "--no-epoch-checkpoints", "--cpu", "--num-workers", "0",
        "--log-format", "json", "--log-interval", "200", "--no-progress-bar"],
        os.path.join(logs, f"regularizers-{arm}.train.log"))
    run("fairseq-eval-lm", [
        data, "--user-dir", "fairseq_dni", "--task", "dni_language_modeling", "--path",
        os.path.join(save, "checkpoint_best.pt"), "--gen-subset", "test", "--batch-size", "1",
        "--tokens-per-sample", "35", "--cpu", "--num-workers", "0"], os.path.join(logs, f"regularizers-{arm}.eval.log"))


def report(logs, out):
    """regularizers.csv, regularizers.md and the table in README.md (between its markers), from the logs."""
    rows = []
    for arm in ARMS:
        train = common.records(os.path.join(logs, f"regularizers-{arm}.train.log"))
        test_ppl = common.eval_perplexity(os.path.join(logs, f"regularizers-{arm}.eval.log"))
        ends = {int(r["train_num_updates"]): r for r in train["train"]}  # epoch ends
        per_epoch = min(ends)
        for valid in train["valid"]:
            updates = int(valid["valid_num_updates"])
            end = ends.get(updates)
            rows.append({"arm": arm, "updates": updates, "epochs": round(updates / per_epoch, 2),
                         "valid_ppl": float(valid["valid_ppl"]),
                         "train_ppl": float(end["train_ppl"]) if end else "",
                         "train_ar": end.get("train_ar", "") if end else "",
                         "train_tar": end.get("train_tar", "") if end else "",
                         "train_wall_s": float(end["train_wall"]) if end else "", "test_ppl_best": test_ppl})
    with open(os.path.join(out, "regularizers.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    by = {(r["arm"], r["updates"]): r for r in rows}
    lines = ["| updates | epochs | valid ppl, regularisers on | valid ppl, off | train ppl, on | train ppl, off |",
             "|---|---|---|---|---|---|"]
    for updates in sorted({r["updates"] for r in rows}):
        on, off = by[("on", updates)], by[("off", updates)]
        train = [f"{r['train_ppl']:.2f}" if r["train_ppl"] != "" else "" for r in (on, off)]
        lines.append(f"| {updates} | {on['epochs']:g} | {on['valid_ppl']:.2f} | {off['valid_ppl']:.2f} | "
                     f"{train[0]} | {train[1]} |")
    best = {arm: min((r for r in rows if r["arm"] == arm), key=lambda r: r["valid_ppl"]) for arm in ARMS}
    lines += ["", "Best valid ppl: " + ", ".join(f"{arm} {r['valid_ppl']:.2f} (after {r['updates']} updates)"
                                                 for arm, r in best.items()) + ". Test ppl of the best epoch-end "
              "checkpoint (fairseq-eval-lm, one stream): " + ", ".join(f"{arm} {r['test_ppl_best']:.2f}"
                                                                      for arm, r in best.items()) + "."]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "regularizers.md"), "w") as f:
        f.write(table)
    common.replace_block(os.path.join(out, "README.md"), "table", table)
    print(table)


if __name__ == "__main__":
    main()
