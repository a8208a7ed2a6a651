"""--optimizer alternating + --lr-scheduler cosine_alternating through stock fairseq-train."""
import pytest

from helpers import USER_DIR, assert_same_weights, fairseq, launch_ranks, train_inner, train_args
from fairseq_dni.optim.lr_scheduler.cosine_alternating import learning_rate, mode_at

PERIOD, T_MULT, WARMUP, LR, MIN_LR = 10, 2, 3, 0.01, 0.0005
ALTERNATING = [
    "--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--base-optimizer", "adam",
    "--dni-lr", "0.003", "--clip-norm", "1.0",
    "--lr-scheduler", "cosine_alternating", "--lr-period-updates", PERIOD, "--t-mult", T_MULT,
    "--warmup-updates", WARMUP, "--min-lr", MIN_LR,
]


def alternating_args(data, save, *extra):
    args = train_args(data, save, *ALTERNATING, *extra)
    args[args.index("--lr") + 1] = str(LR)
    return args


def run(data, save, *extra):
    return fairseq("fairseq-train", *alternating_args(data, save, *extra))


def two_ranks(data, save, *extra):
    return launch_ranks(alternating_args(data, save, "--batch-size", "2", *extra))


def test_log_shows_mode_switch_and_lr_restart_at_every_restart(tiny_data, tmp_path):
    out = run(tiny_data, tmp_path, "--max-update", "75")
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


@pytest.mark.parametrize("runner", [run, two_ranks], ids=["one-rank", "two-ranks"])
def test_resume_mid_cycle_matches_the_uninterrupted_run(tiny_data, tmp_path, runner):
    """Stopped at update 26 (mid-epoch, mid-cycle, in real mode), resumed to 45: the same logged
    losses, learning rates, modes and synthesizer losses, and bitwise the same final weights.
    With two ranks, every rank's carried state and pending regression pair travel in rank 0's
    checkpoint."""
    common = ["--save-interval-updates", "13", "--no-epoch-checkpoints"]
    whole = train_inner(runner(tiny_data, tmp_path / "whole", "--max-update", "45", *common))
    runner(tiny_data, tmp_path / "split", "--max-update", "26", *common)
    resumed = train_inner(runner(tiny_data, tmp_path / "split", "--max-update", "45", *common))
    assert [int(r["num_updates"]) for r in resumed] == list(range(27, 46))
    for a, b in zip(whole[26:], resumed):
        for key in ("loss", "lr", "dni_synthetic", "dni_loss", "gnorm"):
            assert a[key] == b[key], (a["num_updates"], key, a[key], b[key])
    assert_same_weights(tmp_path / "whole" / "checkpoint_last.pt", tmp_path / "split" / "checkpoint_last.pt",
                        parts=("model", "criterion"))


def test_two_ranks_switch_mode_at_the_same_update(tiny_data, tmp_path):
    """dni_synthetic is summed over ranks and windows: any disagreement would log a fraction."""
    rows = train_inner(two_ranks(tiny_data, tmp_path, "--max-update", "40"))
    assert len(rows) == 40
    modes = [float(r["dni_synthetic"]) for r in rows]
    assert set(modes) == {0.0, 1.0}
    assert [i for i in range(1, 40) if modes[i] != modes[i - 1]] == [13, 33]


@pytest.mark.parametrize("flags,message", [
    (["--lr-period-updates", "0"], "--lr-period-updates must be a positive integer"),
    (["--t-mult", "0"], "--t-mult must be an integer >= 1"),
    (["--mode-schedule", "sometimes"], "invalid choice"),
])
def test_impossible_schedule_is_a_clear_error(tiny_data, tmp_path, flags, message):
    args = train_args(tiny_data, tmp_path, *ALTERNATING, "--max-update", "2")
    out = fairseq("fairseq-train", *args, *flags, check=False)
    assert message in out



@pytest.mark.parametrize("before,after", [("adam", "sgd"), ("sgd", "nag")])  # a KeyError; silently plain SGD
def test_resuming_with_another_base_optimizer_says_reset_the_optimizer(tiny_data, tmp_path, before, after):
    """fairseq compares only the optimizer's class (here always 'alternating'); we compare the base
    optimizers, and say it as fairseq does, in one line, before any update."""
    short = ("--lr-period-updates", "3", "--warmup-updates", "0")  # a cycle that fits the 3 updates
    run(tiny_data, tmp_path, "--max-update", "3", "--base-optimizer", before, *short)
    out = fairseq("fairseq-train", *alternating_args(tiny_data, tmp_path, "--max-update", "6",
                                                     "--base-optimizer", after, *short), check=False)
    assert ("fairseq-dni: error: Optimizer does not match; please reset the optimizer (--reset-optimizer). "
            f"The checkpoint's --base-optimizer is {before}, this run's is {after}") in out
    assert "Traceback" not in out
    if before == "adam":  # the way out fairseq names works (it also restarts the update count)
        resumed = fairseq("fairseq-train", *alternating_args(tiny_data, tmp_path, "--max-update", "6",
                                                             "--base-optimizer", after, "--reset-optimizer", *short))
        assert "Loaded checkpoint" in resumed and len(train_inner(resumed)) == 6


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
