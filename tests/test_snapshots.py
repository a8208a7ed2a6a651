"""Cycle-end snapshots (--keep-cycle-ends, fairseq_dni/snapshots.py).

* which positions end a cycle, and the cycle's number and mode, against hand-listed boundaries
  (updates with warm-up and t_mult 2; epochs with listed lengths; a real-first phase);
* the start-up check: a cycle end that fairseq would not save is one line naming the flag;
* through fairseq-train: the kept files are byte for byte the checkpoints fairseq wrote at the cycle
  ends (update clock; epoch clock), survive --keep-interval-updates, and nothing else is kept.
"""
import filecmp
import os
import pathlib
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from helpers import REPO, fairseq, train_args
from fairseq_dni.errors import DNIUserError
from fairseq_dni.snapshots import check_saves, cycle_end

ALTERNATING = ["--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--base-optimizer", "adam",
               "--dni-lr", "0.003", "--lr-scheduler", "cosine_alternating", "--keep-cycle-ends"]


def schedule(**values):
    defaults = dict(lr_period_updates=None, lr_period_epochs=None, warmup_updates=0, t_mult=1,
                    mode_schedule="alternate", first_mode="synthetic", restarts_per_switch=1,
                    real_first_updates=0, real_first_epochs=0, max_update=0, max_epoch=0,
                    save_interval_updates=0, save_interval=1, no_save=False)
    return SimpleNamespace(**{**defaults, **values})


def ends(cfg, limit):
    return {p: cycle_end(cfg, p) for p in range(limit + 1) if cycle_end(cfg, p)}


def test_cycle_ends_in_updates_with_warmup_and_t_mult():
    cfg = schedule(lr_period_updates=400, t_mult=2, warmup_updates=100)
    # cycle 1 = warm-up 100 + 400; then 800, 1600
    assert ends(cfg, 3000) == {500: (1, "synthetic"), 1300: (2, "real"), 2900: (3, "synthetic")}


def test_cycle_ends_in_epochs_with_listed_lengths_and_real_first():
    cfg = schedule(lr_period_epochs="1,1,2", t_mult=2, first_mode="real", real_first_epochs=1)
    assert ends(cfg, 8) == {1: (1, "real"), 2: (2, "synthetic"), 4: (3, "real"), 8: (4, "synthetic")}
    assert cycle_end(cfg, 1.5) is None and cycle_end(cfg, 3) is None
    one_mode = schedule(lr_period_updates=10, mode_schedule="real")
    assert ends(one_mode, 30) == {10: (1, "real"), 20: (2, "real"), 30: (3, "real")}


@pytest.mark.parametrize("values,message", [
    (dict(lr_period_updates=10), "needs --save-interval-updates"),
    (dict(lr_period_updates=10, save_interval_updates=4, max_update=40), "after update 10, which is not a multiple"),
    (dict(lr_period_updates=10, warmup_updates=5, save_interval_updates=10), "after update 15"),
    (dict(lr_period_epochs="1", t_mult=2, save_interval=2, max_epoch=7), "after epoch 1"),
    (dict(lr_period_updates=10, save_interval_updates=10, no_save=True), "--no-save"),
])
def test_a_cycle_end_without_a_save_is_refused(values, message):
    with pytest.raises(DNIUserError, match=message):
        check_saves(schedule(**values))


def test_saves_on_every_cycle_end_pass():
    check_saves(schedule(lr_period_updates=10, t_mult=2, save_interval_updates=10, max_update=75))  # 75 ends the run
    check_saves(schedule(lr_period_updates=10, warmup_updates=5, save_interval_updates=5))
    check_saves(schedule(lr_period_epochs="5,5,10", t_mult=2, save_interval=5, max_epoch=40))


def test_the_flag_refuses_a_run_that_would_miss_a_cycle_end(tiny_data, tmp_path):
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path, *ALTERNATING, "--lr-period-updates", "10",
                                               "--max-update", "30"), check=False)
    assert "fairseq-dni: error: --keep-cycle-ends with cycles in updates needs --save-interval-updates" in out
    assert not list(tmp_path.glob("*.pt"))


def num_updates(path):
    return torch.load(path, map_location="cpu", weights_only=False)["optimizer_history"][-1]["num_updates"]


def test_update_clock_keeps_the_checkpoint_of_every_cycle_end(tiny_data, tmp_path):
    fairseq("fairseq-train", *train_args(tiny_data, tmp_path, *ALTERNATING, "--lr-period-updates", "10",
                                         "--t-mult", "2", "--max-update", "70", "--save-interval-updates", "10",
                                         "--keep-interval-updates", "1", "--no-epoch-checkpoints"))
    kept = sorted(p.name for p in tmp_path.glob("checkpoint_cycle*.pt"))
    assert kept == ["checkpoint_cycle1_synthetic.pt", "checkpoint_cycle2_real.pt", "checkpoint_cycle3_synthetic.pt"]
    assert [num_updates(tmp_path / name) for name in kept] == [10, 30, 70]
    # fairseq's retention deleted its own interval checkpoints, not ours; the last one is the same file
    assert [p.name for p in tmp_path.glob("checkpoint_*_*.pt") if "cycle" not in p.name] == ["checkpoint_1_70.pt"]
    assert filecmp.cmp(tmp_path / "checkpoint_1_70.pt", tmp_path / "checkpoint_cycle3_synthetic.pt", shallow=False)


def test_epoch_clock_keeps_the_epoch_checkpoints_that_end_cycles(tiny_data, tmp_path):
    fairseq("fairseq-train", *train_args(tiny_data, tmp_path, *ALTERNATING, "--lr-period-epochs", "1",
                                         "--t-mult", "2", "--max-epoch", "3"))
    kept = sorted(p.name for p in tmp_path.glob("checkpoint_cycle*.pt"))
    assert kept == ["checkpoint_cycle1_synthetic.pt", "checkpoint_cycle2_real.pt"]
    assert filecmp.cmp(tmp_path / "checkpoint1.pt", tmp_path / "checkpoint_cycle1_synthetic.pt", shallow=False)
    assert filecmp.cmp(tmp_path / "checkpoint3.pt", tmp_path / "checkpoint_cycle2_real.pt", shallow=False)


def test_the_snapshot_study_report_is_what_its_committed_logs_give(tmp_path):
    """studies/snapshots: results.csv and the README's results block, rewritten from the committed logs."""
    source = pathlib.Path(REPO, "studies", "snapshots")
    study = tmp_path / "snapshots"
    shutil.copytree(source, study)
    subprocess.run([sys.executable, str(study / "run.py"), "--report-only"], check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=REPO))   # the copy writes its report into tmp_path
    for name in ("results.csv", "README.md"):
        assert (study / name).read_text() == (source / name).read_text(), f"studies/snapshots/{name} is stale"
