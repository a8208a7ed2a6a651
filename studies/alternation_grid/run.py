"""Does alternating synthetic and real gradients beat plain TBPTT? The MLP grid.

Four arms, identical model, data, number of updates and seeds; only the gradient mode and
the learning-rate schedule differ (all use ``--criterion dni_cross_entropy``, so the
synthesizer exists and learns in every arm; in the real arms it is never injected):

  real-cosine         real gradients, one cosine cycle over the whole run (no restarts)
  real-restarts       real gradients, cosine with warm restarts (SGDR)
  synthetic-restarts  synthetic gradients in every cycle, same warm restarts
  alternating         warm restarts, the mode switching at every restart (the paper)

Each run is a stock ``fairseq-train`` followed by a stock ``fairseq-eval-lm`` on the test
split (``studies.common.run_grid``: logs ``OUT/logs/NAME.train.log`` and ``NAME.eval.log``, the eval label "").
Everything in the table, the CSV and the plots is read back from those logs; the runner never
types a number. Logs land in ``OUT/logs`` as each run finishes (``--commit`` also commits each
one, so a grid can be completed piece by piece: finished runs whose logs exist are skipped,
unless ``--force``). The report (``studies.common`` holds what it shares with the paper grid)
writes ``OUT/results.csv``, ``OUT/table.md``, ``OUT/valid_CORPUS_TWINDOW.png`` and the study's
page, ``OUT/README.md`` (OUT: this folder).

    python -m studies.alternation_grid --corpus ptb --windows 10,35 --seeds 1,2 --commit
    python -m studies.alternation_grid --corpus wikitext2 --windows 10 --seeds 1 --commit
    python -m studies.alternation_grid --report-only        # rebuild table/plots/page from logs
"""

import argparse
import math
import os
import re
import sys

from studies import common
from studies.common import REPO, Run, spread

ARMS = ["real-cosine", "real-restarts", "synthetic-restarts", "alternating",
        # optional extras: the same with a conditional synthesizer (cDNI: it also sees the next
        # window's first input and first target, see studies/dni_stability), whose predictions
        # actually correlate with the true gradient on word-level corpora
        "synthetic-restarts-cdni", "alternating-cdni"]
CDNI = ["--dni-condition-on-next-input", "--dni-condition-on-next-target"]
OUT = os.path.dirname(os.path.abspath(__file__))


def arm_flags(arm, total_updates, cycles):
    """The schedule and mode of an arm: the only thing that differs between arms."""
    if arm.endswith("-cdni"):
        return arm_flags(arm[: -len("-cdni")], total_updates, cycles) + CDNI
    if arm == "real-cosine":
        return ["--lr-period-updates", str(total_updates), "--mode-schedule", "real"]
    period = ["--lr-period-updates", str(total_updates // cycles)]
    return period + {"real-restarts": ["--mode-schedule", "real"],
                     "synthetic-restarts": ["--mode-schedule", "synthetic"],
                     "alternating": ["--mode-schedule", "alternate", "--first-mode", "synthetic"]}[arm]


def run_name(corpus, window, arm, seed):
    return f"{corpus}-T{window}-{arm}-s{seed}"


def make_run(corpus, data_bin, window, arm, seed, args):
    """One cell: ``fairseq-train`` for a whole number of cycles, then ``fairseq-eval-lm`` of the last
    checkpoint (log ``NAME.eval.log``: the eval label "")."""
    cycles = args.cycles
    total = args.updates or args.epochs * common.updates_per_epoch(data_bin, args.streams, window)
    # a whole number of cycles: a run must end at the bottom of a cosine, not just after a restart
    total -= total % cycles
    common = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling", "--cpu"]
    train = [*common, "--arch", "dni_lstm_lm_small", "--decoder-layers", str(args.layers),
             "--decoder-embed-dim", str(args.hidden), "--decoder-hidden-size", str(args.hidden),
             "--decoder-out-embed-dim", str(args.hidden),
             "--batch-size", str(args.streams), "--tokens-per-sample", str(window),
             "--criterion", "dni_cross_entropy", "--dni-scale", str(args.dni_scale),
             "--optimizer", "alternating", "--base-optimizer", args.base_optimizer, "--lr", str(args.lr),
             "--clip-norm", str(args.clip_norm), "--dni-lr", str(args.dni_lr),
             "--lr-scheduler", "cosine_alternating", "--min-lr", str(args.min_lr),
             *arm_flags(arm, total, cycles),
             "--max-update", str(total), "--seed", str(seed),
             "--validate-interval-updates", str(max(1, total // args.validations)),
             "--no-epoch-checkpoints", "--save-interval-updates", "0",
             "--num-workers", "0", "--log-format", "json", "--log-interval", str(args.log_interval),
             "--no-progress-bar"]
    evaluate = [*common, "--gen-subset", "test", "--batch-size", "10", "--tokens-per-sample", "35",
                "--num-workers", "0"]
    return Run(run_name(corpus, window, arm, seed), data_bin, train, evaluate, {"": "checkpoint_last.pt"})


# ---------------------------------------------------------------- reading the logs back
def schedule_of(path):
    """(period, mode schedule, first mode, max update) from the command line the log starts with."""
    return (int(common.flag(path, "--lr-period-updates")), common.flag(path, "--mode-schedule"),
            common.flag(path, "--first-mode", "synthetic"), int(common.flag(path, "--max-update")))


def collect(log_dir):
    runs = []
    for fname in sorted(os.listdir(log_dir)):
        m = re.match(r"(\w+)-T(\d+)-([\w-]+)-s(\d+)\.train\.log$", fname)
        if not m or not os.path.exists(os.path.join(log_dir, fname.replace(".train.", ".eval."))):
            continue
        path = os.path.join(log_dir, fname)
        rows = common.records(path)
        valid = [(int(r["valid_num_updates"]), float(r["valid_ppl"])) for r in rows["valid"]]
        cos_synth = [float(r["dni_cos"]) for r in rows["train_inner"] if "dni_cos" in r]
        runs.append(dict(
            corpus=m.group(1), window=int(m.group(2)), arm=m.group(3), seed=int(m.group(4)),
            test_ppl=common.eval_perplexity(path.replace(".train.", ".eval.")),
            final_valid_ppl=valid[-1][1], best_valid_ppl=min(v for _, v in valid),
            updates=valid[-1][0], train_wall_s=common.train_wall(path),
            dni_cos_first=cos_synth[0] if cos_synth else float("nan"),
            dni_cos_last=cos_synth[-1] if cos_synth else float("nan"),
            valid_curve=valid, schedule=schedule_of(path), command=common.command_of(path)))
    runs.sort(key=lambda r: r["arm"] != "alternating")
    return runs


FIELDS = ["corpus", "window", "arm", "seed", "test_ppl", "final_valid_ppl", "best_valid_ppl", "updates",
          "train_wall_s", "dni_cos_first", "dni_cos_last"]


def report(runs, out):
    """results.csv, table.md (returned as lines) and one plot per setting, from the runs' logs."""
    common.write_csv(os.path.join(out, "results.csv"), FIELDS, runs)
    groups = {}
    for r in runs:
        groups.setdefault((r["corpus"], r["window"]), {}).setdefault(r["arm"], []).append(r)
    lines = []
    for (corpus, window), arms in sorted(groups.items()):
        lines += [f"### {corpus}, window {window}", "",
                  "| arm | seeds | test ppl (mean ± half-range) | each seed | final valid ppl (mean) | "
                  "synthesizer cos first → last (mean) | updates | train wall s (runs share the 2 cores) |",
                  "|---|---|---|---|---|---|---|---|"]
        best = common.lowest_arms(arms)
        for arm in [a for a in ARMS if a in arms]:
            rs = sorted(arms[arm], key=lambda r: r["seed"])
            mean, half = spread([r["test_ppl"] for r in rs])
            each = " / ".join(f"{r['test_ppl']:.2f}" for r in rs)
            bold = "**" if arm in best else ""
            pm = f" ± {half:.2f}" if not math.isnan(half) else ""
            lines.append(f"| {arm} | {len(rs)} | {bold}{mean:.2f}{bold}{pm} | {each} | "
                         f"{spread([r['final_valid_ppl'] for r in rs])[0]:.2f} | "
                         f"{spread([r['dni_cos_first'] for r in rs])[0]:.3f} → "
                         f"{spread([r['dni_cos_last'] for r in rs])[0]:.3f} | {rs[0]['updates']} | "
                         f"{spread([r['train_wall_s'] or 0 for r in rs])[0]:.0f} |")
        lines += ["", common.verdict(arms, "alternating", ARMS[:3]), ""]
        if "alternating-cdni" in arms:
            lines += [common.verdict(arms, "alternating-cdni", ARMS[:3]), ""]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    plot(groups, out)
    return lines, groups


def summary(groups):
    """The study's verdict in one line, for the top of its page."""
    settings = sorted(groups)
    beat = [s for s in settings if "alternating" in groups[s]
            and common.compare(groups[s], "alternating", ARMS[:3])[0]]
    names = "; ".join(f"{c} window {w}" for c, w in settings)
    lows = {s: common.lowest(groups[s]) for s in settings}
    best = "lowest test perplexity: " + ", ".join(f"{arm} in {s[0]} window {s[1]} ({margin})"
                                                  for s, (arm, margin) in lows.items())
    return (f"alternating beat every baseline by more than the seed spread in {len(beat)} of {len(settings)} "
            f"settings ({names}); {best}")


def write_study(lines, runs, groups, out):
    """The study's page, ``OUT/README.md``: the setting, how to reproduce it, the tables, the reading, the plots."""
    settings = {}
    for r in runs:
        settings.setdefault((r["corpus"], r["window"]), r["command"])
    md = ["Jaderberg's MLP synthesizer, plain LSTM, SGD, update-counted cycles. From the fairseq logs in "
          "[`logs`](logs) (one `.train.log` and one `.eval.log` per run; the first line of "
          "each is the exact command); "
          "[`results.csv`](results.csv) has one row per run.", "",
          "Arms (same model, data, number of updates and seeds; all use `--criterion dni_cross_entropy`, "
          "so the synthesizer learns in every arm and is injected only in synthetic updates):", "",
          "* **real-cosine**: real gradients (TBPTT), one cosine cycle over the whole run;",
          "* **real-restarts**: real gradients, cosine with warm restarts (SGDR);",
          "* **synthetic-restarts**: synthetic gradients in every cycle, same restarts;",
          "* **alternating**: same restarts, the mode switching at every restart, synthetic first (the paper);",
          "* extras, PTB window 10 only: **synthetic-restarts-cdni** and **alternating-cdni**, the same with a "
          "conditional synthesizer (it also sees the next window's first input and target, "
          "`--dni-condition-on-next-input --dni-condition-on-next-target`; see "
          "[dni_stability](../dni_stability/README.md)).", "",
          "Test perplexity is `fairseq-eval-lm` on the test split with the last checkpoint (the end of the "
          "last cosine cycle), 10 streams, state carried. Mean ± half the range over seeds.", "",
          f"Reproduce (each command skips the runs whose logs exist; {common.TEXT_SOURCES}):", "", "```bash",
          "python -m studies.alternation_grid --corpus ptb --windows 10,35 --seeds 1,2 --commit",
          "python -m studies.alternation_grid --corpus ptb --windows 10 --seeds 1,2 "
          "--arms alternating-cdni,synthetic-restarts-cdni --commit",
          "python -m studies.alternation_grid --corpus wikitext2 --windows 10 --seeds 1 --epochs 1 --commit",
          "python -m studies.alternation_grid --report-only   # tables, CSV, plots and this page from the logs",
          "```", "", "Training command of one run per setting (the alternating arm where present):", ""]
    for (corpus, window), command in sorted(settings.items()):
        md += [f"* {corpus}, window {window}: `{command}`"]
    md += ["", "## Results", ""] + lines + common.reading(out)
    md += ["## Validation curves", ""]
    for corpus, window in sorted(settings):
        md += [f"![{corpus} window {window}](valid_{corpus}_T{window}.png)", ""]
    common.write_page(out, "Does alternating synthetic and real gradients beat plain TBPTT? The MLP grid",
                      "python -m studies.alternation_grid --report-only", summary(groups), md)


COLORS = dict(zip(ARMS, ["tab:gray", "tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple"]))


def plot(groups, out):
    for (corpus, window), arms in sorted(groups.items()):
        curves = []
        for arm in [a for a in ARMS if a in arms]:
            for i, r in enumerate(sorted(arms[arm], key=lambda r: r["seed"])):
                xs, ys = zip(*r["valid_curve"])
                curves.append(dict(x=xs, y=ys, color=COLORS[arm], seed_index=i, label=f"{arm} (seed {r['seed']})"))
        # restarts and the alternating arm's synthetic cycles, from its own command line
        restarts, spans = [], []
        ref = (arms.get("alternating") or arms.get("real-restarts") or [None])[0]
        if ref:
            period, mode, first, total = ref["schedule"]
            for k, start in enumerate(range(0, total, period)):
                if start:
                    restarts.append(start)
                synthetic = (k % 2 == 0) == (first == "synthetic")
                if "alternating" in arms and synthetic:
                    spans.append(dict(x0=start, x1=min(start + period, total), color="tab:green"))
        common.plot_curves(os.path.join(out, f"valid_{corpus}_T{window}.png"), curves, restarts, spans,
                                "update", f"{corpus}, window {window}: dotted = warm restarts, "
                                "shaded = alternating arm's synthetic cycles")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_grid_arguments(p, OUT, os.path.join(REPO, "runs", "grid"))
    p.add_argument("--arms", default=",".join(ARMS[:4]))
    p.add_argument("--windows", default="10,35")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--updates", type=int, default=0, help="updates per run (0: --epochs epochs)")
    p.add_argument("--cycles", type=int, default=6, help="warm-restart cycles over the run (t_mult 1)")
    p.add_argument("--validations", type=int, default=12, help="validation passes over the run")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--base-optimizer", default="sgd")
    p.add_argument("--lr", type=float, default=20.0)
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--clip-norm", type=float, default=0.25)
    p.add_argument("--dni-lr", type=float, default=1e-4)
    p.add_argument("--dni-scale", type=float, default=0.1)
    p.add_argument("--log-interval", type=int, default=100)
    args = p.parse_args()
    log_dir = os.path.join(args.out, "logs")
    os.makedirs(log_dir, exist_ok=True)

    if not args.report_only:
        data_bin = args.data_bin or os.path.join(REPO, "runs", f"{args.corpus}-bin")
        data_bin = common.binarize(args.text_dir or common.CORPORA[args.corpus], data_bin, args.corpus,
                                   prog="alternation_grid")
        cells = [(w, a, s) for w in map(int, args.windows.split(",")) for s in map(int, args.seeds.split(","))
                 for a in args.arms.split(",")]
        for _, a, _ in cells:
            if a not in ARMS:
                sys.exit(f"alternation_grid: error: unknown arm {a!r} (choose from {', '.join(ARMS)})")
        runs = [make_run(args.corpus, data_bin, w, a, s, args) for w, a, s in cells]
        common.run_grid(runs, log_dir, args.work_dir, args.jobs, args.commit, args.force, "Grid run", args.threads,
                             report=lambda: report_all(log_dir, args.out))
    report_all(log_dir, args.out)


def report_all(log_dir, out):
    """The report and the page from every finished run's logs; returns the files it wrote."""
    runs = collect(log_dir)
    if runs:
        lines, groups = report(runs, out)
        write_study(lines, runs, groups, out)
    return common.written(out)


if __name__ == "__main__":
    main()
