"""Study: do synthetic-gradient cycles move the representations more, and does that buy a better snapshot ensemble?

PTB, the quickstart's setting made 2 layers deep (2 x 128 LSTM, 32 streams x 10-token windows, SGD lr 20,
clip 0.25, conditional-DNI MLP synthesizer at --dni-scale 0.1) with 6 cosine cycles of 400 updates
(t_mult 1, 2,400 updates, 0.83 epoch), two arms with the same restarts:

* ``alternating``: synthetic / real / synthetic / ... gradients, switching at every restart;
* ``bptt``: real gradients throughout (``--criterion lm_cross_entropy``, no synthesizer).

Each run keeps its 6 cycle-end snapshots (``--keep-cycle-ends``). Then, per arm:

* linear CKA and SVCCA per layer between neighbouring snapshots (cycle k-1 against cycle k, over PTB's
  validation text, state carried: ``python -m fairseq_dni.representations``); in the alternating arm
  cycles 3 and 5 were trained with synthetic gradients, 2, 4 and 6 with real ones;
* PTB test perplexity of each of the last three snapshots alone and of the ensembles of the last 2 and
  last 3 (``python -m fairseq_dni.eval_lm --path a:b[:c]``, 10 streams, 35-token windows).

Usage (from the repository root; about 15 minutes of one core, niced)::

    python -m studies.snapshots --text-dir ../shared/data/ptb     # train, score, compare, report
    python -m studies.snapshots --score-only                      # score and compare the kept snapshots again
    python -m studies.snapshots --report-only                     # the report again, from the committed logs

Writes logs/ (fairseq's own logs and the two tools' outputs, committed), results.csv, snapshots.png and the
results block of README.md. Work files (binarized data, checkpoints) go to runs/snapshots/ (not committed).
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys

from studies.common import binarize

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LOGS = os.path.join(HERE, "logs")
BIN = os.path.dirname(sys.executable)

CYCLES, PERIOD, FIRST_MODE = 6, 400, "synthetic"
ARMS = ("alternating", "bptt")
MODEL = ["--arch", "dni_lstm_lm_small", "--decoder-layers", "2", "--decoder-embed-dim", "128",
         "--decoder-hidden-size", "128", "--decoder-out-embed-dim", "128"]
COMMON = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling", *MODEL,
          "--batch-size", "32", "--tokens-per-sample", "10", "--optimizer", "alternating", "--base-optimizer", "sgd",
          "--lr", "20", "--clip-norm", "0.25", "--lr-scheduler", "cosine_alternating", "--lr-period-updates",
          str(PERIOD), "--t-mult", "1", "--min-lr", "0", "--max-update", str(CYCLES * PERIOD),
          "--save-interval-updates", str(PERIOD), "--keep-interval-updates", "1", "--keep-cycle-ends",
          "--no-epoch-checkpoints", "--disable-validation", "--seed", "1", "--cpu", "--num-workers", "0", "--log-format", "json",
          "--log-interval", "50", "--no-progress-bar"]
ARM_FLAGS = {
    "alternating": ["--criterion", "dni_cross_entropy", "--dni-scale", "0.1", "--dni-condition-on-next-target",
                    "--dni-lr", "1e-4", "--mode-schedule", "alternate", "--first-mode", FIRST_MODE],
    "bptt": ["--criterion", "lm_cross_entropy", "--mode-schedule", "real"],
}
EVAL = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling", "--gen-subset", "test",
        "--batch-size", "10", "--tokens-per-sample", "35", "--cpu", "--num-workers", "0"]
SCORED = ((4,), (5,), (6,), (5, 6), (4, 5, 6))  # the last three snapshots alone, then the last two and three together


def mode_of(arm, cycle):
    """The gradients cycle ``cycle`` (1-based) of ``arm`` was trained with."""
    if arm == "bptt":
        return "real"
    return FIRST_MODE if cycle % 2 == 1 else ("real" if FIRST_MODE == "synthetic" else "synthetic")


def snapshot(work, arm, cycle):
    return os.path.join(work, arm, f"checkpoint_cycle{cycle}_{mode_of(arm, cycle)}.pt")


def run(cmd, log, append=False):
    """Run ``cmd`` niced, its output into ``log``; stop the study if it fails."""
    with open(log, "a" if append else "w") as out:
        shown = " ".join("python" if c == sys.executable else c for c in cmd).replace(BIN + os.sep, "").replace(REPO + os.sep, "")
        out.write(f"# {shown}\n")
        out.flush()
        code = subprocess.call(["nice", "-n", "10", *cmd], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                               env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO))
    if code:
        sys.exit(f"failed ({code}): see {log}")


def study(text_dir, work, train=True):
    os.makedirs(LOGS, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    data = binarize(text_dir, os.path.join(work, "data-bin"), corpus="PTB", prog="studies.snapshots", workers=1)
    for arm in ARMS:
        if train:
            run([os.path.join(BIN, "fairseq-train"), data, *COMMON, *ARM_FLAGS[arm], "--save-dir",
                 os.path.join(work, arm)], os.path.join(LOGS, f"{arm}.train.log"))
        log = os.path.join(LOGS, f"{arm}.eval.log")
        for i, cycles in enumerate(SCORED):
            paths = ":".join(snapshot(work, arm, c) for c in cycles)
            run([sys.executable, "-m", "fairseq_dni.eval_lm", data, *EVAL, "--path", paths], log, append=i > 0)
        log = os.path.join(LOGS, f"{arm}.representations.log")
        for cycle in range(2, CYCLES + 1):
            run([sys.executable, "-m", "fairseq_dni.representations", data, snapshot(work, arm, cycle - 1),
                 snapshot(work, arm, cycle), "--gen-subset", "valid"], log, append=cycle > 2)


# ---- the report, from the logs alone -----------------------------------------------------------------
def read_eval(arm):
    """{(cycles of the members): test perplexity}, from fairseq's eval-lm log lines."""
    text = open(os.path.join(LOGS, f"{arm}.eval.log")).read()
    runs = re.split(r"^# ", text, flags=re.M)[1:]
    out = {}
    for block in runs:
        members = re.search(r"--path (\S+)", block).group(1).split(":")
        out[tuple(int(re.search(r"cycle(\d+)_", m).group(1)) for m in members)] = float(re.search(r"Loss \(base 2\): [0-9.]+, Perplexity: ([0-9.]+)", block).group(1))
    return out


def read_representations(arm):
    """[(cycle k, layer, CKA, SVCCA)] between snapshots k-1 and k."""
    text = open(os.path.join(LOGS, f"{arm}.representations.log")).read()
    out = []
    for block in re.split(r"^# ", text, flags=re.M)[1:]:
        later = int(re.findall(r"checkpoint_cycle(\d+)_", block.splitlines()[0])[-1])
        for layer, cka, sv in re.findall(r"^layer (\d+) cka ([0-9.]+) svcca ([0-9.]+)$", block, flags=re.M):
            out.append((later, int(layer), float(cka), float(sv)))
    return out


def read_train(arm):
    """fairseq's per-interval training records, and its validation records."""
    inner, valid = [], []
    for line in open(os.path.join(LOGS, f"{arm}.train.log")):
        m = re.search(r"\| (train_inner|valid) \| (\{.*\})", line)
        if m:
            (inner if m.group(1) == "train_inner" else valid).append(json.loads(m.group(2)))
    return inner, valid


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def name(members):
    return f"cycle {members[0]} alone" if len(members) == 1 else f"ensemble of cycles {members[0]}-{members[-1]}"


def ensemble_verdict(ppl, best, gain):
    last = (CYCLES,)
    said = {arm: f"{arm}: cycle {CYCLES} alone {ppl[arm][last]:.2f}, its best ensemble ({name(best[arm])[12:]}) "
                 f"{ppl[arm][best[arm]]:.2f}" for arm in ARMS}
    if all(g <= 0 for g in gain.values()):
        behind = {arm: ppl[arm][(CYCLES - 1,)] - ppl[arm][last] for arm in ARMS}
        return (f"No: in neither arm does an ensemble beat the last snapshot ({said['alternating']}; {said['bptt']}). "
                f"The earlier snapshots are still much worse (cycle {CYCLES - 1} alone is "
                f"{behind['alternating']:.2f} and {behind['bptt']:.2f} above cycle {CYCLES}): after 0.83 epoch these "
                f"runs are far from converged, so averaging in an earlier snapshot costs more than its difference "
                f"brings (Huang et al. ensemble snapshots taken near convergence). Across arms, the alternating "
                f"run's last snapshot is {abs(ppl['bptt'][last] - ppl['alternating'][last]):.2f} "
                f"{'below' if ppl['alternating'][last] < ppl['bptt'][last] else 'above'} BPTT's (one seed).")
    better = max(ARMS, key=gain.get)
    return (f"Ensembling gains {gain['alternating']:.2f} for the alternating arm and {gain['bptt']:.2f} for BPTT "
            f"({said['alternating']}; {said['bptt']}): {better} gains more (one seed).")


def report():
    ppl = {arm: read_eval(arm) for arm in ARMS}
    reps = {arm: read_representations(arm) for arm in ARMS}
    layers = sorted({layer for _, layer, _, _ in reps["alternating"]})
    rows = []
    for arm in ARMS:
        for cycle, layer, cka, sv in reps[arm]:
            rows.append({"arm": arm, "pair": f"{cycle - 1}-{cycle}", "cycle_mode": mode_of(arm, cycle),
                         "layer": layer, "cka": cka, "svcca": sv})
    with open(os.path.join(HERE, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "pair", "cycle_mode", "layer", "cka", "svcca", "members", "test_ppl"])
        writer.writeheader()
        writer.writerows(rows)
        writer.writerows({"arm": arm, "members": "+".join(map(str, members)), "test_ppl": ppl[arm][members]}
                         for arm in ARMS for members in SCORED)

    def cka(arm, cycle, layer):
        return next(c for k, l, c, _ in reps[arm] if k == cycle and l == layer)

    lines = ["| pair (cycle k-1 to k) | trained in cycle k (alternating) | "
             + " | ".join(f"layer {l} CKA alternating / bptt" for l in layers) + " |",
             "|---|---|" + "---|" * len(layers)]
    for cycle in range(2, CYCLES + 1):
        lines.append(f"| {cycle - 1}-{cycle} | {mode_of('alternating', cycle)} | "
                     + " | ".join(f"{cka('alternating', cycle, l):.4f} / {cka('bptt', cycle, l):.4f}" for l in layers)
                     + " |")
    table_cka = "\n".join(lines)
    lines = ["| arm | " + " | ".join(name(m) for m in SCORED) + " |", "|---|" + "---|" * len(SCORED)]
    for arm in ARMS:
        lines.append(f"| {arm} | " + " | ".join(f"{ppl[arm][m]:.2f}" for m in SCORED) + " |")
    table_ppl = "\n".join(lines)

    # neighbours' CKA: the alternating arm minus bptt at the same pair, split by how cycle k was trained
    gap = {mode: mean(cka("alternating", c, l) - cka("bptt", c, l) for c in range(2, CYCLES + 1)
                      for l in layers if mode_of("alternating", c) == mode) for mode in ("synthetic", "real")}
    moved_more = gap["synthetic"] < 0 and abs(gap["synthetic"]) > abs(gap["real"])
    inner, _ = read_train("alternating")
    synthetic = [r for r in inner if float(r["dni_synthetic"]) == 1.0 and "dni_pred_norm" in r]
    ratio = mean(float(r["dni_pred_norm"]) / float(r["dni_target_norm"]) for r in synthetic)
    cos = mean(float(r["dni_cos"]) for r in synthetic)
    last, ensembles = (CYCLES,), [m for m in SCORED if len(m) > 1]
    best = {arm: min(ensembles, key=lambda m: ppl[arm][m]) for arm in ARMS}
    gain = {arm: ppl[arm][last] - ppl[arm][best[arm]] for arm in ARMS}  # > 0: the ensemble is better
    verdict = [
        f"* **Do synthetic cycles move the representations more?** "
        + ("Yes, in this run: " if moved_more else "No, not beyond what the real cycles differ by: ")
        + f"after a synthetic cycle the alternating arm's neighbouring snapshots are "
        f"{abs(gap['synthetic']):.4f} {'less' if gap['synthetic'] < 0 else 'more'} alike (mean linear CKA over "
        f"layers and pairs) than the BPTT arm's at the same pair; after a real cycle the two arms differ by "
        f"{abs(gap['real']):.4f} ({'less' if gap['real'] < 0 else 'more'} alike), the size of a difference "
        f"that no synthetic gradient caused. One seed.",
        f"* **How much the synthesizer contributes:** in synthetic updates its prediction's norm is "
        f"{ratio:.2f} of the true gradient's at the window boundary (the gradient full BPTT would carry back "
        f"from the future tokens; mean over the logged intervals), injected at --dni-scale 0.1, so the injected "
        f"gradient is about {100 * 0.1 * ratio:.1f}% of that norm, at cosine {cos:.3f} with it (a real cycle "
        f"injects nothing). A synthetic cycle is thus close to truncated BPTT with 10-token windows"
        + (": too small a push to make its snapshots differ from real-trained ones." if not moved_more else "."),
        "* **Does it buy a better ensemble?** " + ensemble_verdict(ppl, best, gain),
    ]
    plot(reps, layers, ppl)
    block = "\n\n".join(["Neighbouring snapshots' linear CKA per layer (PTB validation text, state carried; 1 = "
                         "the same representation up to rotation and scale):", table_cka,
                         "PTB test perplexity (fairseq's SequenceScorer: the members' probabilities averaged):",
                         table_ppl, "\n".join(verdict), "![neighbouring snapshots' CKA and the ensembles' "
                         "perplexity](snapshots.png)"])
    page = os.path.join(HERE, "README.md")
    text = open(page).read()
    start, end = "<!-- results: written by run.py --report-only -->", "<!-- /results -->"
    text = text[:text.index(start) + len(start)] + "\n" + block + "\n" + text[text.index(end):]
    with open(page, "w") as f:
        f.write(text)
    print(block)


def plot(reps, layers, ppl):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm, colour in zip(ARMS, ("tab:green", "tab:blue")):
        for layer, style in zip(layers, ("-", "--", ":")):
            points = sorted((c, v) for c, l, v, _ in reps[arm] if l == layer)
            left.plot([c for c, _ in points], [v for _, v in points], style, color=colour, marker="o",
                      label=f"{arm}, layer {layer}")
        right.plot(range(len(SCORED)), [ppl[arm][m] for m in SCORED], color=colour, marker="o", label=arm)
    for cycle in range(2, CYCLES + 1):
        if mode_of("alternating", cycle) == "synthetic":
            left.axvspan(cycle - 0.5, cycle + 0.5, color="tab:red", alpha=0.08, lw=0)
    left.set(xlabel="cycle k (shaded: synthetic in the alternating arm)", ylabel="linear CKA, snapshot k-1 vs k",
             title="neighbouring snapshots", xticks=list(range(2, CYCLES + 1)))
    right.set(ylabel="PTB test perplexity", title="snapshots and their ensembles")
    right.set_xticks(range(len(SCORED)), ["+".join(map(str, m)) for m in SCORED])
    right.set_xlabel("cycles scored (alone, or averaged)")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "snapshots.png"), dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text-dir", default=os.path.join(REPO, "..", "shared", "data", "ptb"),
                        help="folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt (Mikolov's PTB)")
    parser.add_argument("--work", default=os.path.join(REPO, "runs", "snapshots"),
                        help="binarized data and checkpoints (not committed)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from the committed logs")
    parser.add_argument("--score-only", action="store_true",
                        help="score and compare the snapshots already in --work (no training), then report")
    args = parser.parse_args()
    if not args.report_only:
        study(os.path.abspath(args.text_dir), os.path.abspath(args.work), train=not args.score_only)
    report()


if __name__ == "__main__":
    main()
