"""Summarize and plot one alternating fairseq-train run from its own log (--log-format json).

    python examples/plot_run.py runs/quickstart/train.log --png runs/quickstart/quickstart.png

Prints one row per stretch of constant mode (its updates, the mode, the mean cosine between
synthetic and true gradient ``dni_cos``, the last validation perplexity in it) and the updates
where the mode switched; --png writes validation perplexity and learning rate over updates with
the synthetic stretches shaded (needs matplotlib).

Everything is read from the log's records: the mode of an update from ``dni_synthetic`` (the
fraction of synthetic windows in each log interval, 0 or 1 when the interval holds one mode),
``lr`` and ``dni_cos`` from the same ``train_inner`` records, perplexities from the ``valid`` ones.
"""
import argparse
import json
import re
import sys

RECORD = re.compile(r"\| (train_inner|valid|train) \| (\{.*\})")


def records(path):
    """{'train_inner': [...], 'valid': [...], 'train': [...]}: the json records of a fairseq-train log
    (values as fairseq writes them: numbers as strings)."""
    found = {"train_inner": [], "valid": [], "train": []}
    with open(path) as f:
        for line in f:
            m = RECORD.search(line)
            if m:
                found[m.group(1)].append(json.loads(m.group(2)))
    return found


def cycles(train_inner):
    """Runs of constant mode: [{'first': u, 'last': u, 'mode': 'synthetic'|'real', 'rows': [...]}].

    A log interval (previous, current] with 0 < dni_synthetic < 1 holds one switch; its position
    follows from the fraction (round(f * interval) updates of the interval's first mode)."""
    runs, previous = [], 0
    for row in train_inner:
        current, frac = int(row["num_updates"]), float(row["dni_synthetic"])
        n = current - previous
        if frac in (0.0, 1.0):
            pieces = [("synthetic" if frac else "real", current)]
        else:  # one switch inside: the interval starts in the mode of the run before it
            if not runs:
                raise ValueError("the mode switched inside the first log interval: use a --log-interval "
                                 "that divides the first cycle")
            first = runs[-1]["mode"]
            in_first = round(frac * n) if first == "synthetic" else n - round(frac * n)
            pieces = [(first, previous + in_first), ("real" if first == "synthetic" else "synthetic", current)]
        for mode, last in pieces:
            if runs and runs[-1]["mode"] == mode:
                runs[-1]["last"] = last
            else:
                runs.append({"first": (runs[-1]["last"] if runs else 0) + 1, "last": last, "mode": mode, "rows": []})
        runs[-1]["rows"].append(row)
        previous = current
    return runs


def summary(log):
    """The printed report (a list of lines) and what the plot needs."""
    rows = records(log)
    runs = cycles(rows["train_inner"])
    valid = [(int(r["valid_num_updates"]), float(r["valid_ppl"])) for r in rows["valid"]]
    lines = [f"{'updates':>11}  {'mode':<9}  {'dni_cos':>7}  {'valid ppl':>9}"]
    for run in runs:
        cos = [float(r["dni_cos"]) for r in run["rows"] if "dni_cos" in r]
        seen = [p for u, p in valid if run["first"] <= u <= run["last"]]
        lines.append(f"{run['first']:>5}-{run['last']:<5}  {run['mode']:<9}  "
                     f"{(sum(cos) / len(cos)) if cos else float('nan'):>7.3f}  "
                     f"{seen[-1] if seen else float('nan'):>9.2f}")
    switches = [f"{run['first']} ({run['mode']})" for run in runs[1:]]
    lines.append("mode switches at updates " + (", ".join(switches) if switches else "(none)")
                 + ": read from the log's dni_synthetic")
    return lines, runs, valid, rows["train_inner"]


def plot(png, runs, valid, train_inner, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5), height_ratios=(2, 1))
    for ax in (top, bottom):
        for run in runs:
            if run["mode"] == "synthetic":
                ax.axvspan(run["first"] - 1, run["last"], color="tab:green", alpha=0.12, linewidth=0)
    top.plot(*zip(*valid), "o-", color="tab:blue", markersize=3)
    top.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    top.yaxis.set_major_formatter(plain)
    top.yaxis.set_minor_formatter(plain)
    top.set_ylabel("validation perplexity")
    top.set_title(title, fontsize=9)
    # a record at update u logs the learning rate set for update u + 1 (the last one never ran)
    bottom.plot([int(r["num_updates"]) + 1 for r in train_inner[:-1]], [float(r["lr"]) for r in train_inner[:-1]],
                color="tab:red")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("update (shaded: synthetic gradients)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="fairseq-train log written with --log-format json")
    p.add_argument("--png", help="write the plot here")
    p.add_argument("--title", default="", help="plot title")
    args = p.parse_args(argv)
    lines, runs, valid, train_inner = summary(args.log)
    if not runs:
        sys.exit(f"plot_run: {args.log} holds no train_inner records (was it written with --log-format json?)")
    print("\n".join(lines))
    if args.png:
        plot(args.png, runs, valid, train_inner, args.title)


if __name__ == "__main__":
    main()
