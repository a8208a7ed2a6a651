"""Does alternation beat BPTT *as the seed paper ran it*? The paper grid, scaled to this machine.

Shang & Zhang (arXiv 1902.10630; code ``parap1uie-s/alternate_sg``) train AWD-LSTM with Adam 1e-3,
bptt 200 with AWD's variable windows, the paper's clip, its QRNN synthesizer (``--sgtype QRNN``) and
SGDR restarts counted in epochs: cycles of 5, 5, 10, 20, ... epochs against one long cycle, the
first epoch real (``--whenswitch 2``) where the paper does so. Scaled down in proportion to a CPU:
``dni_awd_lstm_lm_small`` (3 layers 256/256/128, tied 128-d embedding), 4 epochs, cycles of
1, 1, 2 epochs (the paper's 5, 5, 10 divided by 5) against one 4-epoch cycle, windows of 70 (AWD-LSTM's
own --bptt; the study's page, 'Window', says why not the paper's 200), the rate annealing
within epochs (the paper holds it for a whole epoch: over 5-epoch cycles that still anneals, over
1-epoch cycles it would not). Two synthesizers stand for the paper's (docs/synthesizers.md): ``scan``,
its ``--sgtype QRNN`` as its code computes it (one QRNN scan across the flattened state of all
streams, the paper's initialisation), and ``coordinatewise`` with the QRNN cell (one sequence per
coordinate: what its code computes with ``--sgtype GRU/LSTM``, here with a QRNN cell). Arms:

  bptt-one-cycle            real gradients, one 4-epoch cosine cycle (no synthesizer)
  bptt-restarts             real gradients, cycles 1, 1, 2 (no synthesizer)
  dni-restarts              synthetic gradients, coordinate-wise QRNN synthesizer, cycles 1, 1, 2,
                            epoch 1 real (the paper's --use_sg --whenswitch 2)
  alternating-restarts      the mode switching at every restart, coordinate-wise QRNN synthesizer
                            (PTB: real first, as the paper's --mixture; WikiText-2: epoch 1 real and
                            the first cycle's rest synthetic, as its --mixture --whenswitch 2)
  alternating-restarts-mlp  the same with Jaderberg et al.'s MLP synthesizer
  dni-restarts-scan         dni-restarts with the scan synthesizer (the paper's --sgtype QRNN)
  alternating-restarts-scan alternating-restarts with the scan synthesizer
  qrnn-bptt-restarts        bptt-restarts on the paper's base model at CPU size (dni_awd_qrnn_lm_small)
  qrnn-alternating-restarts-scan
                            alternating-restarts-scan on dni_awd_qrnn_lm_small: the paper's arm as it ran it

Every run ends at the bottom of its last cycle (epoch 4). Each run is a stock ``fairseq-train``
followed by ``fairseq-eval-lm`` on the test split (one stream of 200-token windows, as the paper
scores) of the last checkpoint and of the best-validation checkpoint (validated at every epoch end;
mid-epoch validations only draw the curves). Logs land in studies/paper_grid/logs; ``--commit``
commits each run's logs as it finishes, and runs whose logs exist are skipped.

The report (after running, or alone with ``--report-only``) reads those logs only and writes, in
studies/paper_grid: results.csv (one row per run: test perplexity of the last and of the
best-validation checkpoint, final and best epoch-end validation, updates, epochs, the epochs that ran
synthetic, the synthesizer's cosine first and last, train wall time), cycles.csv (one row per DNI run
and cosine cycle: its mode, the synthesizer's cosine with its target and its prediction's and target's
norms, from fairseq's epoch records), table.md (per corpus: each arm's mean ± half-range over seeds,
the per-cycle table and computed verdicts: does each alternating arm beat both BPTT arms and the DNI
arm with its synthesizer by more than the seed spread, and does scan differ from coordinate-wise?),
valid_<corpus>.png (validation perplexity against epochs, warm restarts dotted, each arm's synthetic
epochs shaded, all read from the logs) and README.md, the study's page (``studies.common.write_page``).
A planned run without logs counts as missing in the tables' headings. With no finished run it says
"not run yet".

    python -m studies.paper_grid --corpus ptb --seeds 1,2 --commit
    python -m studies.paper_grid --corpus wikitext2 --seeds 1 --commit   # its four arms (WIKITEXT2_ARMS)
    python -m studies.paper_grid --report-only
"""

import argparse
import os
import re
import sys

from studies import common
from studies.common import REPO, Run, spread

ARMS = ["bptt-one-cycle", "bptt-restarts", "dni-restarts", "alternating-restarts", "alternating-restarts-mlp",
        "dni-restarts-scan", "alternating-restarts-scan", "qrnn-bptt-restarts", "qrnn-alternating-restarts-scan"]
WIKITEXT2_ARMS = ["bptt-one-cycle", "bptt-restarts", "alternating-restarts", "alternating-restarts-scan"]
EPOCHS = 4
PERIODS = {"one-cycle": "4", "restarts": "1,1,2"}   # epochs per cosine cycle
PAPER_PERIODS = {"one-cycle": "160,160", "restarts": "5,5,10,20,40,80,160"}   # the paper's (alternate_sg README)
CLIP = {"ptb": 0.2, "wikitext2": 0.25}   # the paper's --clip per corpus
STREAMS = 20        # the paper's --batch_size
# Training windows: AWD-LSTM's own --bptt 70 (variable lengths), not the paper's 200. Over 4 epochs a window
# of 200 leaves 950 updates and the model at test perplexity 412 (bptt arms, seed 1: studies/paper_grid/window200),
# too early in training to compare schedules; 70 gives 2.9 times the updates for the same tokens.
WINDOW = 70
EVAL_WINDOW = 200   # the paper scores the test set as one stream of 200-token windows
OUT = os.path.dirname(os.path.abspath(__file__))
SEEDS = {"ptb": [1, 2], "wikitext2": [1]}   # the grid as planned (its size in the tables' headings)
CORPUS_NAMES = {"ptb": "PTB", "wikitext2": "WikiText-2"}
ALTERNATING = ["alternating-restarts", "alternating-restarts-mlp", "alternating-restarts-scan",
               "qrnn-alternating-restarts-scan"]
# the base model of an arm: the "qrnn-" arms train the paper's QRNN at CPU size, the others AWD-LSTM at CPU size
ARCH = {"lstm": "dni_awd_lstm_lm_small", "qrnn": "dni_awd_qrnn_lm_small"}
# what each alternating arm must beat (by more than the seed spread): both BPTT schedules and DNI with its
# synthesizer (the MLP arm has no DNI twin: the coordinate-wise one)
BASELINES = {"alternating-restarts": ["bptt-one-cycle", "bptt-restarts", "dni-restarts"],
             "alternating-restarts-mlp": ["bptt-one-cycle", "bptt-restarts", "dni-restarts"],
             "alternating-restarts-scan": ["bptt-one-cycle", "bptt-restarts", "dni-restarts-scan"],
             "qrnn-alternating-restarts-scan": ["qrnn-bptt-restarts"]}   # the QRNN rows: its BPTT twin
# each scan arm and the coordinate-wise arm it re-runs (everything else equal)
COORDINATEWISE_TWIN = {"dni-restarts-scan": "dni-restarts", "alternating-restarts-scan": "alternating-restarts"}

# the synthesizers, 50 units and 1 layer as the paper's --sgtype QRNN --sg_hidden_num 50 --sg_nlayers 1 (input
# noise N(1, 0.5) by default): coordinate-wise with the QRNN cell, one sequence per coordinate (what its code
# computes with --sgtype GRU/LSTM, here with that cell)
COORDINATEWISE = ["--dni-synthesizer", "coordinatewise", "--dni-synthesizer-cell", "qrnn",
                  "--dni-synthesizer-hidden", "50", "--dni-synthesizer-layers", "1"]
# the paper's synthesizer as its code computes it: one scan across the flattened state, the paper's init
SCAN = ["--dni-synthesizer", "scan", "--dni-synthesizer-hidden", "50", "--dni-synthesizer-layers", "1",
        "--dni-synthesizer-init", "paper"]
MLP = ["--dni-synthesizer", "mlp"]   # Jaderberg et al.'s, its defaults; everything else as above
# every DNI arm: the paper's own Adam 1e-3 for the synthesizer with weight decay 1.2e-6, synthetic gradient x 0.1
DNI = ["--criterion", "dni_cross_entropy", "--dni-scale", "0.1", "--dni-lr", "0.001", "--dni-weight-decay", "1.2e-6"]


def alternate(corpus):
    if corpus == "wikitext2":
        return ["--mode-schedule", "alternate", "--first-mode", "synthetic", "--real-first-epochs", "1"]
    return ["--mode-schedule", "alternate", "--first-mode", "real"]


def base(arm):
    """The arm's base model: "qrnn" for the "qrnn-" arms, else "lstm"."""
    return "qrnn" if arm.startswith("qrnn-") else "lstm"


def arm_flags(arm, corpus):
    """Criterion, synthesizer, schedule and mode of an arm: with the base model (``base``), the only things
    that differ between arms. A "qrnn-" arm has the flags of the LSTM arm it is named after."""
    arm = arm.removeprefix("qrnn-")
    cycle = "one-cycle" if arm.endswith("one-cycle") else "restarts"
    # the rate anneals within epochs (no --lr-step-per-epoch): the paper holds it for a whole epoch, which
    # over its 5-epoch cycles still anneals (1, .90, .65, .35, .10), but would leave our 1-epoch cycles flat
    schedule = ["--lr-scheduler", "cosine_alternating", "--min-lr", "0", "--lr-period-epochs", PERIODS[cycle]]
    if arm.startswith("bptt"):
        return ["--criterion", "lm_cross_entropy", *schedule]
    synth = MLP if arm.endswith("-mlp") else SCAN if arm.endswith("-scan") else COORDINATEWISE
    if arm.startswith("dni-restarts"):
        return [*DNI, *synth, *schedule, "--mode-schedule", "synthetic", "--real-first-epochs", "1"]
    return [*DNI, *synth, *schedule, *alternate(corpus)]


def train_args(corpus, arm, seed, data_bin):
    half_epoch = max(1, common.updates_per_epoch(data_bin, STREAMS, WINDOW) // 2)
    return ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling", "--cpu",
            "--arch", ARCH[base(arm)], "--batch-size", str(STREAMS), "--batch-size-valid", "10",
            "--tokens-per-sample", str(WINDOW), "--variable-window", "--alpha", "2", "--beta", "1",
            "--optimizer", "alternating", "--base-optimizer", "adam", "--lr", "0.001", "--weight-decay", "1.2e-6",
            "--clip-norm", str(CLIP[corpus]), *arm_flags(arm, corpus), "--max-epoch", str(EPOCHS),
            "--seed", str(seed), "--validate-interval-updates", str(half_epoch), "--no-epoch-checkpoints",
            "--num-workers", "0", "--log-format", "json", "--log-interval", "10", "--no-progress-bar"]


EVAL_ARGS = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling", "--cpu",
             "--gen-subset", "test", "--batch-size", "1", "--tokens-per-sample", str(EVAL_WINDOW), "--num-workers", "0"]


def runs_for(corpus, seeds, arms, data_bin):
    return [Run(f"{corpus}-{arm}-s{seed}", data_bin, train_args(corpus, arm, seed, data_bin), EVAL_ARGS,
                {"last": "checkpoint_last.pt", "best": "checkpoint_best.pt"})
            for seed in seeds for arm in arms]


def planned_arms(corpus):
    return ARMS if corpus == "ptb" else WIKITEXT2_ARMS


# ---------------------------------------------------------------- reading the logs back
def epoch_x(valid, ends):
    """Epochs done at each validation: epoch e (1-based) ends at update ends[e-1] (the epoch records'
    train_num_updates), so a validation at update u of epoch e is at (e-1) + (u - start) / (end - start)."""
    xs = []
    for r in valid:
        e, u = int(r["epoch"]), int(r["valid_num_updates"])
        start = ends[e - 2] if e >= 2 and len(ends) >= e - 1 else 0
        end = ends[e - 1] if len(ends) >= e else max(u, start + 1)
        xs.append(e - 1 + (u - start) / max(1, end - start))
    return xs


def epoch_mode(record):
    """An epoch record's mode: synthetic when most of its updates were (the epoch mean of the 0/1 flag
    ``dni_synthetic``); real without the flag (BPTT arms have no synthesizer)."""
    return "synthetic" if float(record.get("train_dni_synthetic", 0)) > 0.5 else "real"


def cycle_means(epochs, periods):
    """The synthesizer per cosine cycle: one dict per cycle whose epochs all finished, with ``cycle``
    (1-based), ``epochs`` ("1", "3-4"), ``mode`` ("real", "synthetic", or "real then synthetic" for a
    mixed cycle), ``dni_cos`` (its cosine with the target), ``dni_pred_norm``, ``dni_target_norm`` and
    ``dni_pred_over_target`` (their ratio: of the means, not a mean of ratios).

    ``epochs``: fairseq's epoch records (the train log's 'train' records, one per finished epoch), each
    the epoch's mean over its regressions (``reduce_metrics``' weights); ``periods``: epochs per cycle
    (the run's --lr-period-epochs). A cycle of several epochs is their mean weighted by each epoch's
    updates (``train_num_updates`` differences): fairseq's own weight is the regressions, one per update
    but the first one or two of each epoch, so the two differ by under 0.3% of an epoch's weight at
    this grid's 680-1,540 updates per epoch. [] for a run without a synthesizer (no ``train_dni_cos``)."""
    if not epochs or "train_dni_cos" not in epochs[0]:
        return []
    ends = [int(r["train_num_updates"]) for r in epochs]
    updates = [end - start for start, end in zip([0] + ends, ends)]
    out, first = [], 0
    for k, period in enumerate(periods, start=1):
        span = range(first, first + period)
        first += period
        if span.stop > len(epochs):
            break
        weight = sum(updates[e] for e in span)

        def mean(key):
            return sum(float(epochs[e][f"train_{key}"]) * updates[e] for e in span) / weight

        modes = [epoch_mode(epochs[e]) for e in span]
        mode = " then ".join(m for i, m in enumerate(modes) if i == 0 or m != modes[i - 1])
        pred, target = mean("dni_pred_norm"), mean("dni_target_norm")
        out.append(dict(cycle=k, epochs=str(span.start + 1) if period == 1 else f"{span.start + 1}-{span.stop}",
                        mode=mode, dni_cos=mean("dni_cos"), dni_pred_norm=pred, dni_target_norm=target,
                        dni_pred_over_target=pred / target if target > 0 else float("nan")))
    return out


def parse_run(log_dir, name):
    """One run's numbers, every one read from its three logs."""
    path = os.path.join(log_dir, f"{name}.train.log")
    rows = common.records(path)
    epochs = rows["train"]   # one record per finished epoch
    ends = [int(r["train_num_updates"]) for r in epochs]
    valid = rows["valid"]
    # checkpoint_best.pt is saved at epoch ends only: the best validation among the epoch-end ones
    at_end = [r for r in valid
              if len(ends) >= int(r["epoch"]) and int(r["valid_num_updates"]) == ends[int(r["epoch"]) - 1]]
    best = min(at_end, key=lambda r: float(r["valid_loss"])) if at_end else None
    # the mode of each epoch: the fraction of its updates that were synthetic (DNI arms log it; BPTT arms
    # have no synthesizer and log none: real)
    modes = [epoch_mode(r) for r in epochs]
    cos = [float(r["dni_cos"]) for r in rows["train_inner"] if "dni_cos" in r]
    # how much the synthesizer predicts: its output's norm over the true gradient's, last epoch's means
    last = epochs[-1] if epochs else {}
    pred_over_target = (float(last["train_dni_pred_norm"]) / float(last["train_dni_target_norm"])
                        if "train_dni_pred_norm" in last and float(last["train_dni_target_norm"]) > 0 else float("nan"))
    periods = [int(p) for p in common.flag(path, "--lr-period-epochs", "0").split(",")]
    max_epoch = int(common.flag(path, "--max-epoch"))
    restarts = [sum(periods[:k]) for k in range(1, len(periods)) if sum(periods[:k]) < max_epoch]
    with open(path) as f:
        params = re.search(r"num\. shared model params: ([\d,]+)", f.read())
    return dict(
        test_ppl_last=common.eval_perplexity(os.path.join(log_dir, f"{name}.eval-last.log")),
        test_ppl_best=common.eval_perplexity(os.path.join(log_dir, f"{name}.eval-best.log")),
        final_valid_ppl=float(valid[-1]["valid_ppl"]) if valid else float("nan"),
        best_valid_ppl=float(best["valid_ppl"]) if best else float("nan"),
        best_epoch=int(best["epoch"]) if best else None,
        updates=ends[-1] if ends else None, epochs=len(epochs),
        synthetic_epochs=" ".join(str(e) for e, m in enumerate(modes, start=1) if m == "synthetic"),
        dni_cos_first=cos[0] if cos else float("nan"), dni_cos_last=cos[-1] if cos else float("nan"),
        dni_pred_over_target=pred_over_target, train_wall_s=common.train_wall(path),
        cycles=cycle_means(epochs, periods),
        curve=(epoch_x(valid, ends), [float(r["valid_ppl"]) for r in valid]), modes=modes, restarts=restarts,
        params=params.group(1) if params else None, command=common.command_of(path),
        eval_command=common.command_of(os.path.join(log_dir, f"{name}.eval-best.log")))


def collect(log_dir):
    """Every run whose three logs are there, in grid order (corpus, arm, seed)."""
    runs = []
    for fname in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        m = re.match(r"(\w+?)-([\w-]+)-s(\d+)\.train\.log$", fname)
        if not m or m.group(1) not in CORPUS_NAMES or m.group(2) not in ARMS:
            continue
        name = fname[: -len(".train.log")]
        if not all(os.path.exists(os.path.join(log_dir, f"{name}.eval-{k}.log")) for k in ("last", "best")):
            continue
        runs.append(dict(corpus=m.group(1), arm=m.group(2), seed=int(m.group(3)), **parse_run(log_dir, name)))
    runs.sort(key=lambda r: (list(CORPUS_NAMES).index(r["corpus"]), ARMS.index(r["arm"]), r["seed"]))
    return runs


FIELDS = ["corpus", "arm", "seed", "test_ppl_last", "test_ppl_best", "final_valid_ppl", "best_valid_ppl",
          "best_epoch", "updates", "epochs", "synthetic_epochs", "dni_cos_first", "dni_cos_last",
          "dni_pred_over_target", "train_wall_s"]
CYCLE_FIELDS = ["corpus", "arm", "seed", "cycle", "epochs", "mode", "dni_cos", "dni_pred_norm", "dni_target_norm",
                "dni_pred_over_target"]
COLORS = {"bptt-one-cycle": "tab:gray", "bptt-restarts": "tab:blue", "dni-restarts": "tab:red",
          "alternating-restarts": "tab:green", "alternating-restarts-mlp": "tab:orange",
          "dni-restarts-scan": "tab:purple", "alternating-restarts-scan": "tab:olive",
          "qrnn-bptt-restarts": "tab:cyan", "qrnn-alternating-restarts-scan": "tab:brown"}


def cell(values, fmt):
    values = [v for v in values if v is not None and v == v]
    return format(spread(values)[0], fmt) if values else "—"


def corpus_table(corpus, arms):
    """The tables and verdicts of one corpus (arms: arm -> its runs)."""
    done = sum(len(rs) for rs in arms.values())
    planned = len(planned_arms(corpus)) * len(SEEDS[corpus])
    lines = [f"### {CORPUS_NAMES[corpus]} ({done} of {planned} runs)", "",
             "| arm | seeds | test ppl, last checkpoint (mean ± half-range) | each seed | test ppl, best-validation "
             "checkpoint (mean) | final valid ppl (mean) | synthesizer cos first → last (mean) | synthesizer "
             "‖prediction‖ / ‖target‖, last epoch (mean) | synthetic epochs | updates | train wall s (runs share the "
             "2 cores: not a speed comparison) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    best = common.lowest_arms(arms, "test_ppl_last")
    for arm in [a for a in ARMS if a in arms]:
        rs = arms[arm]
        last = common.mean_pm([r["test_ppl_last"] for r in rs])
        if arm in best:
            last = "**" + last.replace(" ± ", "** ± ", 1) if " ± " in last else f"**{last}**"
        cos = "—" if all(r["dni_cos_first"] != r["dni_cos_first"] for r in rs) else (
            f"{cell([r['dni_cos_first'] for r in rs], '.3f')} → {cell([r['dni_cos_last'] for r in rs], '.3f')}")
        synthetic = " / ".join(sorted({r["synthetic_epochs"] or "none" for r in rs}))
        lines.append(f"| {arm} | {len(rs)} | {last} | {' / '.join(format(r['test_ppl_last'], '.2f') for r in rs)} | "
                     f"{cell([r['test_ppl_best'] for r in rs], '.2f')} | "
                     f"{cell([r['final_valid_ppl'] for r in rs], '.2f')} | "
                     f"{cos} | {cell([r['dni_pred_over_target'] for r in rs], '.3f')} | {synthetic} | "
                     f"{' / '.join(sorted({str(r['updates']) for r in rs}))} | "
                     f"{cell([r['train_wall_s'] for r in rs], '.0f')} |")
    lines.append("")
    for arm in [a for a in ALTERNATING if a in arms or a in planned_arms(corpus)]:
        if arm not in arms:
            lines += [f"({arm}: planned, no logs yet)", ""]
            continue
        lines += [common.verdict(arms, arm, BASELINES[arm], "test_ppl_last", "Last checkpoint: "), "",
                  common.verdict(arms, arm, BASELINES[arm], "test_ppl_best",
                                 "Best-validation checkpoint (the paper's choice): "), ""]
    for scan in [a for a in COORDINATEWISE_TWIN if a in planned_arms(corpus)]:
        lines += [scan_verdict(arms, scan, "test_ppl_last", "Last checkpoint: "), ""]
        if scan in arms and COORDINATEWISE_TWIN[scan] in arms:
            lines += [scan_verdict(arms, scan, "test_ppl_best", "Best-validation checkpoint: "), ""]
    return lines + cycle_table(corpus, arms)


def scan_verdict(arms, scan, key, lead=""):
    """One computed sentence: does the scan arm ``scan`` differ from its coordinate-wise twin by more than
    the seed spread (``common.comparisons``, either way)?"""
    twin = COORDINATEWISE_TWIN[scan]
    if scan not in arms or twin not in arms:
        return f"(scan against coordinate-wise: {scan if scan not in arms else twin} planned, no logs yet)"
    [(kind, phrase)] = common.comparisons(arms, scan, [twin], key)
    head = {"better": f"{scan} differed from {twin}", "worse": f"{scan} differed from {twin}",
            "within": f"{scan} did not differ from {twin}"}.get(kind)
    unjudged = "no seed in common yet" if kind == "no seed" else "one seed: no spread to judge by"
    head = f"{head} by more than the seed spread" if head else f"{scan} against {twin}, {unjudged}"
    return f"{lead}**Scan against coordinate-wise: {head}**: {phrase}."


def cycle_table(corpus, arms):
    """The synthesizer per cosine cycle (``cycle_means``) of every DNI arm of one corpus, mean over seeds."""
    rows = []
    for arm in [a for a in ARMS if a in arms]:
        cycles = {}
        for r in arms[arm]:
            for c in r["cycles"]:
                cycles.setdefault(c["cycle"], []).append(c)
        for k, cs in sorted(cycles.items()):
            rows.append(f"| {arm} | {len(cs)} | {k} | {' / '.join(sorted({c['epochs'] for c in cs}))} | "
                        f"{' / '.join(sorted({c['mode'] for c in cs}))} | "
                        f"{cell([c['dni_cos'] for c in cs], '.4f')} | "
                        f"{cell([c['dni_pred_over_target'] for c in cs], '.4f')} |")
    if not rows:
        return []
    return [f"#### {CORPUS_NAMES[corpus]}: the synthesizer per cosine cycle", "",
            "From each run's epoch records (fairseq's mean over the epoch's regressions, about one per update; "
            "[`cycles.csv`](cycles.csv) has every run's); a cycle of several epochs is their mean weighted by "
            "each epoch's updates. cos: the synthesizer's prediction against its target (the gradient that reached "
            "the state one window later); ‖prediction‖ / ‖target‖: the ratio of the cycle's mean norms. Each "
            "column is the mean over seeds.", "",
            "| arm | seeds | cycle | epochs | mode | cos | ‖prediction‖ / ‖target‖ |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def summary(groups):
    """The study's verdict in one line (last checkpoints), for the top of its page."""
    if not groups:
        return "not run yet"
    parts = []
    for corpus, arms in groups.items():
        seeds = max(len(rs) for rs in arms.values())
        complete = sum(len(rs) for rs in arms.values()) == len(planned_arms(corpus)) * len(SEEDS[corpus])
        said = []
        for arm in [a for a in ALTERNATING if a in arms]:
            missing = [b for b in BASELINES[arm] if b in planned_arms(corpus) and b not in arms]
            present = " present" if missing else ""
            beat = common.compare(arms, arm, BASELINES[arm], "test_ppl_last")[0]
            kinds = [kind for kind, _ in common.comparisons(arms, arm, BASELINES[arm], "test_ppl_last")]
            lower = bool(kinds) and all(kind == "lower" for kind in kinds)
            said.append(f"{arm} {'beat' if beat else 'did not beat'} every baseline{present} by more than the seed "
                        "spread" if seeds > 1 else
                        f"{arm} {'was' if lower else 'was not'} lower than every baseline{present} (one seed: no "
                        "spread)")
        for scan, twin in COORDINATEWISE_TWIN.items():
            if scan in arms and twin in arms:
                [(kind, _)] = common.comparisons(arms, scan, [twin], "test_ppl_last")
                said.append(f"{scan} {'did not differ' if kind == 'within' else 'differed'} from {twin} by more "
                            "than the seed spread" if kind in ("better", "worse", "within") else
                            f"{scan} was {'equal to' if kind == 'equal' else kind + ' than'} {twin} (one seed: "
                            "no spread)" if kind in ("lower", "higher", "equal") else
                            f"{scan} has no seed in common with {twin} yet")
        best, margin = common.lowest({a: arms[a] for a in ARMS if a in arms}, "test_ppl_last")
        parts.append(f"{CORPUS_NAMES[corpus]} ({seeds} seed{'s' if seeds > 1 else ''}): "
                     + ("; ".join(said) or "no alternating arm yet")
                     + "; lowest mean test perplexity"
                     + ("" if complete else " among the arms with every seed run so far") + f": {best} ({margin})")
    return ". ".join(parts)


def plot(corpus, arms, path):
    """Validation perplexity against epochs; dotted: warm restarts; shaded: alternating-restarts'
    synthetic epochs (full height), and every DNI arm's as a strip along the bottom, read from its log."""
    curves, spans, restarts = [], [], []
    for arm in [a for a in ARMS if a in arms]:
        for i, r in enumerate(arms[arm]):
            curves.append(dict(x=r["curve"][0], y=r["curve"][1], color=COLORS[arm], seed_index=i,
                               label=f"{arm} (seed {r['seed']})"))
            restarts = restarts or r["restarts"]   # the restart cycles' boundaries (the one-cycle arm has none)
    strips = [a for a in ARMS if a in arms and any("synthetic" in r["modes"] for r in arms[a])]
    for j, arm in enumerate(strips):
        for e, mode in enumerate(arms[arm][0]["modes"]):
            if mode == "synthetic":
                spans.append(dict(x0=e, x1=e + 1, color=COLORS[arm], alpha=0.5, ymin=0.03 * j, ymax=0.03 * (j + 1)))
                if arm == "alternating-restarts":
                    spans.append(dict(x0=e, x1=e + 1, color=COLORS[arm], alpha=0.08))
    if curves:
        end = max(r["epochs"] for rs in arms.values() for r in rs)
        common.plot_curves(path, curves, restarts, spans, "epoch", f"{CORPUS_NAMES[corpus]}: dotted = warm "
                                "restarts; shaded = alternating-restarts' synthetic epochs;\nstrips along the bottom "
                                "= each DNI arm's synthetic epochs (first seed), read from the logs",
                                ylim=(0.9, 3.0), xlim=(0, max(end, 1)), legend_loc="upper right")

def report(log_dir, out):
    """results.csv, cycles.csv, table.md, valid_<corpus>.png and the page (README.md) in ``out``, from the logs in
    ``log_dir``."""
    runs = collect(log_dir)
    os.makedirs(out, exist_ok=True)
    groups = {}
    for r in runs:
        groups.setdefault(r["corpus"], {}).setdefault(r["arm"], []).append(r)
    lines = []
    if runs:
        common.write_csv(os.path.join(out, "results.csv"), FIELDS, runs)
        # the norms at the 5 decimals fairseq's records give them (write_csv's 4 would cut a small one short)
        norms = ("dni_pred_norm", "dni_target_norm")
        common.write_csv(os.path.join(out, "cycles.csv"), CYCLE_FIELDS,
                         [dict(corpus=r["corpus"], arm=r["arm"], seed=r["seed"],
                               **{k: f"{v:.5f}" if k in norms else v for k, v in c.items()})
                          for r in runs for c in r["cycles"]])
        for corpus, arms in groups.items():
            lines += corpus_table(corpus, arms)
            plot(corpus, arms, os.path.join(out, f"valid_{corpus}.png"))
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write("\n".join(lines))
        print("\n".join(lines))
    else:
        print(f"paper_grid: no finished runs in {log_dir} yet")
    write_study(lines, runs, groups, out)
    return runs


def report_files(log_dir, out):
    """``report``, then the files it writes (to be committed with a run's logs)."""
    report(log_dir, out)
    return common.written(out)


def write_study(lines, runs, groups, out):
    """The study's page, ``OUT/README.md``: the setting, how to reproduce it, the tables, the reading, the plots."""
    recipes = "../../recipes/README.md"   # the page's link, from studies/paper_grid/
    params = {(r["corpus"], base(r["arm"])): r["params"] for r in runs if r["params"]}
    scale = "; ".join(f"{CORPUS_NAMES[c]} {p} parameters" + (f" (QRNN: {params[c, 'qrnn']})" if (c, "qrnn") in params
                                                             else "")
                      for (c, b), p in params.items() if b == "lstm")
    paper_cycles = PAPER_PERIODS["restarts"].split(",")
    md = [f"The seed paper's method (Shang & Zhang, arXiv 1902.10630; code `parap1uie-s/alternate_sg`) run the "
          "paper's way, scaled down to this machine: AWD-LSTM small (and the paper's QRNN base at the same size), Adam, "
          "the paper's QRNN synthesizer as its code "
          "computes it (`scan`) beside the coordinate-wise one, epoch-counted cycles 1, 1, 2. Logs: [`logs`](logs) "
          "(one `.train.log`, one `.eval-last.log` and one `.eval-best.log` per run; the first line of each is the "
          "exact command); [`results.csv`](results.csv) has one row per run, [`cycles.csv`](cycles.csv) one per DNI "
          "run and cosine cycle.", "",
          "**Setting.** The paper trains a QRNN of 4 layers of 1550 units (AWD-LSTM's QRNN setting; "
          "`recipes/paper` trains it, `dni_awd_qrnn_lm`, with AWD-LSTM's LSTM as a named option) for "
          f"{sum(int(p) for p in paper_cycles)} epochs with Adam 1e-3, windows of {EVAL_WINDOW} tokens with AWD-LSTM's "
          f"variable lengths, {STREAMS} streams, its clip, and SGDR restarts counted in epochs: cycles of "
          f"{', '.join(paper_cycles[:3])}, ... epochs. Here: `dni_awd_lstm_lm_small` (and, in the `qrnn-` arms, "
          f"`dni_awd_qrnn_lm_small`; 3 layers 256/256/128, tied "
          f"128-d embedding{'; ' + scale if scale else ''}, read from the logs), {EPOCHS} epochs, the same optimizer, "
          f"streams, clip ({', '.join(f'{CORPUS_NAMES[c]} {v}' for c, v in CLIP.items())}) and "
          f"regularizers, cycles of {PERIODS['restarts'].replace(',', ', ')} epochs (the paper's first three divided "
          f"by {int(paper_cycles[0]) // int(PERIODS['restarts'].split(',')[0])}) against one "
          f"{PERIODS['one-cycle']}-epoch "
          "cycle. The rate anneals within epochs (the paper's loop holds one rate per epoch, `--lr-step-per-epoch`: "
          "over its 5-epoch cycles that still anneals, 1, 0.90, 0.65, 0.35, 0.10, but it would leave 1-epoch cycles "
          "flat), so our rate at a fraction of the run is the paper's at the same fraction; every run ends at the "
          "bottom of its last cycle.", "",
          "**Checkpoints and scoring.** Each run is scored twice with `fairseq-eval-lm` on the test split: the last "
          "checkpoint, and the best-validation checkpoint (the paper's choice). fairseq saves `checkpoint_best.pt` at "
          "epoch ends, so the best checkpoint is the best of the epoch-end validations (the mid-epoch validations "
          "only draw the curves). The test set is scored as one stream of "
          f"{EVAL_WINDOW}-token windows (`--batch-size 1 --tokens-per-sample {EVAL_WINDOW}`), as the paper does.", "",
          f"**Window.** Training windows are AWD-LSTM's own `--bptt {WINDOW}` (variable lengths), not the paper's "
          f"{EVAL_WINDOW}: over {EPOCHS} epochs a window of {EVAL_WINDOW} leaves about 950 updates, and the two arms run "
          f"that way (seed 1, [`window200`](window200/logs)) ended at test perplexity 412-413, too early in training "
          f"for the schedules to differ; {WINDOW} gives {EVAL_WINDOW / WINDOW:.1f} times the updates for the same "
          "tokens.", "",
          "**Arms**, and the paper's arms they stand for (named as in recipes/paper, with the flags of the paper's "
          "README; "
          f"[recipes/README.md]({recipes}) "
          "maps every flag of its `main.py` to ours):", "",
          "| arm | the paper's | synthesizer | mode |", "|---|---|---|---|",
          "| bptt-one-cycle | none: its `bptt` arm (no `--use_sg`) with one cosine over the run instead of a constant "
          "rate | none | real |",
          "| bptt-restarts | none: `bptt` with the restarts of `--restart_base 5 --restart_lr` | none | real |",
          "| dni-restarts | `dni-restart5`: `--use_sg --whenswitch 2 --restart_base 5 --restart_lr` | coordinate-wise "
          "| epoch 1 real (`--whenswitch 2`), then synthetic |",
          "| alternating-restarts | `alternating-restart5`: `--use_sg --mixture --restart_base 5 --restart_lr` "
          "(WikiText-2: also `--whenswitch 2`) | coordinate-wise | flips at every restart; PTB starts real "
          "(`--mixture`), WikiText-2 with epoch 1 real, then synthetic (`--mixture --whenswitch 2`) |",
          "| alternating-restarts-mlp | the same with Jaderberg et al.'s MLP synthesizer instead of `--sgtype QRNN` "
          "(PTB only) | MLP | as above |",
          "| dni-restarts-scan | `dni-restart5` | scan (`--sgtype QRNN`) | as dni-restarts |",
          "| alternating-restarts-scan | `alternating-restart5` (WikiText-2: also `--whenswitch 2`) | scan "
          "(`--sgtype QRNN`) | as alternating-restarts |",
          "| qrnn-bptt-restarts | bptt-restarts on the paper's base model (`--model QRNN`) at CPU size (PTB only) | "
          "none | real |",
          "| qrnn-alternating-restarts-scan | `alternating-restart5` as the paper ran it: its QRNN base model and "
          "its synthesizer (PTB only) | scan (`--sgtype QRNN`) | as alternating-restarts |", "",
          "**Base models.** Every arm but the `qrnn-` ones trains `dni_awd_lstm_lm_small`; the two `qrnn-` arms "
          "train `dni_awd_qrnn_lm_small`, the paper's QRNN (`--model QRNN`: first layer window 2, output gate, "
          "weight drop on each layer's gate matrix) at the same CPU size, 3 layers 256/256/128, tied 128-d "
          "embedding, the same halved dropouts and weight drop 0.05 (half the paper's 0.1), everything else "
          "(optimizer, windows, schedule, synthesizer) as its LSTM twin; the synthesizer reads and injects at "
          "the QRNN's carried cell states (docs/synthesizers.md). qrnn-alternating-restarts-scan is judged "
          "against qrnn-bptt-restarts, the BPTT arm with the same restarts on the same base.", "",
          "**Synthesizers.** Every DNI arm of the paper's README runs `--sgtype QRNN --sg_hidden_num 50 "
          "--sg_nlayers 1` with its own Adam 1e-3 (weight decay 1.2e-6) and the synthetic gradient x 0.1 "
          f"(here `{' '.join(DNI[2:])}`). Its code reads the joined state of all streams, through torchqrnn's "
          "time-major `QRNNLayer`, as **one sequence** of B x D scalars, so each prediction depends on every "
          "coordinate before it, across layers, h and c, and streams: that is `scan` "
          f"(`{' '.join(SCAN)}`: window 2, zoneout 0.1, the paper's U(-0.1, 0.1) initialisation; "
          "[docs/synthesizers.md](../../docs/synthesizers.md)), the `-scan` arms. The coordinate-wise rows run "
          f"`{' '.join(COORDINATEWISE)}`: every coordinate its own sequence, advanced one step per window, which is "
          "what the paper's code computes with `--sgtype GRU/LSTM` (`batch_first`), here with a QRNN cell and no "
          "zoneout; this grid ran it first, taking it for the paper's. Each alternating arm is judged against both "
          "BPTT arms and the DNI arm with its own synthesizer (alternating-restarts-scan against dni-restarts-scan; "
          "the MLP arm, which has no DNI twin, against dni-restarts), and each scan arm against its coordinate-wise "
          "twin, by one rule: a difference counts when it exceeds the two arms' seed half-ranges together (one seed "
          "gives no spread: only \"lower\" or \"higher\").", "",
          "Scaling the cycles by 5 maps our epoch e to the paper's epochs 5e-4 to 5e; the learning rate and the "
          "mode of each of our epochs are the paper's at the first of those (tests/test_paper_grid.py checks "
          "both against a restatement of the paper's training loop). By epoch that makes PTB's alternating arms "
          "real, synthetic, real, real; WikiText-2's real, real, synthetic, synthetic; dni-restarts real, then "
          "synthetic (the tables' \"synthetic epochs\" column reads the modes back from the logs). One thing does "
          "not scale: in the paper's `--whenswitch 2` arms (dni-restarts; WikiText-2's alternating) the first cycle "
          "has one real epoch and four synthetic ones; ours is one epoch, all real.", "",
          f"Reproduce (each command skips the runs whose logs exist; {common.TEXT_SOURCES}):", "", "```bash",
          "python -m studies.paper_grid --corpus ptb --seeds 1,2 --commit",
          "python -m studies.paper_grid --corpus wikitext2 --seeds 1 --commit   # " + ", ".join(WIKITEXT2_ARMS),
          "python -m studies.paper_grid --report-only   # tables, CSV, plots and this page from the logs",
          "```", ""]
    shown = ["alternating-restarts-scan", "alternating-restarts"]   # the arm shown per corpus: the first present
    commands = {}
    for corpus in groups:
        arm = next((a for a in shown if a in groups[corpus]), None)
        r = groups[corpus][arm][-1] if arm else runs[[r["corpus"] for r in runs].index(corpus)]   # its last seed
        commands[corpus] = [(r["arm"], r["command"], r["eval_command"])]
        if "qrnn-alternating-restarts-scan" in groups[corpus]:   # and the paper's arm on its own base model
            q = groups[corpus]["qrnn-alternating-restarts-scan"][-1]
            commands[corpus].append((q["arm"], q["command"], q["eval_command"]))
    if commands:
        md += ["Commands of one run per corpus (alternating-restarts-scan where present, else "
               "alternating-restarts; and qrnn-alternating-restarts-scan where present):", ""]
        for corpus in groups:
            for arm, train, evaluate in commands[corpus]:
                md += [f"* {CORPUS_NAMES[corpus]}, {arm}: `{train}`", f"  then `{evaluate}` (and the same with "
                       "`checkpoint_last.pt`)"]
        md.append("")
    md += ["## Results", ""]
    md += lines if lines else ["Not run yet: no finished run in "
                               "[`logs`](logs) (its logs land there as each run finishes).", ""]
    md += common.reading(out) if lines else []
    if groups:
        md += ["## Validation curves", ""]
        for corpus in groups:
            md += [f"![{CORPUS_NAMES[corpus]}](valid_{corpus}.png)", ""]
    common.write_page(out, "Does alternation beat BPTT as the seed paper ran it? The paper grid",
                      "python -m studies.paper_grid --report-only", summary(groups), md)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_grid_arguments(p, OUT, os.path.join(REPO, "runs", "paper_grid"))
    p.add_argument("--arms", help=f"comma-separated (default: all {len(ARMS)} on PTB, "
                                  f"{', '.join(WIKITEXT2_ARMS)} on WikiText-2)")
    p.add_argument("--seeds", default="1,2", help="comma-separated seeds (the committed grid: 1,2 on PTB, 1 on "
                                                   "WikiText-2)")
    args = p.parse_args()
    log_dir = os.path.join(args.out, "logs")
    if not args.report_only:
        arms = args.arms.split(",") if args.arms else (ARMS if args.corpus == "ptb" else WIKITEXT2_ARMS)
        for a in arms:
            if a not in ARMS:
                sys.exit(f"paper_grid: error: unknown arm {a!r} (choose from {', '.join(ARMS)})")
        data_bin = args.data_bin or os.path.join(REPO, "runs", f"{args.corpus}-bin")
        data_bin = common.binarize(args.text_dir or common.CORPORA[args.corpus], data_bin, args.corpus,
                                   prog="paper_grid")
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            sys.exit(f"paper_grid: error: --seeds takes comma-separated whole numbers, got {args.seeds!r}")
        runs = runs_for(args.corpus, seeds, arms, data_bin)
        common.run_grid(runs, log_dir, args.work_dir, args.jobs, args.commit, args.force, "Paper grid run",
                             args.threads, report=lambda: report_files(log_dir, args.out))
    report(log_dir, args.out)


if __name__ == "__main__":
    main()
