"""Run a grid of stock fairseq-train / fairseq-eval-lm commands, log by log (shared by the grids).

A run is a ``Run``: a name, the ``fairseq-train`` arguments, and the checkpoints to score with
``fairseq-eval-lm``. ``run_grid`` runs the ones whose logs are missing, ``jobs`` at a time, each
with ``2 // jobs`` threads, and writes ``LOG_DIR/NAME.train.log`` and ``LOG_DIR/NAME.eval-LABEL.log``
(``NAME.eval.log`` for the label ""); the first line of each is the exact command, the last its exit
status and wall time. A run's logs appear only when all its commands succeeded; with ``commit=True``
each finished run's logs are committed at once, so a grid can be completed piece by piece across
sessions.

The runner never parses a number: reading the logs back is ``fairseq_log`` and ``grid_report``.
"""

import concurrent.futures
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SHARED = os.path.join(REPO, "..", "shared", "data")

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
    parser.add_argument("--report-only", action="store_true", help="only rebuild the CSV, tables, plots and RESULTS.md")
    parser.add_argument("--results-md", default=os.path.join(REPO, "docs", "RESULTS.md"),
                        help="page written from both studies' sections ('' to skip)")


def binarize(corpus, text_dir, dest, prog="grid"):
    """fairseq-preprocess --only-source of a corpus' three text files into ``dest`` (once); returns ``dest``
    as an absolute path (the runs start in the repository root). Exits with one line when a corpus file is
    missing, or when ``dest`` holds a dictionary but not every split."""
    dest = os.path.abspath(dest)
    if os.path.isfile(os.path.join(dest, "dict.txt")):
        missing = [f"{split}.{ext}" for split in ("train", "valid", "test") for ext in ("bin", "idx")
                   if not os.path.isfile(os.path.join(dest, f"{split}.{ext}"))]
        if missing:
            sys.exit(f"{prog}: error: {dest} has dict.txt but no {', '.join(missing)}: an unfinished "
                     "binarization? remove the folder to make it again")
    else:
        found = [[os.path.join(text_dir, name.format(split=s)) for s in ("train", "valid", "test")]
                 for name in TEXT_NAMES]
        found = [files for files in found if all(os.path.isfile(f) for f in files)]
        if not found:
            sys.exit(f"{prog}: error: no {corpus} text in {text_dir} (--text-dir): it needs "
                     + " or ".join(name.format(split="{train,valid,test}") for name in TEXT_NAMES))
        train, valid, test = found[0]
        subprocess.run([os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--trainpref", train,
                        "--validpref", valid, "--testpref", test, "--destdir", dest, "--workers", "2"],
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
