"""A training run killed with SIGKILL mid-epoch, restarted with the same command, continues as if
nothing happened: same mode, learning rate, synthesizer (and its own recurrent state), stream
position and losses; with one rank and with two."""
import os
import re
import signal
import subprocess

import pytest

from helpers import BIN, assert_same_weights, fairseq, launch_ranks, start_ranks, train_args, train_inner

ALTERNATING = [
    "--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--dni-lr", "0.003",
    "--lr-scheduler", "cosine_alternating", "--lr-period-updates", "40", "--t-mult", "2",
    "--save-interval-updates", "25", "--no-epoch-checkpoints",
]
COORDINATEWISE = ["--dni-synthesizer", "coordinatewise", "--dni-synthesizer-hidden", "8"]
# AWD-LSTM at toy size: weight drop 0.5, locked and embedding dropout, AR/TAR, variable windows around 12 tokens
AWD = ["--arch", "dni_awd_lstm_lm", "--decoder-embed-dim", "8", "--decoder-hidden-size", "12", "--alpha", "2",
       "--beta", "1", "--variable-window", "--tokens-per-sample", "12",
       "--dni-synthesizer-cell", "qrnn"]  # the paper's base model with the paper's synthesizer cell


def by_update(out):
    return {int(r["num_updates"]): r for r in train_inner(out)}


def kill_after_checkpoint(procs, at):
    """SIGKILL every process right after rank 0 reports a checkpoint at >= ``at`` updates."""
    killed_after = None
    for line in procs[0].stdout:
        m = re.search(r"Saved checkpoint .*@ (\d+) updates", line)
        if m and int(m.group(1)) >= at:
            killed_after = int(m.group(1))
            for p in procs:
                os.kill(p.pid, signal.SIGKILL)
            break
    for p in procs:
        p.communicate()
    assert killed_after is not None and all(p.returncode == -signal.SIGKILL for p in procs)
    return killed_after


@pytest.mark.parametrize("synthesizer,ranks,updates,kill_at", [
    ("mlp", 1, 240, 100), ("coordinatewise", 1, 120, 50), ("coordinatewise", 2, 120, 50),
    ("coordinatewise-awd", 1, 120, 50)])
def test_sigkill_then_same_command_resumes_exactly(tiny_data, tmp_path, synthesizer, ranks, updates, kill_at):
    """coordinatewise-awd: the same with dni_awd_lstm_lm's weight drop, dropouts, AR/TAR and variable windows
    (their masks and window lengths must come out the same after the restart), and the QRNN cell (its carried
    previous input and flag)."""
    extra = [*ALTERNATING, "--max-update", updates, *(COORDINATEWISE if synthesizer.startswith("coordinatewise") else []),
             *(AWD if synthesizer.endswith("awd") else [])]
    env = dict(PYTHONUNBUFFERED="1")
    if ranks == 1:
        whole = by_update(fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "whole", *extra)))
        command = [os.path.join(BIN, "fairseq-train"), *map(str, train_args(tiny_data, tmp_path / "killed", *extra))]
        full_env = dict(os.environ, OMP_NUM_THREADS="1", **env)
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)]
        killed_after = kill_after_checkpoint(procs, kill_at)
        resumed_out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=full_env).stdout
    else:  # 2 ranks x 2 streams
        two = ["--batch-size", "2"]
        whole = by_update(launch_ranks(train_args(tiny_data, tmp_path / "whole", *extra, *two)))
        args = train_args(tiny_data, tmp_path / "killed", *extra, *two)
        killed_after = kill_after_checkpoint(start_ranks(args, 2, **env), kill_at)
        resumed_out = launch_ranks(args)
    resumed = by_update(resumed_out)
    assert "Loaded checkpoint" in resumed_out
    # it resumes after the last checkpoint written before the kill landed (kill_at, or a later one)
    first = min(resumed)
    print(f"killed after the checkpoint at {killed_after}; resumed at update {first}")
    assert (first - 1) % 25 == 0 and killed_after <= first - 1 < updates and max(resumed) == updates
    for update, row in resumed.items():
        for key in ("loss", "lr", "dni_synthetic", "gnorm", "dni_loss", "ar", "tar", "wpb"):
            assert row.get(key) == whole[update].get(key), (update, key)
    if synthesizer.endswith("awd"):  # the regularisers ran, and windows varied (epochs end at 48 and 94 here)
        assert all(float(row["ar"]) > 0 and "tar" in row for row in resumed.values())  # tar: often < 1e-5
        assert len({row["wpb"] for row in resumed.values()}) > 3
    assert_same_weights(tmp_path / "whole" / "checkpoint_last.pt", tmp_path / "killed" / "checkpoint_last.pt",
                        parts=("model", "criterion"))
