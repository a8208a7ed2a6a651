"""Does alternating synthetic and real gradients beat plain TBPTT? The experiment grid.

Four arms, identical model, data, number of updates and seeds; only the gradient mode and
the learning-rate schedule differ (all use ``--criterion dni_cross_entropy``, so the
synthesizer exists and learns in every arm; in the real arms it is never injected):

  real-cosine         real gradients, one cosine cycle over the whole run (no restarts)
  real-restarts       real gradients, cosine with warm restarts (SGDR)
  synthetic-restarts  synthetic gradients in every cycle, same warm restarts
  alternating         warm restarts, the mode switching at every restart (the paper)

Each run is a stock ``fairseq-train`` followed by a stock ``fairseq-eval-lm`` on the test
split. Everything in the table, the CSV and the plots is read back from those logs; the
runner never types a number. Logs land in ``OUT/logs`` as each run finishes (``--commit``
also commits each one, so a grid can be completed piece by piece: finished runs whose logs
exist are skipped, unless ``--force``).

    python examples/alternation_grid.py --corpus ptb --windows 10,35 --seeds 1,2 --commit
    python examples/alternation_grid.py --corpus wikitext2 --windows 10 --seeds 1 --commit
    python examples/alternation_grid.py --report-only        # rebuild table/plots from logs
"""

import argparse
import concurrent.futures
import csv
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import fairseq_log  # examples/fairseq_log.py: reads fairseq's json logs back

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SHARED = os.path.join(REPO, "..", "shared", "data")

CORPORA = {  # name -> (text dir, train/valid/test file names)
    "ptb": (os.path.join(SHARED, "ptb"), ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")),
    "wikitext2": (os.path.join(SHARED, "wikitext-2"), ("train.txt", "valid.txt", "test.txt")),
}
ARMS = ["real-cosine", "real-restarts", "synthetic-restarts", "alternating",
        # optional extras: the same with a conditional synthesizer (cDNI: it also sees the next
        # window's first input and first target, see docs/dni_stability), whose predictions
        # actually correlate with the true gradient on word-level corpora
        "synthetic-restarts-cdni", "alternating-cdni"]
CDNI = ["--dni-condition-on-next-input", "--dni-condition-on-next-target"]


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


def binarize(corpus, text_dir, dest):
    if not os.path.isfile(os.path.join(dest, "dict.txt")):
        train, valid, test = (os.path.join(text_dir, f) for f in CORPORA[corpus][1])
        for f in (train, valid, test):
            if not os.path.isfile(f):
                sys.exit(f"alternation_grid: error: corpus file {f} not found (--text-dir)")
        subprocess.run([os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--trainpref", train,
                        "--validpref", valid, "--testpref", test, "--destdir", dest, "--workers", "2"],
                       check=True, stdout=subprocess.DEVNULL)
    return dest


def updates_per_epoch(data_bin, streams, window):
    """Windows per epoch of the dni_language_modeling task: ceil(ceil(N / B) / T).

    N is read from the header of fairseq's mmap index (magic, version, dtype code, item
    count, doc count, then int32 sizes), so the runner needs no fairseq import."""
    import numpy as np

    with open(os.path.join(data_bin, "train.idx"), "rb") as f:
        if f.read(9) != b"MMIDIDX\x00\x00":
            sys.exit(f"alternation_grid: error: {data_bin}/train.idx is not a fairseq mmap index")
        f.read(8 + 1)
        count = int(np.frombuffer(f.read(8), dtype="<i8")[0])
        f.read(8)
        n = int(np.frombuffer(f.read(4 * count), dtype="<i4").sum())
    return math.ceil(math.ceil(n / streams) / window)


def run_name(corpus, window, arm, seed):
    return f"{corpus}-T{window}-{arm}-s{seed}"


def train_and_score(name, data_bin, window, arm, seed, args, log_dir, threads):
    cycles = args.cycles
    total = args.updates or args.epochs * updates_per_epoch(data_bin, args.streams, window)
    # a whole number of cycles: a run must end at the bottom of a cosine, not just after a restart
    total -= total % cycles
    save_dir = os.path.join(args.work_dir, name)
    shutil.rmtree(save_dir, ignore_errors=True)  # a fresh run: fairseq would resume from an old checkpoint_last.pt
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    common = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling", "--cpu"]
    train_cmd = [os.path.join(BIN, "fairseq-train"), data_bin, *common,
                 "--arch", "dni_lstm_lm_small", "--decoder-layers", str(args.layers),
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
                 "--save-dir", save_dir, "--no-epoch-checkpoints", "--save-interval-updates", "0",
                 "--num-workers", "0", "--log-format", "json", "--log-interval", str(args.log_interval),
                 "--no-progress-bar"]
    eval_cmd = [os.path.join(BIN, "fairseq-eval-lm"), data_bin, *common,
                "--path", os.path.join(save_dir, "checkpoint_last.pt"), "--gen-subset", "test",
                "--batch-size", "10", "--tokens-per-sample", "35", "--num-workers", "0"]
    paths = {}
    for kind, cmd in (("train", train_cmd), ("eval", eval_cmd)):
        path = os.path.join(log_dir, f"{name}.{kind}.log.tmp")
        start = time.time()
        with open(path, "w") as log:
            log.write("# " + " ".join(["OMP_NUM_THREADS=%d" % threads, os.path.basename(cmd[0])] + cmd[1:]) + "\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
            log.write(f"# exit {rc} after {time.time() - start:.0f} s\n")
        if rc != 0:
            raise RuntimeError(f"{name}: {kind} failed (exit {rc}); see {path}")
        paths[kind] = path
    for kind, path in paths.items():  # a run's logs appear only when both succeeded
        os.replace(path, path[: -len(".tmp")])
    return name


def commit_logs(name, log_dir):
    """Commit one run's logs; retried, and only a warning if git stays busy (the logs stay on disk)."""
    files = [os.path.join(log_dir, f"{name}.{k}.log") for k in ("train", "eval")]
    for attempt in range(5):
        add = subprocess.run(["git", "add", "-f", *files], cwd=REPO, capture_output=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", f"Grid run {name}: logs", "--", *files], cwd=REPO,
            capture_output=True).returncode == 0
        if done:
            return
        time.sleep(3 + 3 * attempt)
    print(f"warning: could not commit the logs of {name}; they are in {log_dir}", flush=True)


# ---------------------------------------------------------------- reading the logs back
def parse_train(path):
    wall = None
    with open(path) as f:
        for line in f:
            m = re.match(r"# exit 0 after (\d+) s", line)
            if m:
                wall = int(m.group(1))
    return fairseq_log.records(path), wall


parse_eval = fairseq_log.eval_perplexity


def schedule_of(path):
    """(period, mode schedule, first mode, max update) from the command line the log starts with."""
    with open(path) as f:
        words = f.readline().split()
    get = lambda flag, default=None: words[words.index(flag) + 1] if flag in words else default  # noqa: E731
    return int(get("--lr-period-updates")), get("--mode-schedule"), get("--first-mode", "synthetic"), int(get("--max-update"))


def command_of(path):
    """The training command a log starts with, shortened to what a reader needs."""
    with open(path) as f:
        words = f.readline()[2:].split()
    drop = {"--save-dir"}
    kept, skip = [], False
    for w in words:
        if skip:
            skip = False
            continue
        if w in drop:
            skip = True
            continue
        kept.append(os.path.relpath(w, REPO) if os.path.isabs(w) else w)
    return " ".join(kept)


def collect(log_dir):
    runs = []
    for fname in sorted(os.listdir(log_dir)):
        m = re.match(r"(\w+)-T(\d+)-([\w-]+)-s(\d+)\.train\.log$", fname)
        if not m or not os.path.exists(os.path.join(log_dir, fname.replace(".train.", ".eval."))):
            continue
        rows, wall = parse_train(os.path.join(log_dir, fname))
        valid = [(int(r["valid_num_updates"]), float(r["valid_ppl"])) for r in rows["valid"]]
        inner = rows["train_inner"]
        cos_synth = [float(r["dni_cos"]) for r in inner if "dni_cos" in r]
        runs.append(dict(
            corpus=m.group(1), window=int(m.group(2)), arm=m.group(3), seed=int(m.group(4)),
            test_ppl=parse_eval(os.path.join(log_dir, fname.replace(".train.", ".eval."))),
            final_valid_ppl=valid[-1][1], best_valid_ppl=min(v for _, v in valid),
            updates=valid[-1][0], train_wall_s=wall,
            dni_cos_first=cos_synth[0] if cos_synth else float("nan"),
            dni_cos_last=cos_synth[-1] if cos_synth else float("nan"),
            valid_curve=valid, schedule=schedule_of(os.path.join(log_dir, fname)),
            command=command_of(os.path.join(log_dir, fname))))
    runs.sort(key=lambda r: r["arm"] != "alternating")
    return runs


def spread(values):
    mean = statistics.fmean(values)
    return mean, (max(values) - min(values)) / 2 if len(values) > 1 else float("nan")


def report(runs, out):
    fields = ["corpus", "window", "arm", "seed", "test_ppl", "final_valid_ppl", "best_valid_ppl", "updates",
              "train_wall_s", "dni_cos_first", "dni_cos_last"]
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in runs:
            w.writerow([r[k] if not isinstance(r[k], float) else f"{r[k]:.4f}" for k in fields])
    groups = {}
    for r in runs:
        groups.setdefault((r["corpus"], r["window"]), {}).setdefault(r["arm"], []).append(r)
    lines = []
    for (corpus, window), arms in sorted(groups.items()):
        lines += [f"### {corpus}, window {window}", "",
                  "| arm | seeds | test ppl (mean ± half-range) | each seed | final valid ppl (mean) | "
                  "synthesizer cos first → last (mean) | updates | train wall s (runs share the 2 cores) |",
                  "|---|---|---|---|---|---|---|---|"]
        best = min(spread([r["test_ppl"] for r in rs])[0] for rs in arms.values())
        for arm in [a for a in ARMS if a in arms]:
            rs = sorted(arms[arm], key=lambda r: r["seed"])
            mean, half = spread([r["test_ppl"] for r in rs])
            each = " / ".join(f"{r['test_ppl']:.2f}" for r in rs)
            vmean, _ = spread([r["final_valid_ppl"] for r in rs])
            cos0, _ = spread([r["dni_cos_first"] for r in rs])
            cos1, _ = spread([r["dni_cos_last"] for r in rs])
            bold = "**" if mean == best else ""
            pm = f" ± {half:.2f}" if not math.isnan(half) else ""
            lines.append(f"| {arm} | {len(rs)} | {bold}{mean:.2f}{bold}{pm} | {each} | {vmean:.2f} | "
                         f"{cos0:.3f} → {cos1:.3f} | {rs[0]['updates']} | "
                         f"{statistics.fmean(r['train_wall_s'] or 0 for r in rs):.0f} |")
        lines += ["", verdict(arms), ""]
        if "alternating-cdni" in arms:
            lines += [verdict(arms, "alternating-cdni"), ""]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    plot(groups, out)
    return lines


def verdict(arms, arm="alternating"):
    """One sentence per setting, computed: is ``arm``'s mean test perplexity lower than each
    baseline's (the first three arms) by more than the two arms' seed half-ranges together?"""
    if arm not in arms:
        return f"(no {arm} arm in this setting yet)"
    alt_mean, alt_half = spread([r["test_ppl"] for r in arms[arm]])
    parts = []
    for base in [a for a in ARMS[:3] if a in arms]:
        mean, half = spread([r["test_ppl"] for r in arms[base]])
        diff = alt_mean - mean
        margin = alt_half + half
        if math.isnan(margin):
            word = "lower" if diff < 0 else "higher"
            parts.append(f"{word} than {base} by {abs(diff):.2f} (one seed: no spread to compare with)")
        elif abs(diff) <= margin:
            parts.append(f"within the seed spread of {base} ({diff:+.2f}, spread {margin:.2f})")
        else:
            parts.append(f"{'better' if diff < 0 else 'worse'} than {base} ({diff:+.2f}, spread {margin:.2f})")
    beats_all = all(p.startswith(("better", "lower")) for p in parts)
    name = arm[0].upper() + arm[1:]
    return f"**{name} {'beat' if beats_all else 'did not beat'} every baseline here**: " + "; ".join(parts) + "."


def write_results_md(path, lines, runs, out):
    """docs/RESULTS.md: setting (read from the logs' command lines), tables, verdicts, plots."""
    rel = os.path.relpath(out, os.path.dirname(path))
    settings = {}
    for r in runs:
        settings.setdefault((r["corpus"], r["window"]), r["command"])
    md = ["# Does alternating synthetic and real gradients beat plain TBPTT?", "",
          "Generated by `examples/alternation_grid.py` from the fairseq logs in "
          f"[`{rel}/logs`]({rel}/logs) (one `.train.log` and one `.eval.log` per run; the first line of "
          "each is the exact command). No number on this page was typed by hand; "
          f"[`{rel}/results.csv`]({rel}/results.csv) has one row per run.", "",
          "Arms (same model, data, number of updates and seeds; all use `--criterion dni_cross_entropy`, "
          "so the synthesizer learns in every arm and is injected only in synthetic updates):", "",
          "* **real-cosine**: real gradients (TBPTT), one cosine cycle over the whole run;",
          "* **real-restarts**: real gradients, cosine with warm restarts (SGDR);",
          "* **synthetic-restarts**: synthetic gradients in every cycle, same restarts;",
          "* **alternating**: same restarts, the mode switching at every restart, synthetic first (the paper);",
          "* extras, PTB window 10 only: **synthetic-restarts-cdni** and **alternating-cdni**, the same with a "
          "conditional synthesizer (it also sees the next window's first input and target, "
          "`--dni-condition-on-next-input --dni-condition-on-next-target`; see docs/dni_stability).", "",
          "Test perplexity is `fairseq-eval-lm` on the test split with the last checkpoint (the end of the "
          "last cosine cycle), 10 streams, state carried. Mean ± half the range over seeds.", "",
          "Reproduce:", "", "```bash",
          "python examples/alternation_grid.py --corpus ptb --windows 10,35 --seeds 1,2 --commit",
          "python examples/alternation_grid.py --corpus ptb --windows 10 --seeds 1,2 "
          "--arms alternating-cdni,synthetic-restarts-cdni --commit",
          "python examples/alternation_grid.py --corpus wikitext2 --windows 10 --seeds 1 --epochs 1 --commit",
          "python examples/alternation_grid.py --report-only   # tables, CSV, plots and this page from the logs",
          "```", "", "Training command of one run per setting (the alternating arm where present):", ""]
    for (corpus, window), command in sorted(settings.items()):
        md += [f"* {corpus}, window {window}: `{command}`"]
    md += ["", "## Results", ""] + lines
    notes = os.path.join(out, "notes.md")  # hand-written reading of the tables: words, no numbers
    if os.path.exists(notes):
        with open(notes) as f:
            md += ["## Reading", "", f.read().strip(), ""]
    md += ["## Validation curves", ""]
    for corpus, window in sorted(settings):
        md += [f"![{corpus} window {window}]({rel}/valid_{corpus}_T{window}.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")


def plot(groups, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plots)")
        return
    colors = dict(zip(ARMS, ["tab:gray", "tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple"]))
    for (corpus, window), arms in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for arm in [a for a in ARMS if a in arms]:
            for i, r in enumerate(sorted(arms[arm], key=lambda r: r["seed"])):
                xs, ys = zip(*r["valid_curve"])
                ax.plot(xs, ys, color=colors[arm], alpha=1.0 if i == 0 else 0.5,
                        linestyle="-" if i == 0 else "--", label=f"{arm} (seed {r['seed']})")
        # restarts and the alternating arm's synthetic cycles, from its own command line
        ref = (arms.get("alternating") or arms.get("real-restarts") or [None])[0]
        if ref:
            period, mode, first, total = ref["schedule"]
            for k, start in enumerate(range(0, total, period)):
                if start:
                    ax.axvline(start, color="k", linewidth=0.6, linestyle=":")
                synthetic = (k % 2 == 0) == (first == "synthetic")
                if "alternating" in arms and synthetic:
                    ax.axvspan(start, min(start + period, total), color="tab:green", alpha=0.08, linewidth=0)
        ax.set_yscale("log")
        ax.set_xlabel("update")
        ax.set_ylabel("validation perplexity")
        ax.set_title(f"{corpus}, window {window}: dotted = warm restarts, "
                     "shaded = alternating arm's synthetic cycles", fontsize=9)
        lo = min(min(y for _, y in r["valid_curve"]) for rs in arms.values() for r in rs)
        ax.set_ylim(lo * 0.95, lo * 2.2)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"valid_{corpus}_T{window}.png"), dpi=90)
        plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", choices=sorted(CORPORA), default="ptb")
    p.add_argument("--text-dir", help="folder with the corpus' train/valid/test text (default ../shared/data/...)")
    p.add_argument("--data-bin", help="binarized corpus (default runs/<corpus>-bin, made by fairseq-preprocess)")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "results"))
    p.add_argument("--work-dir", default=os.path.join(REPO, "runs", "grid"), help="checkpoints (not committed)")
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
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (threads per run = 2 // jobs, at least 1)")
    p.add_argument("--commit", action="store_true", help="git-commit each run's logs as soon as it finishes")
    p.add_argument("--force", action="store_true", help="rerun runs whose logs exist")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results-md", default=os.path.join(REPO, "docs", "RESULTS.md"),
                   help="page written from the logs ('' to skip)")
    args = p.parse_args()
    log_dir = os.path.join(args.out, "logs")
    os.makedirs(log_dir, exist_ok=True)

    if not args.report_only:
        data_bin = args.data_bin or os.path.join(REPO, "runs", f"{args.corpus}-bin")
        binarize(args.corpus, args.text_dir or CORPORA[args.corpus][0], data_bin)
        todo = [(w, a, s) for w in map(int, args.windows.split(",")) for s in map(int, args.seeds.split(","))
                for a in args.arms.split(",")]
        for _, a, _ in todo:
            if a not in ARMS:
                sys.exit(f"alternation_grid: error: unknown arm {a!r} (choose from {', '.join(ARMS)})")
        todo = [t for t in todo if args.force or not os.path.exists(
            os.path.join(log_dir, run_name(args.corpus, *t) + ".eval.log"))]
        threads = max(1, (os.cpu_count() or 2) // args.jobs)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(train_and_score, run_name(args.corpus, w, a, s), data_bin, w, a, s, args,
                                   log_dir, threads) for w, a, s in todo]
            for fut in concurrent.futures.as_completed(futures):
                name = fut.result()
                print(f"finished {name}", flush=True)
                if args.commit:
                    commit_logs(name, log_dir)
    runs = collect(log_dir)
    if runs:
        lines = report(runs, args.out)
        if args.results_md:
            write_results_md(args.results_md, lines, runs, args.out)


if __name__ == "__main__":
    main()
