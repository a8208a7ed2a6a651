"""cosine_alternating: restart boundaries, learning rates and modes against an independent reference, and
through fairseq-train (the logged lr and dni_synthetic of every update)."""
import math
import re

import numpy as np
import pytest
import torch

from helpers import (
    DNI,
    LR,
    MIN_LR,
    PERIOD,
    T_MULT,
    USER_DIR,
    WARMUP,
    fairseq,
    run_alternating,
    run_alternating_two_ranks,
    train_args,
    train_inner,
)
from fairseq_dni.data.stream_windows import StreamWindows, window_boundaries

from fairseq_dni.optim.lr_scheduler.cosine_alternating import (
    check_schedule,
    cycle_of,
    learning_rate,
    mode_at,
)

PAD, EOS = 1, 2


def reference(limit, period, t_mult, warmup):
    """Walk the updates one by one: cycle index and position of every update < limit."""
    cycles, i, pos, length = [], 0, 0, warmup + period  # warm-up + first period = cycle 0
    for _ in range(limit):
        cycles.append((i, pos, length))
        pos += 1
        if pos == length:
            i, pos = i + 1, 0
            length = period * t_mult ** i
    return cycles


SETTINGS = [(7, 1, 0), (7, 1, 3), (5, 2, 0), (5, 2, 4), (3, 3, 2), (100, 3, 0), (2, 10, 1), (4, 10, 0)]


@pytest.mark.parametrize("period,t_mult,warmup", SETTINGS)
def test_every_update_falls_in_the_reference_cycle(period, t_mult, warmup):
    limit = 13000 if period == 100 else 2500
    expected = reference(limit, period, t_mult, warmup)
    for u, (i, pos, length) in enumerate(expected):
        got_i, start, got_len = cycle_of(u, period, t_mult, warmup)
        assert got_i == i, (u, got_i, i)
        assert u - start == pos or (i == 0 and u == pos)


def test_the_boundary_fairseq_cosine_gets_wrong():
    """period 100, t_mult 3: cycles start at 100, 400, 1300, 4000, 12100."""
    assert [u for u in range(1, 13000) if cycle_of(u, 100, 3)[1] == u] == [100, 400, 1300, 4000, 12100]
    assert cycle_of(12099, 100, 3)[0] == 4 and cycle_of(12100, 100, 3)[0] == 5
    # fairseq's own formula: i = floor(log(1 - t/P * (1 - t_mult), t_mult))
    fairseq_i = math.floor(math.log(1 - 12100 / 100 * (1 - 3), 3))
    assert fairseq_i == 4  # one cycle late: the restart at 12100 is missed by the float log
    assert learning_rate(12100, 1.0, 0.0, 100, 3) == pytest.approx(1.0)       # restarted
    assert learning_rate(12099, 1.0, 0.0, 100, 3) < 1e-6                      # end of cycle 4


@pytest.mark.parametrize("period,t_mult,warmup", SETTINGS)
def test_learning_rate_restarts_at_peak_and_anneals_to_min(period, t_mult, warmup):
    peak, low, shrink = 0.5, 0.01, 0.8
    limit = 2500
    for u, (i, pos, length) in enumerate(reference(limit, period, t_mult, warmup)):
        lr = learning_rate(u, peak, low, period, t_mult, warmup, warmup_init_lr=0.0, lr_shrink=shrink)
        if u < warmup:
            assert lr == pytest.approx(peak * u / warmup)
            continue
        start, span = (warmup, period) if i == 0 else (u - pos, length)
        want = low + 0.5 * (peak * shrink ** i - low) * (1 + math.cos(math.pi * (u - start) / span))
        assert lr == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("period,t_mult,warmup", SETTINGS)
@pytest.mark.parametrize("first,per_switch", [("synthetic", 1), ("real", 1), ("synthetic", 2)])
def test_mode_switches_exactly_at_restarts(period, t_mult, warmup, first, per_switch):
    other = {"synthetic": "real", "real": "synthetic"}[first]
    for u, (i, _, _) in enumerate(reference(2500, period, t_mult, warmup)):
        want = first if (i // per_switch) % 2 == 0 else other
        assert mode_at(u, period, t_mult, warmup, "alternate", first, per_switch) == want
    assert {mode_at(u, period, t_mult, warmup, "real") for u in range(300)} == {"real"}
    assert {mode_at(u, period, t_mult, warmup, "synthetic") for u in range(300)} == {"synthetic"}


@pytest.mark.parametrize("bad,message", [
    (dict(period=0), "--lr-period-updates must be a positive integer"),
    (dict(period=-5), "--lr-period-updates must be a positive integer"),
    (dict(t_mult=0), "--t-mult must be an integer >= 1"),
    (dict(t_mult=1.5), "--t-mult must be an integer >= 1"),
    (dict(warmup=-1), "--warmup-updates must be >= 0"),
    (dict(lr_shrink=0), "--lr-shrink must be in"),
    (dict(restarts_per_switch=0), "--restarts-per-switch must be >= 1"),
    (dict(mode_schedule="sometimes"), "--mode-schedule must be"),
    (dict(first_mode="fake"), "--first-mode must be"),
])
def test_impossible_schedules_are_refused(bad, message):
    args = dict(period=10, t_mult=2, warmup=0, lr_shrink=1.0, restarts_per_switch=1,
                mode_schedule="alternate", first_mode="synthetic")
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        check_schedule(**args)


# ---- the seed paper's epoch schedules ------------------------------------------------------------
def paper_epochs(epochs, restart_base, restart_lr=True, mixture=False, whenswitch=()):
    """Reference: the learning rate (peak 1) and mode of every epoch as the seed paper's training
    loop sets them (parap1uie-s/alternate_sg main.py, restated here: one learning rate per epoch
    from a cosine over the current cycle, ``restart_base`` giving the cycles' ends; at every
    restart the mode flips if ``mixture``, and at the epochs in ``whenswitch``; it starts real)."""
    synthetic, restarted, step, end = False, False, 0, restart_base[0]
    out = []
    for epoch in range(1, epochs + 1):
        lr = 1.0
        if restart_lr:
            length = end - end / 2 if restarted else end  # after the first restart a cycle is half its end
            t = epoch - 1 - (end / 2 if restarted else 0)
            lr = 0.5 * (math.cos(math.pi * (t % length) / length) + 1)
        if epoch > end:
            restarted = True
            if len(restart_base) > 1:
                step += 1
                end = restart_base[step]
            else:
                end *= 2
            lr = 1.0
            if mixture:
                synthetic = not synthetic
        if epoch in whenswitch:
            synthetic = not synthetic
        out.append((lr, "synthetic" if synthetic else "real"))
    return out


PAPER_ARMS = {  # arm of the alternate_sg README: (its flags, as paper_epochs arguments; our cosine_alternating flags)
    "DNI": (dict(restart_base=[9999], restart_lr=False, whenswitch=(2,)),
            ["--lr-period-epochs", "320", "--min-lr", "1.0", "--mode-schedule", "synthetic", "--real-first-epochs", "1"]),
    "DNI restart 160": (dict(restart_base=[160, 320], whenswitch=(2,)),
                        ["--lr-period-epochs", "160,160", "--mode-schedule", "synthetic", "--real-first-epochs", "1"]),
    "DNI restart 5": (dict(restart_base=[5], whenswitch=(2,)),
                      ["--lr-period-epochs", "5,5,10,20,40,80,160", "--mode-schedule", "synthetic",
                       "--real-first-epochs", "1"]),
    "alternating 160 (PTB)": (dict(restart_base=[160, 320], mixture=True),
                              ["--lr-period-epochs", "160,160", "--first-mode", "real"]),
    "alternating 5 (PTB)": (dict(restart_base=[5], mixture=True),
                            ["--lr-period-epochs", "5,5,10,20,40,80,160", "--first-mode", "real"]),
    "alternating 160 (WT2)": (dict(restart_base=[160, 320], mixture=True, whenswitch=(2,)),
                              ["--lr-period-epochs", "160,160", "--first-mode", "synthetic", "--real-first-epochs", "1"]),
    "alternating 5 (WT2)": (dict(restart_base=[5], mixture=True, whenswitch=(2,)),
                            ["--lr-period-epochs", "5,5,10,20,40,80,160", "--first-mode", "synthetic",
                             "--real-first-epochs", "1"]),
}


def schedule(*flags):
    import torch
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_dni  # noqa: F401
    from fairseq_dni.optim.alternating import AlternatingOptimizer
    from fairseq_dni.optim.lr_scheduler.cosine_alternating import CosineAlternatingSchedule

    args = options.parse_args_and_arch(options.get_training_parser(), [
        "unused", "--task", "language_modeling", "--arch", "lstm_lm", "--optimizer", "alternating", "--lr", "1.0",
        "--lr-scheduler", "cosine_alternating", "--max-epoch", "320", "--cpu", *flags])
    cfg = convert_namespace_to_omegaconf(args)
    optimizer = AlternatingOptimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    return CosineAlternatingSchedule(cfg.lr_scheduler, optimizer), optimizer


@pytest.mark.parametrize("arm", list(PAPER_ARMS))
@pytest.mark.parametrize("per_epoch", [True, False], ids=["paper-step-per-epoch", "annealed-within-epochs"])
def test_paper_epoch_schedules_match_the_papers_training_loop(arm, per_epoch):
    from fairseq_dni.optim.alternating import Clock

    paper, flags = PAPER_ARMS[arm]
    sched, optimizer = schedule(*flags, *(["--lr-step-per-epoch"] if per_epoch else []))
    reference = paper_epochs(320, **paper)
    windows = 8  # every window of every epoch (epochs of 8 windows here; their number does not matter)
    update = 0
    for epoch, (lr, mode) in enumerate(reference, start=1):
        for j in range(windows):
            clock = Clock(update=update, epoch=epoch - 1 + j / windows)
            assert optimizer.begin_window(clock) == mode, (arm, epoch, j)
            if per_epoch or j == 0:  # the paper holds each epoch's rate; we match it at the epoch's start
                assert optimizer.get_lr() == pytest.approx(lr, abs=1e-12), (arm, epoch, j)
            elif paper.get("restart_lr", True):  # and anneal in between: between this epoch's rate and the next's
                following = reference[epoch][0] if epoch < 320 and reference[epoch][0] < lr else 0.0
                assert following <= optimizer.get_lr() <= lr, (arm, epoch, j)
            update += 1


@pytest.mark.parametrize("flags,message", [
    (["--lr-period-epochs", "5", "--lr-period-updates", "100"], "not both"),
    (["--lr-period-epochs", "400"], "the first cosine cycle (400 epochs) is longer than the run (--max-epoch 320)"),
    (["--lr-period-epochs", "5", "--real-first-epochs", "320"], "--real-first-epochs 320 covers the whole run"),
    (["--lr-period-epochs", "5,0,10"], "--lr-period-epochs must be positive integers"),
    (["--lr-period-epochs", "5,x"], "--lr-period-epochs takes comma-separated integers"),
    (["--lr-period-updates", "10", "--real-first-epochs", "1"], "--real-first-epochs and --lr-step-per-epoch need"),
    (["--lr-period-epochs", "5", "--warmup-updates", "10"], "with --lr-period-epochs give the real first phase"),
    (["--lr-period-updates", "10", "--max-update", "100", "--real-first-updates", "100"],
     "--real-first-updates 100 covers the whole run (--max-update 100)"),
    (["--lr-period-updates", "60", "--warmup-updates", "50", "--max-update", "100"],
     "the first cosine cycle (110 updates) is longer than the run (--max-update 100)"),
])
def test_epoch_schedule_settings_that_cannot_work_are_refused(flags, message):
    from fairseq_dni.errors import DNIUserError

    with pytest.raises(DNIUserError, match=re.escape(message)):
        schedule(*flags)


def test_epoch_clock_needs_the_alternating_optimizer():
    import torch
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.optim.sgd import SGD

    from fairseq_dni.errors import DNIUserError
    from fairseq_dni.optim.lr_scheduler.cosine_alternating import CosineAlternatingSchedule

    args = options.parse_args_and_arch(options.get_training_parser(), [
        "unused", "--task", "language_modeling", "--arch", "lstm_lm", "--optimizer", "sgd", "--lr", "1.0",
        "--lr-scheduler", "cosine_alternating", "--lr-period-epochs", "2", "--max-epoch", "4", "--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    with pytest.raises(DNIUserError, match="--lr-period-epochs needs --optimizer alternating"):
        CosineAlternatingSchedule(cfg.lr_scheduler, SGD(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))]))


def test_log_shows_mode_switch_and_lr_restart_at_every_restart(tiny_data, tmp_path):
    out = run_alternating(tiny_data, tmp_path, "--max-update", "75")
    rows = train_inner(out)
    assert len(rows) == 75
    for row in rows:
        done = int(row["num_updates"])      # update done-1 (0-based) just ran
        want_mode = mode_at(done - 1, PERIOD, T_MULT, WARMUP)
        assert float(row["dni_synthetic"]) == (1.0 if want_mode == "synthetic" else 0.0), done
        # fairseq logs the learning rate set for the next update
        assert float(row["lr"]) == pytest.approx(learning_rate(done, LR, MIN_LR, PERIOD, T_MULT, WARMUP, MIN_LR), rel=1e-5)
    modes = [float(r["dni_synthetic"]) for r in rows]
    switches = [i for i in range(1, len(modes)) if modes[i] != modes[i - 1]]
    assert switches == [13, 33, 73]  # cycles start after warm-up 3 + 10, then + 20, then + 40
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[12] == pytest.approx(LR) and lrs[11] < LR / 10  # the restart: back to the peak
    scored = fairseq("fairseq-eval-lm", tiny_data, "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                     "--path", tmp_path / "checkpoint_last.pt", "--batch-size", "3", "--cpu", "--num-workers", "0")
    assert "Evaluated 257 tokens" in scored


def test_two_ranks_switch_mode_at_the_same_update(tiny_data, tmp_path):
    """dni_synthetic is summed over ranks and windows: any disagreement would log a fraction."""
    rows = train_inner(run_alternating_two_ranks(tiny_data, tmp_path, "--max-update", "40"))
    assert len(rows) == 40
    modes = [float(r["dni_synthetic"]) for r in rows]
    assert set(modes) == {0.0, 1.0}
    assert [i for i in range(1, 40) if modes[i] != modes[i - 1]] == [13, 33]


def test_epoch_cycles_with_variable_windows_through_fairseq_train(tiny_data, tmp_path):
    """--lr-period-epochs 1,1,2 over 4 epochs of AWD-style variable windows (their number changes from
    epoch to epoch): every update's learning rate is the cosine at the fraction of epochs done, the
    first epoch is real (--real-first-epochs 1), the mode switches exactly at the epoch boundaries."""
    import math

    import numpy as np

    from fairseq_dni.data.stream_windows import StreamWindows, window_boundaries

    args = train_args(tiny_data, tmp_path, "--criterion", "dni_cross_entropy", "--optimizer", "alternating",
                      "--dni-lr", "0.003", "--lr-scheduler", "cosine_alternating", "--lr-period-epochs", "1,1,2",
                      "--real-first-epochs", "1", "--max-epoch", "4", "--tokens-per-sample", "10",
                      "--variable-window", "--seed", "5")
    rows = train_inner(fairseq("fairseq-train", *args))
    length = StreamWindows(np.zeros(2233), 4, 10, 1, 2).stream_length
    per_epoch = [len(window_boundaries(length, 10, True, 5, e)) - 1 for e in range(1, 5)]
    assert len(set(per_epoch)) > 1 and len(rows) == sum(per_epoch)
    expected = []
    for epoch, n in enumerate(per_epoch, start=1):
        for i in range(n):
            done = epoch - 1 + i / n
            start, span = (0, 1) if done < 1 else (1, 1) if done < 2 else (2, 2)
            mode = "real" if epoch == 1 else ("synthetic", "real", "synthetic")[[0, 1, 2, 2][epoch - 1]]
            expected.append((0.01 * 0.5 * (1 + math.cos(math.pi * (done - start) / span)), mode))
    for row, (lr, mode) in zip(rows, expected):
        assert float(row["lr"]) == pytest.approx(lr, rel=1e-4, abs=1e-9), row["num_updates"]
        assert float(row["dni_synthetic"]) == (1.0 if mode == "synthetic" else 0.0), row["num_updates"]


def test_variable_windows_scale_the_learning_rate_by_their_length(tiny_data, tmp_path):
    """AWD-LSTM scales each update's learning rate by its window length / T. With SGD and no momentum
    the update is lr * factor * grad, so the LM's weights after one step tell the factor used."""
    args = ["--tokens-per-sample", "12", "--variable-window", "--optimizer", "sgd", "--lr", "1.0",
            "--max-update", "1", "--seed", "3"]
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "var", *args))
    assert float(train_inner(out)[0]["lr"]) == 1.0  # the logged learning rate stays the schedule's
    windows = window_boundaries(StreamWindows(np.zeros(2233), 4, 12, PAD, EOS).stream_length, 12, True, 3, 1)
    factor = (windows[1] - windows[0]) / 12
    assert factor != 1.0
    # the output bias starts at zero, so after one SGD step it is -lr * factor * grad; the same first
    # window as a fixed window, unscaled, gives -lr * grad
    w1 = torch.load(tmp_path / "var" / "checkpoint_last.pt", weights_only=True)["model"]["decoder.output_projection.bias"]
    fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "fixed", "--tokens-per-sample", str(windows[1]),
                                         "--optimizer", "sgd", "--lr", "1.0", "--max-update", "1", "--seed", "3"))
    w_fixed = torch.load(tmp_path / "fixed" / "checkpoint_last.pt", weights_only=True)["model"][
        "decoder.output_projection.bias"]
    torch.testing.assert_close(w1, w_fixed * factor, rtol=1e-5, atol=1e-7)


def test_dni_mode_that_agrees_with_the_schedule_runs(tiny_data, tmp_path):
    rows = train_inner(fairseq("fairseq-train", *train_args(
        tiny_data, tmp_path, *DNI, "--dni-mode", "real", "--lr-scheduler", "cosine_alternating",
        "--lr-period-updates", "5", "--mode-schedule", "real", "--max-update", "12")))
    assert len(rows) == 12 and all(float(r["dni_synthetic"]) == 0 for r in rows)
