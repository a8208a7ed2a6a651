"""The paper grid (studies/paper_grid) without training: its report prints exactly the numbers in
the logs, every arm ends at the bottom of a cosine cycle, and its schedules are the paper's scaled
in proportion (cycles 1, 1, 2 epochs for 5, 5, 10)."""
import csv
import json
import os
import random
from pathlib import Path

import pytest

from helpers import write_corpus
from studies import common
from studies.paper_grid import run as paper_grid

WINDOWS = 10  # windows per epoch of the fake logs and of the schedule checks (their number does not matter)


@pytest.fixture
def no_data(monkeypatch):
    """train_args needs the windows per epoch of a binarized corpus; these tests need none."""
    monkeypatch.setattr(common, "updates_per_epoch", lambda *a: 2 * WINDOWS)


def value(args, name, default=None):
    return args[args.index(name) + 1] if name in args else default


# ---- (a) the report's numbers are the logs' -------------------------------------------------------
def record(kind, fields):
    return f"2026-11-30 18:00:00 | INFO | {kind} | {json.dumps({k: str(v) for k, v in fields.items()})}\n"


def write_fake_run(log_dir, corpus, arm, seed, rng):
    """Minimal fairseq-style logs of one run (the lines the report reads, in fairseq's format) and the
    numbers a correct report must print for it."""
    name = f"{corpus}-{arm}-s{seed}"
    args = paper_grid.train_args(corpus, arm, seed, "/data/bin")
    dni = not arm.removeprefix("qrnn-").startswith("bptt")
    modes = [0, 1, 1, 1] if arm.startswith("dni-restarts") else [0, 1, 0, 0] if dni else [0, 0, 0, 0]
    lines = ["# OMP_NUM_THREADS=1 fairseq-train /data/bin " + " ".join(args) + f" --save-dir /work/{name}\n",
             "2026-11-30 18:00:00 | INFO | fairseq_cli.train | num. shared model params: 1,234,567 "
             "(num. trained: 1,234,567)\n"]
    end_valids, cos, update, epoch_cos = [], [], 0, []
    last_valid = None
    for epoch in range(1, 5):
        for half in range(2):
            update += WINDOWS
            inner = {"epoch": epoch, "loss": 7.1, "ppl": 137.2, "num_updates": update, "lr": 0.001}
            if dni:
                cos.append(round(rng.uniform(-0.05, 0.3), 4))
                inner.update(dni_synthetic=modes[epoch - 1], dni_cos=cos[-1])
            lines.append(record("train_inner", inner))
            loss = round(rng.uniform(7, 9), 3)
            ppl = round(2 ** loss, 2)
            lines.append(record("valid", {"epoch": epoch, "valid_loss": loss, "valid_ppl": ppl,
                                          "valid_num_updates": update}))
            last_valid = ppl
            if half == 1:
                end_valids.append((loss, ppl, epoch))
        epoch_record = {"epoch": epoch, "train_loss": 7.2, "train_num_updates": update}
        if dni:
            epoch_cos.append(round(rng.uniform(-0.05, 0.3), 4))
            epoch_record["train_dni_synthetic"] = modes[epoch - 1]
            epoch_record.update(train_dni_pred_norm=0.25 * epoch, train_dni_target_norm=2.0, train_dni_cos=epoch_cos[-1])
        lines.append(record("train", epoch_record))
    wall = rng.randint(100, 999)
    lines.append(f"# exit 0 after {wall} s\n")
    (log_dir / f"{name}.train.log").write_text("".join(lines))
    tests = {}
    for label in ("last", "best"):
        tests[label] = round(rng.uniform(100, 300), 2)
        (log_dir / f"{name}.eval-{label}.log").write_text(
            f"# OMP_NUM_THREADS=1 fairseq-eval-lm /data/bin --path /work/{name}/checkpoint_{label}.pt\n"
            f"INFO:fairseq_cli.eval_lm:Loss (base 2): 7.1234, Perplexity: {tests[label]}\n# exit 0 after 4 s\n")
    best = min(end_valids)  # checkpoint_best.pt: the best epoch-end validation (by loss, as fairseq)
    # per cosine cycle (1, 1, 2 epochs; every fake epoch has the same updates, so cycle 3 is the plain mean of
    # epochs 3 and 4): mode, cosine, and the ratio of the mean norms (0.25 e / 2 per epoch e)
    cycles = [] if not dni else [
        dict(cycle="1", epochs="1", mode="synthetic" if modes[0] else "real", dni_cos=epoch_cos[0], ratio=0.125),
        dict(cycle="2", epochs="2", mode="synthetic" if modes[1] else "real", dni_cos=epoch_cos[1], ratio=0.25),
        dict(cycle="3", epochs="3-4", mode="synthetic" if modes[2] else "real",
             dni_cos=(epoch_cos[2] + epoch_cos[3]) / 2, ratio=(0.75 + 1.0) / 2 / 2.0)]
    return dict(corpus=corpus, arm=arm, seed=str(seed), test_ppl_last=tests["last"], test_ppl_best=tests["best"],
                final_valid_ppl=last_valid, best_valid_ppl=best[1], best_epoch=str(best[2]), updates=str(update),
                epochs="4", synthetic_epochs=" ".join(str(e) for e, m in enumerate(modes, 1) if m),
                dni_cos_first=cos[0] if cos else "", dni_cos_last=cos[-1] if cos else "",
                dni_pred_over_target=0.5 if dni else "", train_wall_s=str(wall)), cycles


def test_report_prints_the_numbers_in_the_logs(tmp_path, no_data):
    log_dir = tmp_path / "paper" / "logs"
    log_dir.mkdir(parents=True)
    rng = random.Random(0)
    written = [write_fake_run(log_dir, corpus, arm, seed, rng) for corpus, seeds in paper_grid.SEEDS.items()
               for arm in paper_grid.planned_arms(corpus) for seed in seeds]
    want = [w for w, _ in written]
    (log_dir / "ptb-dni-restarts-s3.train.log.tmp").write_text("# an unfinished run: not reported\n")
    paper_grid.report(str(log_dir), str(tmp_path / "paper"))

    with open(tmp_path / "paper" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(want) == 22
    for row, expected in zip(rows, want):
        assert list(row) == paper_grid.FIELDS
        for key, v in expected.items():
            assert (float(row[key]) == v) if isinstance(v, float) else (row[key] == v), (row["arm"], key)
    table = (tmp_path / "paper" / "table.md").read_text()
    assert "### PTB (18 of 18 runs)" in table and "### WikiText-2 (4 of 4 runs)" in table
    for r in want:
        assert f"{r['test_ppl_last']:.2f}" in table
    for arm in ("alternating-restarts", "alternating-restarts-scan"):   # last and best checkpoint, two corpora
        assert table.count(f"**{arm} beat every baseline") + table.count(f"**{arm} did not beat every baseline") == 4
    arm = "qrnn-alternating-restarts-scan"   # the QRNN base: PTB only, last and best checkpoint
    assert table.count(f"**{arm} beat every baseline") + table.count(f"**{arm} did not beat every baseline") == 2
    # the scan arms against their coordinate-wise twins: PTB's two arms, WikiText-2's one, last and best
    assert table.count("**Scan against coordinate-wise: ") == 6
    # one row per DNI run and cycle, its numbers the epoch records'; the table has their means over seeds
    with open(tmp_path / "paper" / "cycles.csv") as f:
        got = list(csv.DictReader(f))
    expected = [dict(corpus=w["corpus"], arm=w["arm"], seed=w["seed"], **c) for w, cs in written for c in cs]
    assert len(got) == len(expected) == 3 * (6 * 2 + 2)   # 3 cycles of PTB's 6 DNI arms x 2 seeds, WikiText-2's 2
    for row, c in zip(got, expected):
        assert (row["corpus"], row["arm"], row["seed"], row["cycle"], row["epochs"], row["mode"]) == (
            c["corpus"], c["arm"], c["seed"], c["cycle"], c["epochs"], c["mode"])
        assert float(row["dni_cos"]) == pytest.approx(c["dni_cos"], abs=6e-5)   # the CSV's 4 decimals
        assert float(row["dni_pred_over_target"]) == pytest.approx(c["ratio"], abs=6e-5)
    cycle_rows = {tuple(cells[:5]): cells[5:] for cells in
                  ([x.strip() for x in line.strip("|").split("|")] for line in table.splitlines())
                  if len(cells) == 7 and cells[0] != "arm" and not cells[0].startswith("---")}
    for arm in ("dni-restarts-scan", "alternating-restarts-mlp"):
        cs = [c for w, cc in written for c in cc if w["corpus"] == "ptb" and w["arm"] == arm]
        for k in ("1", "2", "3"):
            seeds = [c for c in cs if c["cycle"] == k]
            cos, ratio = cycle_rows[(arm, "2", k, seeds[0]["epochs"], seeds[0]["mode"])]
            assert float(cos) == pytest.approx(sum(c["dni_cos"] for c in seeds) / 2, abs=6e-5), (arm, k)
            assert float(ratio) == pytest.approx(sum(c["ratio"] for c in seeds) / 2, abs=6e-5), (arm, k)
    for corpus in paper_grid.SEEDS:
        assert (tmp_path / "paper" / f"valid_{corpus}.png").stat().st_size > 0
    text = (tmp_path / "paper" / "README.md").read_text()
    assert "No number on this page was typed by hand" in text and table in text
    assert "**Verdict** (computed from the logs): PTB (2 seeds): alternating-restarts" in text
    assert "one stream of 200-token windows" in text and "epoch-end validations" in text


def test_report_with_no_logs_says_not_run_yet(tmp_path):
    assert paper_grid.report(str(tmp_path / "paper" / "logs"), str(tmp_path / "paper")) == []
    text = (tmp_path / "paper" / "README.md").read_text()
    assert "**Verdict** (computed from the logs): not run yet." in text
    assert "Not run yet: no finished run in [`logs`](logs)" in text


def test_computed_verdict_against_the_seed_spread():
    runs = lambda *ppl: [dict(test_ppl=p) for p in ppl]  # noqa: E731
    arms = {"base": runs(150.0, 152.0), "close": runs(149.0, 151.0), "alt": runs(140.0, 141.0)}
    assert common.compare(arms, "alt", ["base"])[0]
    assert not common.compare(arms, "close", ["base"])[0]   # -1.00 is within the spread 2.00
    assert "within the seed spread of base (-1.00, spread 2.00)" in common.verdict(arms, "close", ["base"])
    # arms with different seeds are compared on the seeds both have, and one seed never "beats"
    seeded = {"base": [dict(seed=1, test_ppl=150.0), dict(seed=2, test_ppl=160.0)], "alt": [dict(seed=1, test_ppl=149.0)]}
    beats, parts = common.compare(seeded, "alt", ["base"])
    assert not beats and parts == ["lower than base by 1.00 (one seed: no spread to compare with, on seed 1 only)"]
    same = {"base": [dict(seed=1, test_ppl=150.0)], "alt": [dict(seed=1, test_ppl=150.001)]}
    assert common.compare(same, "alt", ["base"])[1] == [
        "equal to base at the 2 decimals eval-lm prints (one seed: no spread to compare with)"]


def test_the_lowest_arm_and_its_margin_in_words():
    runs = lambda *ppl: [dict(seed=s, test_ppl=p) for s, p in enumerate(ppl, 1)]  # noqa: E731
    assert common.lowest({"a": runs(140.0, 141.0), "b": runs(150.0, 152.0)}) == (
        "a", "by more than the seed spread")
    assert common.lowest({"a": runs(140.0, 141.0), "b": runs(150.0, 152.0), "c": runs(140.5, 141.5),
                               "d": runs(140.2, 141.4)}) == ("a", "within the seed spread of c, d")
    assert common.lowest({"a": runs(140.0), "b": runs(150.0)}) == ("a", "one seed: no spread")
    # equal at the printed 2 decimals: a tie, named as such
    assert common.lowest({"b": runs(150.0, 152.0), "a": runs(140.0, 141.0), "e": runs(140.001, 141.0)}) == (
        "a, tied with e", "by more than the seed spread")
    # the lowest mean over both seeds, yet higher than c on seed 1, the only one c has run
    assert common.lowest({"a": runs(140.0, 130.0), "b": runs(150.0, 152.0), "c": runs(120.0)}) == (
        "a", "higher on the seeds both ran than c")
    assert common.lowest({"a": runs(140.0, 130.0), "b": runs(150.0, 152.0), "c": runs(150.0)}) == (
        "a", "lower on one common seed only (no spread) than c")


# ---- (b) every arm ends at the bottom of a cycle ---------------------------------------------------
def schedule_flags(args):
    """The schedule flags of an arm's fairseq-train arguments (everything cosine_alternating reads)."""
    flags = ["--lr-period-epochs", value(args, "--lr-period-epochs"), "--min-lr", value(args, "--min-lr"),
             "--max-epoch", value(args, "--max-epoch")]
    flags += ["--lr-step-per-epoch"] if "--lr-step-per-epoch" in args else []
    for name in ("--mode-schedule", "--first-mode", "--real-first-epochs"):
        flags += [name, value(args, name)] if name in args else []
    return flags


ARM_CORPUS = [(c, a) for c in paper_grid.SEEDS for a in paper_grid.planned_arms(c)]


@pytest.mark.parametrize("corpus,arm", ARM_CORPUS)
def test_every_arm_ends_at_the_bottom_of_a_cycle(corpus, arm, no_data):
    from test_schedule import schedule

    from fairseq_dni.optim.lr_scheduler.cosine_alternating import Clock, cycle_of

    args = paper_grid.train_args(corpus, arm, 1, "/data/bin")
    periods = [int(p) for p in value(args, "--lr-period-epochs").split(",")]
    epochs = int(value(args, "--max-epoch"))
    assert sum(periods) == epochs == paper_grid.EPOCHS
    assert cycle_of(epochs, tuple(periods), 1)[1] == epochs   # a new cycle would start right after the run
    _, optimizer = schedule(*schedule_flags(args))
    rates = []
    for update in range(epochs * WINDOWS):
        optimizer.begin_window(Clock(update=update, epoch=update / WINDOWS))
        rates.append(optimizer.get_lr())
    last_cycle = rates[(epochs - periods[-1]) * WINDOWS:]
    assert rates[-1] == min(last_cycle) < last_cycle[0] == 1.0   # the last update runs at the cycle's lowest rate
    assert rates[-1] < 0.01   # ... near the bottom: the rate anneals within epochs, to --min-lr 0 at the end


# ---- (c) the paper's schedules, scaled by 5 -------------------------------------------------------
PAPER = {  # our arm -> the seed paper's arm as the restated training loop's arguments (tests/test_schedule.py)
    "bptt-restarts": dict(restart_base=[5]),                    # no --use_sg: real throughout
    "dni-restarts": dict(restart_base=[5], whenswitch=(2,)),    # dni-restart5
    "alternating-restarts": dict(restart_base=[5], mixture=True),   # alternating-restart5 (PTB)
    "alternating-restarts-mlp": dict(restart_base=[5], mixture=True),
    "dni-restarts-scan": dict(restart_base=[5], whenswitch=(2,)),
    "alternating-restarts-scan": dict(restart_base=[5], mixture=True),
}


def paper_arm(corpus, arm):
    if arm.startswith("alternating") and corpus == "wikitext2":
        return dict(restart_base=[5], mixture=True, whenswitch=(2,))   # WikiText-2's also --whenswitch 2
    return PAPER[arm]


def test_restart_cycles_are_the_papers_first_cycles_divided_by_5():
    ours = [int(p) for p in paper_grid.PERIODS["restarts"].split(",")]
    paper = [int(p) for p in paper_grid.PAPER_PERIODS["restarts"].split(",")]
    assert [5 * p for p in ours] == paper[: len(ours)] == [5, 5, 10]
    assert sum(ours) == paper_grid.EPOCHS


@pytest.mark.parametrize("corpus,arm", [(c, a) for c, a in ARM_CORPUS if a != "bptt-one-cycle"])
def test_each_epoch_has_the_papers_rate_and_mode_at_the_scaled_epoch(corpus, arm, no_data):
    """Our epoch k (0-based) stands for the paper's epochs 5k .. 5k+4: at every fifth of it our rate is
    the paper's (one rate per epoch) at the matching epoch, and every window's mode is the paper's at 5k."""
    from test_schedule import paper_epochs, schedule

    from fairseq_dni.optim.lr_scheduler.cosine_alternating import Clock

    assert WINDOWS % 5 == 0
    args = paper_grid.train_args(corpus, arm, 1, "/data/bin")
    assert "--lr-step-per-epoch" not in args   # 1-epoch cycles must anneal within the epoch
    arm = arm.removeprefix("qrnn-")   # a QRNN-base arm has its LSTM twin's schedule and modes
    reference = paper_epochs(5 * paper_grid.EPOCHS, **paper_arm(corpus, arm))
    _, optimizer = schedule(*schedule_flags(args))
    for k in range(paper_grid.EPOCHS):
        for j in range(WINDOWS):
            clock = Clock(update=k * WINDOWS + j, epoch=k + j / WINDOWS)
            mode = optimizer.begin_window(clock)
            if j % (WINDOWS // 5) == 0:
                lr, _ = reference[5 * k + j // (WINDOWS // 5)]
                assert optimizer.get_lr() == pytest.approx(lr, abs=1e-12), (arm, k, j)
            if arm.startswith("bptt"):
                continue   # no synthesizer: every update is real whatever the schedule's mode
            assert mode == reference[5 * k][1], (arm, k, j)
    if arm.startswith("bptt"):
        assert value(args, "--criterion") == "lm_cross_entropy" and not any(a.startswith("--dni") for a in args)
    else:
        assert value(args, "--criterion") == "dni_cross_entropy"


def test_the_one_cycle_baseline_is_one_cosine_over_the_run(no_data):
    from test_schedule import paper_epochs, schedule

    from fairseq_dni.optim.lr_scheduler.cosine_alternating import Clock

    args = paper_grid.train_args("ptb", "bptt-one-cycle", 1, "/data/bin")
    reference = paper_epochs(paper_grid.EPOCHS, restart_base=[paper_grid.EPOCHS])   # one cycle, restated
    _, optimizer = schedule(*schedule_flags(args))
    for k, (lr, _) in enumerate(reference):   # at every epoch's start: the paper's rate of that epoch
        optimizer.begin_window(Clock(update=k * WINDOWS, epoch=k))
        assert optimizer.get_lr() == pytest.approx(lr, abs=1e-12)


def test_report_only_regenerates_the_committed_page_byte_for_byte(tmp_path):
    """The study's page, table and CSV are what --report-only makes of the committed logs, byte for byte."""
    here = Path(paper_grid.__file__).parent
    (tmp_path / "notes.md").write_bytes((here / "notes.md").read_bytes())   # the hand-written reading
    paper_grid.report(str(here / "logs"), str(tmp_path))
    for name in ("README.md", "table.md", "results.csv", "cycles.csv"):
        assert (tmp_path / name).read_bytes() == (here / name).read_bytes(), f"{here / name} is stale"


def test_a_half_binarized_folder_is_one_line_and_the_data_bin_absolute(tmp_path, monkeypatch):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "dict.txt").write_text("the 1\n")
    with pytest.raises(SystemExit, match=r"has dict.txt but no train.bin, train.idx.*unfinished binarization"):
        common.binarize(str(tmp_path), str(tmp_path / "half"), "ptb", prog="paper_grid")
    for split in ("train", "valid", "test"):   # a finished one is reused, as an absolute path (runs start in REPO)
        for ext in ("bin", "idx"):
            (tmp_path / "half" / f"{split}.{ext}").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert common.binarize("nowhere", "half", "ptb") == str(tmp_path / "half")


def test_the_text_dir_takes_the_recipes_file_names(tmp_path):
    """WikiText-2 as the recipes download it (wiki.*.tokens) binarizes; a folder without any of the
    accepted names is one line naming them."""
    write_corpus(tmp_path / "text")
    for split in ("train", "valid", "test"):
        os.rename(tmp_path / "text" / f"{split}.txt", tmp_path / "text" / f"wiki.{split}.tokens")
    dest = common.binarize(str(tmp_path / "text"), str(tmp_path / "bin"), "wikitext2")
    assert sorted(os.listdir(dest)) == ["dict.txt", "preprocess.log", "test.bin", "test.idx", "train.bin",
                                        "train.idx", "valid.bin", "valid.idx"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"^studies: error: no ptb text in .*empty \(--text-dir\): it needs "
                                         r"\{train,valid,test\}.txt or wiki.\{train,valid,test\}.tokens or "
                                         r"ptb.\{train,valid,test\}.txt$"):
        common.binarize(str(tmp_path / "empty"), str(tmp_path / "bin2"), "ptb")


def test_summary_of_a_one_seed_corpus_in_progress():
    """One seed: "was lower", computed from the comparisons (compare never says "beat" without a
    spread); an incomplete grid says "present" and "so far", a complete one does not."""
    run = lambda ppl: [dict(seed=1, test_ppl_last=ppl)]  # noqa: E731
    arms = {"bptt-one-cycle": run(150.0), "alternating-restarts": run(149.0)}
    assert paper_grid.summary({"wikitext2": arms}) == (
        "WikiText-2 (1 seed): alternating-restarts was lower than every baseline present (one seed: no spread); "
        "lowest mean test perplexity among the arms with every seed run so far: alternating-restarts "
        "(one seed: no spread)")
    arms["bptt-restarts"] = run(149.0)
    arms["alternating-restarts-scan"] = run(148.0)
    assert paper_grid.summary({"wikitext2": arms}) == (
        "WikiText-2 (1 seed): alternating-restarts was not lower than every baseline (one seed: no spread); "
        "alternating-restarts-scan was lower than every baseline (one seed: no spread); "
        "alternating-restarts-scan was lower than alternating-restarts (one seed: no spread); "
        "lowest mean test perplexity: alternating-restarts-scan (one seed: no spread)")


def test_the_synthesizer_per_cycle_from_the_epoch_records():
    """Cycles of 1, 1, 2 epochs: one epoch record each, or two weighted by their updates; the norm ratio is
    the ratio of the cycle's mean norms; a cycle the run did not finish is left out; BPTT runs have none."""
    def epoch(end, synthetic, cos, pred, target):
        return dict(train_num_updates=str(end), train_dni_synthetic=str(synthetic), train_dni_cos=str(cos),
                    train_dni_pred_norm=str(pred), train_dni_target_norm=str(target))

    epochs = [epoch(100, 0, 0.1, 1.0, 4.0), epoch(250, 1, 0.2, 2.0, 5.0), epoch(300, 0.2, 0.3, 3.0, 6.0),
              epoch(450, 0.9, 0.5, 1.0, 2.0)]   # 100, 150, 50 and 150 updates
    got = paper_grid.cycle_means(epochs, [1, 1, 2])
    assert [(c["cycle"], c["epochs"], c["mode"]) for c in got] == [
        (1, "1", "real"), (2, "2", "synthetic"), (3, "3-4", "real then synthetic")]
    assert [c["dni_cos"] for c in got] == pytest.approx([0.1, 0.2, (50 * 0.3 + 150 * 0.5) / 200])
    pred, target = (50 * 3.0 + 150 * 1.0) / 200, (50 * 6.0 + 150 * 2.0) / 200
    assert [c["dni_pred_over_target"] for c in got] == pytest.approx([0.25, 0.4, pred / target])
    assert got[2]["dni_pred_norm"] == pytest.approx(pred) and got[2]["dni_target_norm"] == pytest.approx(target)
    assert [c["cycle"] for c in paper_grid.cycle_means(epochs[:3], [1, 1, 2])] == [1, 2]   # cycle 3 unfinished
    assert paper_grid.cycle_means([dict(train_num_updates="100")], [4]) == []


def test_planned_runs_without_logs_count_as_missing(tmp_path, no_data):
    """Before the scan arms' logs land: the headings count them as missing, their verdicts say so, and the
    summary's lowest arm is among those run so far."""
    log_dir = tmp_path / "paper" / "logs"
    log_dir.mkdir(parents=True)
    rng = random.Random(1)
    for corpus, seeds in paper_grid.SEEDS.items():
        for arm in paper_grid.planned_arms(corpus):
            if not arm.endswith("-scan"):
                for seed in seeds:
                    write_fake_run(log_dir, corpus, arm, seed, rng)
    paper_grid.report(str(log_dir), str(tmp_path / "paper"))
    table = (tmp_path / "paper" / "table.md").read_text()
    assert "### PTB (12 of 18 runs)" in table and "### WikiText-2 (3 of 4 runs)" in table
    assert table.count("(alternating-restarts-scan: planned, no logs yet)") == 2
    assert "(scan against coordinate-wise: dni-restarts-scan planned, no logs yet)" in table
    assert "| dni-restarts-scan |" not in table and "| dni-restarts | 2 | 3 | 3-4 | synthetic |" in table
    text = (tmp_path / "paper" / "README.md").read_text()
    assert "lowest mean test perplexity among the arms with every seed run so far" in text
    assert "alternating-restarts-scan" not in text.split("**Verdict**")[1].split("\n")[0]


@pytest.mark.parametrize("arm", ["qrnn-bptt-restarts", "qrnn-alternating-restarts-scan"])
def test_a_qrnn_arm_is_its_lstm_twin_on_the_qrnn_base(arm, no_data):
    """The QRNN-base rows change the base model and nothing else: the same command as the LSTM arm they
    are named after, but for --arch."""
    qrnn, lstm = (paper_grid.train_args("ptb", a, 1, "/data") for a in (arm, arm.removeprefix("qrnn-")))
    at = lstm.index("--arch") + 1
    assert lstm[at] == "dni_awd_lstm_lm_small" and qrnn[at] == "dni_awd_qrnn_lm_small"
    assert qrnn[:at] + qrnn[at + 1:] == lstm[:at] + lstm[at + 1:]
