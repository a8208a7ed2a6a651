"""A training run killed with SIGKILL mid-epoch, restarted with the same command, continues as if
nothing happened: same mode, learning rate, synthesizer, stream position and losses."""
import os
import re
import signal
import subprocess

from conftest import BIN, assert_same_weights, fairseq, train_args, train_inner

ALTERNATING = [
    "--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--dni-lr", "0.003",
    "--lr-scheduler", "cosine_alternating", "--lr-period-updates", "40", "--t-mult", "2",
    "--max-update", "240", "--save-interval-updates", "25", "--no-epoch-checkpoints",
]


def by_update(out):
    return {int(r["num_updates"]): r for r in train_inner(out)}


def test_sigkill_then_same_command_resumes_exactly(tiny_data, tmp_path):
    whole = by_update(fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "whole", *ALTERNATING)))
    command = [os.path.join(BIN, "fairseq-train"), *map(str, train_args(tiny_data, tmp_path / "killed", *ALTERNATING))]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    killed_after = None
    for line in proc.stdout:  # kill right after the checkpoint at update 100 is on disk
        m = re.search(r"Saved checkpoint .*@ (\d+) updates", line)
        if m and int(m.group(1)) >= 100:
            killed_after = int(m.group(1))
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert killed_after is not None and proc.returncode == -signal.SIGKILL
    resumed_out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=env).stdout
    resumed = by_update(resumed_out)
    assert "Loaded checkpoint" in resumed_out
    # it resumes after the last checkpoint written before the kill landed (100, or a later one)
    first = min(resumed)
    print(f"killed after the checkpoint at {killed_after}; resumed at update {first}")
    assert (first - 1) % 25 == 0 and killed_after <= first - 1 < 240 and max(resumed) == 240
    for update, row in resumed.items():
        for key in ("loss", "lr", "dni_synthetic", "gnorm"):
            assert row[key] == whole[update][key], (update, key)
    assert_same_weights(tmp_path / "whole" / "checkpoint_last.pt", tmp_path / "killed" / "checkpoint_last.pt",
                        parts=("model", "criterion"))
