"""What the studies share: binarizing a corpus, running stock fairseq commands log by log, reading
fairseq logs back, and writing a study's tables, plots and page from them.

Every study under ``studies/`` reports only what its fairseq logs say (the first line of each log
is the exact command); this module is the one place that

* binarizes a corpus (``binarize``: ``fairseq-preprocess --only-source`` of its three text files);
* reads fairseq logs back (``records``: fairseq-train's json records; ``eval_perplexity``:
  fairseq-eval-lm's; ``train_wall``, ``command_of``, ``flag``: what a log's own lines record);
* runs a grid of ``fairseq-train`` / ``fairseq-eval-lm`` commands (``Run``, ``run_grid``: logs
  ``LOG_DIR/NAME.train.log`` and ``NAME.eval-LABEL.log``, ``NAME.eval.log`` for the label "";
  a run's logs appear only when all its commands succeeded; with ``commit=True`` each finished run's
  logs are committed at once, so a grid can be completed piece by piece across sessions);
* turns a grid's runs into numbers and sentences (``spread``: mean and half the range over seeds;
  ``compare``, ``verdict``, ``lowest``: "did ARM beat every baseline by more than the seed spread?"),
  a CSV (``write_csv``), plots (``plot_curves``) and the study's page (``write_page``: OUT/README.md,
  its computed verdict on top, the hand-written ``OUT/notes.md`` as its "Reading").
"""

import concurrent.futures
import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

STUDIES = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(STUDIES)
BIN = os.path.dirname(sys.executable)
SHARED = os.path.join(REPO, "..", "shared", "data")


# ---------------------------------------------------------------- corpora and grids of runs
CORPORA = {  # name -> default text dir (this machine's copies)
    "ptb": os.path.join(SHARED, "ptb"),
    "wikitext2": os.path.join(SHARED, "wikitext-2"),
}
# the file names a text dir may use, as the recipes accept them (recipes/README.md, --data-dir)
TEXT_NAMES = ("{split}.txt", "wiki.{split}.tokens", "ptb.{split}.txt")
# where a clone gets the text, for the reports' "Reproduce" lines
TEXT_SOURCES = ("the corpus text comes from `--text-dir`, default `../shared/data/<corpus>` (this machine's copies); "
                "after the quickstart, `--text-dir runs/quickstart/text` holds PTB, and after "
                "`bash recipes/wikitext2.sh --cpu --size smoke`, `--text-dir runs/recipes/wikitext2/download/wikitext-2` "
                "holds WikiText-2")


@dataclass
class Run:
    """One grid cell: ``fairseq-train DATA --save-dir WORK/NAME <train_args>``, then one
    ``fairseq-eval-lm DATA --path WORK/NAME/<checkpoint> <eval_args>`` per ``evals`` entry
    (label -> checkpoint file name, e.g. {"last": "checkpoint_last.pt"}). The label names the log,
    ``NAME.eval-LABEL.log``; the label "" (or None) names it ``NAME.eval.log`` (one checkpoint per run,
    the MLP grid's logs)."""

    name: str
    data_bin: str
    train_args: list
    eval_args: list
    evals: dict = field(default_factory=lambda: {"last": "checkpoint_last.pt"})

    def log_paths(self, log_dir):
        return [os.path.join(log_dir, f"{self.name}.train.log")] + [
            os.path.join(log_dir, eval_log_name(self.name, label)) for label in self.evals]

    def done(self, log_dir):
        return all(os.path.exists(p) for p in self.log_paths(log_dir))


def eval_log_name(name, label):
    """``NAME.eval-LABEL.log``, or ``NAME.eval.log`` for the label "" or None."""
    return f"{name}.eval-{label}.log" if label else f"{name}.eval.log"


def add_grid_arguments(parser, out, work_dir):
    """The options every grid takes: the corpus and where it is, where logs and checkpoints go, how many runs
    at once, committing, rerunning and report-only. Grid-specific options (arms, seeds, sizes) stay with it."""
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="ptb")
    parser.add_argument("--text-dir", help="folder with the corpus' text, as {train,valid,test}.txt, "
                        "wiki.{train,valid,test}.tokens or ptb.{train,valid,test}.txt (default: the repository's "
                        "../shared/data/<corpus>)")
    parser.add_argument("--data-bin", help="binarized corpus (default runs/<corpus>-bin); made from --text-dir "
                        "with fairseq-preprocess when it has no dict.txt yet")
    parser.add_argument("--out", default=out, help="results; logs in OUT/logs")
    parser.add_argument("--work-dir", default=work_dir, help="checkpoints (not committed)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, help="threads per run (default: the cores shared out between the jobs, "
                        "at least 1)")
    parser.add_argument("--commit", action="store_true", help="git-commit each run's logs as soon as it finishes")
    parser.add_argument("--force", action="store_true", help="rerun runs whose logs exist")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the CSV, tables, plots and the page "
                        "(OUT/README.md) from the logs")


def binarize(text_dir, dest, corpus="corpus", prog="studies", workers=2):
    """``fairseq-preprocess --only-source`` of a corpus' three text files in ``text_dir`` (named as in
    ``TEXT_NAMES``) into ``dest``, once: a folder that already holds a dictionary and every split is
    reused. Returns ``dest`` as an absolute path (the runs start in the repository root). Exits with
    one line naming ``corpus`` when a text file is missing, or when ``dest`` holds a dictionary but not
    every split."""
    dest = os.path.abspath(dest)
    if os.path.isfile(os.path.join(dest, "dict.txt")):
        missing = [f"{split}.{ext}" for split in ("train", "valid", "test") for ext in ("bin", "idx")
                   if not os.path.isfile(os.path.join(dest, f"{split}.{ext}"))]
        if missing:
            sys.exit(f"{prog}: error: {dest} has dict.txt but no {', '.join(missing)}: an unfinished "
                     "binarization? remove the folder to make it again")
        return dest
    found = [[os.path.join(text_dir, name.format(split=s)) for s in ("train", "valid", "test")]
             for name in TEXT_NAMES]
    found = [files for files in found if all(os.path.isfile(f) for f in files)]
    if not found:
        sys.exit(f"{prog}: error: no {corpus} text in {text_dir} (--text-dir): it needs "
                 + " or ".join(name.format(split="{train,valid,test}") for name in TEXT_NAMES))
    train, valid, test = found[0]
    subprocess.run([os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--trainpref", train,
                    "--validpref", valid, "--testpref", test, "--destdir", dest, "--workers", str(workers)],
                   check=True, stdout=subprocess.DEVNULL)
    return dest


def train_tokens(data_bin, prog="grid"):
    """Tokens in the binarized train split (end-of-sentence symbols included), read from the header of
    fairseq's mmap index (magic, version, dtype code, item count, doc count, then int32 sizes), so the
    runner needs no fairseq import."""
    import numpy as np

    with open(os.path.join(data_bin, "train.idx"), "rb") as f:
        if f.read(9) != b"MMIDIDX\x00\x00":
            sys.exit(f"{prog}: error: {data_bin}/train.idx is not a fairseq mmap index")
        f.read(8 + 1)
        count = int(np.frombuffer(f.read(8), dtype="<i8")[0])
        f.read(8)
        return int(np.frombuffer(f.read(4 * count), dtype="<i4").sum())


def updates_per_epoch(data_bin, streams, window):
    """Windows per epoch of the dni_language_modeling task (fixed windows): ceil(ceil(N / B) / T)."""
    return math.ceil(math.ceil(train_tokens(data_bin) / streams) / window)


def _call(cmd, path, env):
    start = time.time()
    with open(path, "w") as log:
        log.write("# " + " ".join([f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}", os.path.basename(cmd[0])]
                                  + cmd[1:]) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
        log.write(f"# exit {rc} after {time.time() - start:.0f} s\n")
    return rc


def train_and_score(run, log_dir, work_dir, threads):
    """Train from scratch, then score each checkpoint; raises RuntimeError naming the failed log."""
    save_dir = os.path.join(work_dir, run.name)
    shutil.rmtree(save_dir, ignore_errors=True)  # a fresh run: fairseq would resume from an old checkpoint_last.pt
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmds = [[os.path.join(BIN, "fairseq-train"), run.data_bin, *run.train_args, "--save-dir", save_dir]]
    cmds += [[os.path.join(BIN, "fairseq-eval-lm"), run.data_bin, *run.eval_args,
              "--path", os.path.join(save_dir, ckpt)] for ckpt in run.evals.values()]
    finals = run.log_paths(log_dir)
    for cmd, final in zip(cmds, finals):
        rc = _call(cmd, final + ".tmp", env)
        if rc != 0:
            raise RuntimeError(f"{run.name}: exit {rc}; see {final}.tmp")
    for final in finals:  # a run's logs appear only when every command succeeded
        os.replace(final + ".tmp", final)
    return run


def commit_logs(run, log_dir, message="Grid run", also=()):
    """Commit one run's logs (and the files ``also``, the report rewritten from them); retried, and only a
    warning if git stays busy (the logs stay on disk)."""
    files = [*run.log_paths(log_dir), *also]
    for attempt in range(5):
        add = subprocess.run(["git", "add", "-f", *files], cwd=REPO, capture_output=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", f"{message} {run.name}: logs", "--", *files], cwd=REPO,
            capture_output=True).returncode == 0
        if done:
            return
        time.sleep(3 + 3 * attempt)
    print(f"warning: could not commit the logs of {run.name}; they are in {log_dir}", flush=True)


def run_grid(runs, log_dir, work_dir, jobs=2, commit=False, force=False, message="Grid run", threads=None,
             report=None):
    """Run every ``Run`` whose logs are missing (all of them with ``force``), ``jobs`` at a time, in order,
    each with ``threads`` threads (default: the cores shared out between the jobs). With ``commit``, each
    finished run's logs are committed at once, together with the files ``report()`` returns, having
    rewritten them from the logs (so a grid stopped half-way leaves its tables in step with its logs)."""
    os.makedirs(log_dir, exist_ok=True)
    todo = [r for r in runs if force or not r.done(log_dir)]
    threads = threads or max(1, (os.cpu_count() or 2) // jobs)
    print(f"{len(todo)} of {len(runs)} runs to do, {jobs} at a time with {threads} thread(s) each", flush=True)
    failed = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(train_and_score, r, log_dir, work_dir, threads): r for r in todo}
        for fut in concurrent.futures.as_completed(futures):
            try:
                run = fut.result()
            except RuntimeError as e:
                print(f"failed: {e}", flush=True)
                failed.append(futures[fut].name)
                continue
            print(f"finished {run.name}", flush=True)
            if commit:
                commit_logs(run, log_dir, message, report() if report else ())
    if failed:
        sys.exit(f"grid: error: {len(failed)} run(s) failed: {', '.join(failed)}")


# ---------------------------------------------------------------- reading fairseq logs
RECORD = re.compile(r"\| (train_inner|valid|train) \| (\{.*\})")


def records(path):
    """{'train_inner': [...], 'valid': [...], 'train': [...]}: the json records of a fairseq-train log."""
    found = {"train_inner": [], "valid": [], "train": []}
    with open(path) as f:
        for line in f:
            m = RECORD.search(line)
            if m:
                found[m.group(1)].append(json.loads(m.group(2)))
    return found


def eval_perplexity(path):
    """The test perplexity of a fairseq-eval-lm log (its 'Loss (base 2): ..., Perplexity: ...' line)."""
    with open(path) as f:
        m = re.search(r"Loss \(base 2\): [0-9.]+, Perplexity: ([0-9.]+)", f.read())
    if not m:
        raise ValueError(f"{path}: no 'Perplexity:' line (did fairseq-eval-lm finish?)")
    return float(m.group(1))


def train_wall(path):
    """Seconds of the command (its log's last line, ``# exit 0 after N s``); None if it did not finish."""
    wall = None
    with open(path) as f:
        for line in f:
            m = re.match(r"# exit 0 after (\d+) s", line)
            if m:
                wall = int(m.group(1))
    return wall


def command_words(path):
    """The command a log starts with (its first line, ``# OMP_NUM_THREADS=1 fairseq-train ...``), as words."""
    with open(path) as f:
        return f.readline()[2:].split()


def flag(path, name, default=None):
    """The value given to ``name`` in the command a log starts with (``default`` if absent)."""
    words = command_words(path)
    return words[words.index(name) + 1] if name in words else default


def command_of(path):
    """The command a log starts with, its paths relative to the checkout the run was made in (the
    folder above its ``--user-dir``), so that it runs from a clone's root."""
    words = command_words(path)
    user_dir = words[words.index("--user-dir") + 1] if "--user-dir" in words else None
    root = os.path.dirname(user_dir.rstrip("/")) if user_dir and os.path.isabs(user_dir) else REPO
    return " ".join(os.path.relpath(w, root) if os.path.isabs(w) else w for w in words)


# ---------------------------------------------------------------- numbers and verdicts
def spread(values):
    """(mean, half the range); the half-range is nan for a single value."""
    mean = statistics.fmean(values)
    return mean, (max(values) - min(values)) / 2 if len(values) > 1 else float("nan")


def mean_pm(values):
    """``mean ± half-range`` with 2 decimals (the mean alone for one seed)."""
    mean, half = spread(values)
    return f"{mean:.2f}" + (f" ± {half:.2f}" if not math.isnan(half) else "")


def comparisons(arms, arm, baselines, key="test_ppl"):
    """``(kind, phrase)`` per baseline present: is ``arm``'s mean ``key`` lower than each baseline's by
    more than the two arms' seed half-ranges together? ``kind``: "better", "worse" or "within" (the
    spread), "lower", "higher" or "equal" (one seed: no spread), "no seed" (none in common).
    ``arms``: arm -> runs. Where runs carry a ``seed``, each pair of arms is compared on the seeds
    both have (a mean over other seeds would compare seeds, not arms)."""
    out = []
    for base in [a for a in baselines if a in arms]:
        ours, theirs = arms[arm], arms[base]
        note = ""
        if all("seed" in r for r in ours + theirs):
            common = sorted({r["seed"] for r in ours} & {r["seed"] for r in theirs})
            if not common:
                out.append(("no seed", f"no seed in common with {base} yet"))
                continue
            if len(common) < max(len(ours), len(theirs)):
                note = f", on seed{'s' if len(common) > 1 else ''} {', '.join(map(str, common))} only"
            ours = [r for r in ours if r["seed"] in common]
            theirs = [r for r in theirs if r["seed"] in common]
        alt_mean, alt_half = spread([r[key] for r in ours])
        mean, half = spread([r[key] for r in theirs])
        diff = alt_mean - mean
        margin = alt_half + half
        if math.isnan(margin) and round(diff, 2) == 0:
            out.append(("equal", f"equal to {base} at the 2 decimals eval-lm prints (one seed: no spread to "
                                 f"compare with{note})"))
        elif math.isnan(margin):
            word = "lower" if diff < 0 else "higher"
            out.append((word, f"{word} than {base} by {abs(diff):.2f} (one seed: no spread to compare with{note})"))
        elif abs(diff) <= margin:
            out.append(("within", f"within the seed spread of {base} ({diff:+.2f}, spread {margin:.2f}{note})"))
        else:
            word = "better" if diff < 0 else "worse"
            out.append((word, f"{word} than {base} ({diff:+.2f}, spread {margin:.2f}{note})"))
    return out


def compare(arms, arm, baselines, key="test_ppl"):
    """(beats every baseline?, one phrase per baseline present), from ``comparisons``. One seed gives no
    spread: "lower", never "beat"."""
    found = comparisons(arms, arm, baselines, key)
    return bool(found) and all(kind == "better" for kind, _ in found), [phrase for _, phrase in found]


def verdict(arms, arm, baselines, key="test_ppl", lead=""):
    """One computed sentence: did ``arm`` beat every baseline (``compare``)?"""
    if arm not in arms:
        return f"(no {arm} arm in this setting yet)"
    beats_all, parts = compare(arms, arm, baselines, key)
    name = arm if lead else arm[0].upper() + arm[1:]   # an arm's name stays as written after a lead
    return (f"{lead}**{name} {'beat' if beats_all else 'did not beat'} every baseline here** (by more than "
            "the seed spread): "
            + "; ".join(parts) + ".")


def lowest_arms(arms, key="test_ppl"):
    """The arms with the lowest mean ``key`` at the 2 decimals the tables print (ties kept, in ``arms``'
    order), among the arms with the most runs (a mean over fewer seeds is not comparable while a grid
    is incomplete)."""
    most = max(len(runs) for runs in arms.values())
    means = {a: round(spread([r[key] for r in rs])[0], 2) for a, rs in arms.items() if len(rs) == most}
    low = min(means.values())
    return [a for a, m in means.items() if m == low]


def lowest(arms, key="test_ppl"):
    """``(arm, margin)``: the first of ``lowest_arms`` (naming the arms tied with it) and how far ahead
    it is of the others, in words: "one seed: no spread", "by more than the seed spread" (than every
    other arm, ``comparisons`` arm by arm), or which arms it is not clearly ahead of ("within the
    seed spread of A, B"; "lower on one common seed only (no spread) than C"; "higher on the seeds
    both ran than D"; "equal on the one seed both ran to E"; "no seed in common with F")."""
    tied = lowest_arms(arms, key)
    best = tied[0] + (f", tied with {' and '.join(tied[1:])}" if len(tied) > 1 else "")
    if max(len(rs) for rs in arms.values()) == 1:
        return best, "one seed: no spread"
    others = [a for a in arms if a not in tied]
    kinds = {a: kind for a, (kind, _) in zip(others, comparisons(arms, tied[0], others, key))}
    said = []
    for group, phrase in ((("within",), "within the seed spread of "),
                          (("lower",), "lower on one common seed only (no spread) than "),
                          (("worse", "higher"), "higher on the seeds both ran than "),
                          (("equal",), "equal on the one seed both ran to "),
                          (("no seed",), "no seed in common with ")):
        names = [a for a, kind in kinds.items() if kind in group]
        said += [phrase + ", ".join(names)] if names else []
    return best, "; ".join(said) or "by more than the seed spread"


def write_csv(path, fields, rows):
    """One row per run; floats with 4 decimals, nan and None as empty cells."""
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.4f}" if isinstance(v, float) else v

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow([cell(r[k]) for k in fields])


# ---------------------------------------------------------------- plots
def plot_curves(path, curves, restarts=(), spans=(), xlabel="update", title="", ylim=(0.95, 2.2), xlim=None,
                legend_loc="best"):
    """Validation perplexity (log scale) of each curve: dict(x, y, color, label, seed_index);
    ``restarts``: x of the warm restarts (dotted); ``spans``: dict(x0, x1, color, alpha, ymin, ymax)
    shaded (synthetic stretches). The y range is [lowest * ylim[0], lowest * ylim[1]]; ``xlim``: (lo, hi)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plots)")
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c in curves:
        first = c.get("seed_index", 0) == 0
        ax.plot(c["x"], c["y"], color=c["color"], alpha=1.0 if first else 0.5,
                linestyle="-" if first else "--", label=c["label"])
    for x in restarts:
        ax.axvline(x, color="k", linewidth=0.6, linestyle=":")
    for s in spans:
        ax.axvspan(s["x0"], s["x1"], ymin=s.get("ymin", 0), ymax=s.get("ymax", 1), color=s["color"],
                   alpha=s.get("alpha", 0.08), linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation perplexity")
    ax.set_title(title, fontsize=9)
    lo = min(min(c["y"]) for c in curves)
    ax.set_ylim(lo * ylim[0], lo * ylim[1])
    if xlim:
        ax.set_xlim(*xlim)
    ax.legend(fontsize=7, ncol=2, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- the study's page
def reading(out):
    """The study's hand-written reading of its tables (``OUT/notes.md``; every figure it cites is in the
    tables) as a "Reading" section's lines, or [] when there is none."""
    notes = os.path.join(out, "notes.md")
    if not os.path.exists(notes):
        return []
    with open(notes) as f:
        return ["## Reading", "", f.read().strip(), ""]


def replace_block(page, marker, text):
    """Rewrite the block of ``page`` between ``<!-- marker -->`` and ``<!-- /marker -->`` with ``text``;
    the prose around it is the page's own. Nothing happens when ``page`` does not exist."""
    if not os.path.exists(page):
        return
    with open(page) as f:
        doc = f.read()
    doc = re.sub(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", lambda m: m.group(1) + text + m.group(2), doc,
                 flags=re.S)
    with open(page, "w") as f:
        f.write(doc)


def write_page(out, title, command, summary, md):
    """The study's page, ``OUT/README.md``: ``title``, how it is made (``command``), the computed
    ``summary`` verdict, then the lines ``md`` (its sections, tables and plots)."""
    head = [f"# {title}", "",
            f"Generated from the committed fairseq logs (the first line of each is the exact command) by "
            f"`{command}`. No number on this page was typed by hand, except in the section marked "
            "hand-written (\"Reading\"), which quotes the tables.", "",
            f"**Verdict** (computed from the logs): {summary}.", ""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(head + md).rstrip("\n") + "\n")


def written(out):
    """The files a study's report writes: OUT's CSV, tables, plots and page."""
    return [os.path.join(out, f) for f in sorted(os.listdir(out)) if f.endswith((".csv", ".md", ".png"))]
