"""Reading a grid's logs back into tables, verdicts, plots and docs/RESULTS.md (shared by the grids).

Both grids (``alternation_grid.py``, the MLP grid; ``paper_grid.py``, the paper grid) report only
what their fairseq logs say; this module holds what their reports share:

* ``train_wall``, ``command_of``, ``flag``: the wall time, command and flags a log records;
* ``spread``: mean and half the range over seeds; ``compare`` and ``verdict``: the computed sentence
  "did ARM beat every baseline by more than the seed spread?";
* ``write_csv``: one row per run, floats with 4 decimals;
* ``plot_curves``: validation perplexity against updates or epochs, dotted warm restarts, shaded
  synthetic stretches (matplotlib; skipped with a note if it is not installed);
* ``write_fragment`` and ``write_page``: each grid writes its study as a fragment
  (docs/results/study.md, docs/results/paper/study.md, first line an HTML comment with its summary
  verdict); ``write_page`` assembles docs/RESULTS.md from both, a summary table on top. A study
  with no fragment yet reads "not run yet".
"""

import csv
import math
import os
import re
import statistics

from grid_runner import REPO

DOCS = os.path.join(REPO, "docs")
# (title, setting in one line, fragment written by the grid's report, command that writes it)
STUDIES = [
    ("The MLP grid", "Jaderberg's MLP synthesizer, plain LSTM, SGD, update-counted cycles",
     os.path.join(DOCS, "results", "study.md"), "python examples/alternation_grid.py --report-only"),
    ("The paper grid", "the paper's method scaled: AWD-LSTM small, Adam, coordinate-wise QRNN synthesizer, "
                       "epoch-counted cycles 1,1,2",
     os.path.join(DOCS, "results", "paper", "study.md"), "python examples/paper_grid.py --report-only"),
]
SUMMARY = re.compile(r"<!-- summary: (.*) -->$")


# ---------------------------------------------------------------- what a log records
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
    name = arm[0].upper() + arm[1:]
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


# ---------------------------------------------------------------- docs/RESULTS.md
def demote(lines, levels=1):
    """Markdown headings one level deeper (a study's page becomes a section of RESULTS.md)."""
    return [("#" * levels + line) if line.startswith("#") else line for line in lines]


def written(out, results_md):
    """The files a study's report writes: OUT's CSV, tables and plots, and the page (if any)."""
    files = [os.path.join(out, f) for f in sorted(os.listdir(out)) if f.endswith((".csv", ".md", ".png"))]
    return files + ([results_md] if results_md else [])


def reading(out):
    """The study's hand-written reading of its tables (``OUT/notes.md``; every figure it cites is in the
    tables) as a "Reading" section's lines, or [] when there is none."""
    notes = os.path.join(out, "notes.md")
    if not os.path.exists(notes):
        return []
    with open(notes) as f:
        return ["## Reading", "", f.read().strip(), ""]


def write_fragment(path, summary, lines):
    """A study's section of RESULTS.md: the summary verdict (an HTML comment), then the section."""
    with open(path, "w") as f:
        f.write(f"<!-- summary: {summary} -->\n" + "\n".join(lines).rstrip("\n") + "\n")


def read_fragment(path):
    """(summary verdict, section lines), or (None, None) when the study has written none yet."""
    if not os.path.exists(path):
        return None, None
    with open(path) as f:
        lines = f.read().splitlines()
    m = SUMMARY.match(lines[0]) if lines else None
    return (m.group(1), lines[1:]) if m else (None, lines)


def publish(study, out, summary, md, results_md):
    """Write study number ``study`` (0: the MLP grid, 1: the paper grid)'s section ``md`` (a page of its own,
    headings demoted) to OUT/study.md with its one-line ``summary``, then rebuild ``results_md`` from every
    study's section ('' or None: no page)."""
    fragment = os.path.join(out, "study.md")
    write_fragment(fragment, summary, demote(md))
    if results_md:
        fragments = [s[2] for s in STUDIES]
        fragments[study] = fragment
        write_page(results_md, fragments)


def write_page(path, fragments=None):
    """docs/RESULTS.md: a summary table (one row per study), then each study's section."""
    fragments = fragments or [s[2] for s in STUDIES]
    md = ["# Does alternating synthetic and real gradients beat plain TBPTT?", "",
          "Two studies, each a grid of stock `fairseq-train` and `fairseq-eval-lm` runs. Everything below "
          "is generated from the committed fairseq logs (the first line of each is the exact command) by "
          "`python examples/alternation_grid.py --report-only` or `python examples/paper_grid.py "
          "--report-only`: either rewrites its own study's section (`docs/results/study.md`, "
          "`docs/results/paper/study.md`) and assembles this page from both. No number on this page was "
          "typed by hand, except in the two sections marked hand-written (\"Reading\"), which quote the "
          "tables.", "",
          "| study | setting | verdict (computed from the logs) |", "|---|---|---|"]
    sections = []
    for k, ((title, setting, _, command), fragment) in enumerate(zip(STUDIES, fragments), start=1):
        summary, lines = read_fragment(fragment)
        md.append(f"| {k}. {title} | {setting} | {summary or 'not run yet'} |")
        sections += [f"## {k}. {title}: {setting}", ""]
        sections += lines if lines is not None else [f"Not run yet (no `{os.path.relpath(fragment, REPO)}`; "
                                                     f"`{command}` writes it).", ""]
        sections.append("")
    md += [""] + sections
    with open(path, "w") as f:
        f.write("\n".join(md).rstrip("\n") + "\n")
