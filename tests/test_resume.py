"""Resume. A training run killed with SIGKILL mid-epoch, restarted with the same command, continues as if
nothing happened: same mode, learning rate, synthesizer (and its own recurrent state), stream
position and losses; with one rank and with two. A resume mid-cycle equals the uninterrupted run; a
resume with another stream layout continues at the same token position or restarts the epoch, and
says so; checkpoints load under torch's safe unpickler."""
import os
import re
import signal
import subprocess

import pytest

import numpy as np
import torch

from helpers import (
    BIN,
    assert_same_weights,
    fairseq,
    launch_ranks,
    run_alternating,
    run_alternating_two_ranks,
    start_ranks,
    train_args,
    train_inner,
)
from fairseq_dni.data.stream_windows import StreamWindows

PAD, EOS = 1, 2

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


def resumed_rows(tiny_data, save, first_updates, *changed):
    """Train ``first_updates`` windows of 4 streams x 5 tokens, then resume for 3 more with ``changed``."""
    base = ["--tokens-per-sample", "5", "--save-interval-updates", "1000", "--no-epoch-checkpoints"]
    fairseq("fairseq-train", *train_args(tiny_data, save, *base, "--max-update", first_updates))
    out = fairseq("fairseq-train", *train_args(tiny_data, save, *base, "--max-update", first_updates + 3, *changed))
    return out, train_inner(out)


def test_resume_with_a_longer_window_continues_at_the_same_token_position(tiny_data, tmp_path):
    """6 windows of 5 tokens = 30 tokens into every stream = the start of window 3 of 10 tokens."""
    out, rows = resumed_rows(tiny_data, tmp_path, 6, "--tokens-per-sample", "10")
    assert "resuming 30 tokens into each of the 4 streams: window 3 of the new layout (was window 6)" in out
    windows = len(StreamWindows(np.zeros(2233), 4, 10, PAD, EOS))
    # fairseq logs the fraction of the epoch done: windows 3, 4, 5 of the new layout ran
    assert [round(float(r["update"]) * windows) for r in rows] == [4, 5, 6]


@pytest.mark.parametrize("first_updates,changed,layout", [
    (6, ["--batch-size", "8"], "8 streams of 5-token windows"),     # other streams: other corpus positions
    (7, ["--tokens-per-sample", "10"], "4 streams of 10-token windows"),  # 35 tokens: no window starts there
])
def test_resume_with_another_layout_restarts_the_epoch_and_says_why(tiny_data, tmp_path, first_updates, changed,
                                                                     layout):
    out, rows = resumed_rows(tiny_data, tmp_path, first_updates, *changed)
    line = [l for l in out.splitlines() if "no window starts at that position" in l]
    assert len(line) == 1 and f"stopped {first_updates * 5} tokens into each of 4 streams (5-token windows)" in line[0]
    assert f"this run reads {layout}" in line[0] and "epoch 1 restarts from its first window" in line[0]
    windows = len(StreamWindows(np.zeros(2233), int(layout.split()[0]), int(layout.split()[3].split("-")[0]), PAD, EOS))
    assert [round(float(r["update"]) * windows) for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("runner", [run_alternating, run_alternating_two_ranks], ids=["one-rank", "two-ranks"])
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


class Payload:
    """Unpickling this would run code (it writes a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_load_with_torch_safe_unpickler_and_code_is_refused(tiny_checkpoint, tmp_path):
    # our checkpoints load under torch's restricted unpickler, unchanged
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert "decoder.lstm.weight_hh_l0" in state["model"]
    # a checkpoint that would execute code is refused by fairseq's own loader
    marker = tmp_path / "pwned"
    evil = dict(state, extra_state={"x": Payload(marker)})
    torch.save(evil, tmp_path / "evil.pt")
    script = (
        "import sys, fairseq_dni\n"
        "from fairseq import checkpoint_utils\n"
        f"checkpoint_utils.load_checkpoint_to_cpu({str(tmp_path / 'evil.pt')!r})\n"
    )
    proc = subprocess.run([os.path.join(BIN, "python"), "-c", script], capture_output=True, text=True)
    assert proc.returncode != 0 and "UnpicklingError" in proc.stderr + proc.stdout
    assert not marker.exists()


def test_legacy_checkpoint_objects_load_only_through_the_allow_list(tiny_checkpoint, tmp_path):
    """A fairseq checkpoint holding a legacy Namespace and numpy scalars loads safely with the plugin."""
    import argparse

    import numpy as np

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    state["extra_state"]["best"] = np.float64(state["extra_state"]["best"])
    state["legacy_args"] = argparse.Namespace(arch="dni_lstm_lm_small")
    torch.save(state, tmp_path / "legacy.pt")
    script = (
        "import sys\n"
        "from fairseq import checkpoint_utils\n"
        "path = sys.argv[1]\n"
        "try:\n"
        "    checkpoint_utils.load_checkpoint_to_cpu(path)\n"
        "    print('LOADED-WITHOUT-PLUGIN')\n"
        "except Exception as e:\n"
        "    print('REFUSED-WITHOUT-PLUGIN')\n"
        "import fairseq_dni\n"
        "state = checkpoint_utils.load_checkpoint_to_cpu(path)\n"
        "print('LOADED', state['legacy_args'].arch, float(state['extra_state']['best']))\n"
    )
    out = subprocess.run([os.path.join(BIN, "python"), "-c", script, str(tmp_path / "legacy.pt")],
                         capture_output=True, text=True).stdout
    assert "REFUSED-WITHOUT-PLUGIN" in out and "LOADED dni_lstm_lm_small" in out
