"""Cycle-end snapshots: one checkpoint kept at the end of every cosine cycle.

With ``--lr-scheduler cosine_alternating --keep-cycle-ends``, every checkpoint fairseq writes at the
end of a cosine cycle is also copied to ``checkpoint_cycle{N}_{mode}.pt`` in ``--save-dir``: ``N``
the cycle (1-based: cycle 1 includes the warm-up) and ``mode`` the gradients its last update was
trained with (``synthetic`` or ``real``), e.g. ``checkpoint_cycle2_real.pt``. Those are the snapshots
of Snapshot Ensembles (Huang et al. 2017): score the last few together with
``python -m fairseq_dni.eval_lm --path a.pt:b.pt:c.pt``. fairseq's retention flags
(``--keep-interval-updates``, ``--keep-last-epochs``) never delete them: their names match none of
fairseq's checkpoint patterns.

The copy is made in fairseq's own hook, ``task.post_save(path, num_updates)``, which fairseq calls on
the saving rank after every checkpoint it writes; the cycle and mode are computed from the
checkpoint itself (its config and position), with the schedule's own functions. fairseq decides
*when* to save, so the scheduler checks at start-up that a save falls on every cycle end, or stops
with one line saying which flag to set:

* cycles in updates (``--lr-period-updates``): ``--save-interval-updates S`` with every cycle end a
  multiple of ``S`` (e.g. ``S = P`` without warm-up); the run's last update is always saved;
* cycles in epochs (``--lr-period-epochs``): fairseq saves at the end of every ``--save-interval``
  epochs (default 1), so every cycle end is an epoch end that fairseq saves.
"""
import logging
import os
from types import SimpleNamespace
from typing import Optional, Tuple

import torch
from fairseq.file_io import PathManager

from fairseq_dni.errors import DNIUserError
from fairseq_dni.optim.lr_scheduler.cosine_alternating import cycle_lengths, cycle_of, mode_at, restart_updates

logger = logging.getLogger(__name__)


def snapshot_name(cycle: int, mode: str) -> str:
    """The file name of cycle ``cycle``'s (1-based) snapshot, trained with ``mode`` gradients."""
    return f"checkpoint_cycle{cycle}_{mode}.pt"


def schedule_of(cfg) -> Tuple[object, int, bool, int]:
    """(period, warm-up, counts epochs, real-first) of a ``cosine_alternating`` config, in its clock's unit."""
    if cfg.lr_period_epochs is not None:
        return tuple(int(p) for p in str(cfg.lr_period_epochs).split(",")), 0, True, cfg.real_first_epochs
    period = 1000 if cfg.lr_period_updates is None else cfg.lr_period_updates
    return period, cfg.warmup_updates, False, cfg.real_first_updates


def cycle_end(cfg, position) -> Optional[Tuple[int, str]]:
    """(cycle number, 1-based; its mode) when ``position`` (updates done, or epochs done with
    ``--lr-period-epochs``) is the end of a cosine cycle of the ``cosine_alternating`` config ``cfg``,
    else None. The mode is that of the cycle's last update (or epoch)."""
    period, warmup, _, real_first = schedule_of(cfg)
    if position <= 0 or position != int(position):
        return None
    position = int(position)
    cycle = cycle_of(position - 1, period, cfg.t_mult, warmup)[0]
    if cycle_of(position, period, cfg.t_mult, warmup)[0] == cycle:
        return None
    cycle += 1
    mode = mode_at(position - 1, period, cfg.t_mult, warmup, str(cfg.mode_schedule), str(cfg.first_mode),
                   cfg.restarts_per_switch, real_first)
    return cycle, mode


def check_saves(cfg):
    """DNIUserError unless fairseq will write a checkpoint at every cycle end of the run
    (``cfg``: the ``cosine_alternating`` config with ``--keep-cycle-ends``; see the module docstring)."""
    period, warmup, counts_epochs, _ = schedule_of(cfg)
    if cfg.no_save:
        raise DNIUserError("--keep-cycle-ends copies the checkpoints fairseq writes at cycle ends; --no-save writes none")
    if counts_epochs:
        if not cfg.max_epoch and cfg.save_interval != 1:
            raise DNIUserError("--keep-cycle-ends with cycles in epochs and no --max-epoch needs --save-interval 1")
        unsaved = [e for e in restart_updates(cfg.max_epoch + 1, period, cfg.t_mult) if e % cfg.save_interval]
        if unsaved:
            raise DNIUserError(f"--keep-cycle-ends: fairseq saves every {cfg.save_interval} epochs (--save-interval), "
                               f"so no checkpoint is written at the cycle end after epoch {unsaved[0]}: use "
                               f"--save-interval 1")
        return
    step = cfg.save_interval_updates
    lengths = cycle_lengths(period)
    if step <= 0:
        raise DNIUserError(f"--keep-cycle-ends with cycles in updates needs --save-interval-updates, dividing "
                           f"every cycle end (e.g. --save-interval-updates {lengths[0]} without warm-up)")
    if cfg.max_update:
        unsaved = [u for u in restart_updates(cfg.max_update, period, cfg.t_mult, warmup) if u % step]
    else:  # ends are warm-up + sums of lengths: all multiples of step iff these are
        unsaved = [u for u in (warmup + lengths[0], *lengths[1:]) if u % step]
    if unsaved:
        raise DNIUserError(f"--keep-cycle-ends: a cycle ends after update {unsaved[0]}, which is not a multiple of "
                           f"--save-interval-updates {step}, so fairseq writes no checkpoint there; choose an "
                           f"interval that divides every cycle end")


def keep_cycle_end(path: str) -> Optional[str]:
    """If the checkpoint just written at ``path`` closes a cosine cycle of a run trained with
    ``--keep-cycle-ends``, copy it next to itself as :func:`snapshot_name` and return the copy's path;
    else None. Reads only the checkpoint's config and position (memory-mapped, no tensor is copied)."""
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)  # the plugin's allow-list
    scheduler = (state.get("cfg") or {}).get("lr_scheduler")  # fairseq saves the config as plain dicts
    if not scheduler or scheduler.get("_name") != "cosine_alternating" or not scheduler.get("keep_cycle_ends"):
        return None
    scheduler = SimpleNamespace(**scheduler)
    if scheduler.lr_period_epochs is not None:
        iterator = state["extra_state"]["train_iterator"]
        # fairseq records an epoch's end as the next epoch at iteration 0
        position = iterator["epoch"] - 1 if iterator["iterations_in_epoch"] == 0 else 0.5
    else:
        position = state["optimizer_history"][-1]["num_updates"]
    end = cycle_end(scheduler, position)
    if end is None:
        return None
    snapshot = os.path.join(os.path.dirname(path), snapshot_name(*end))
    PathManager.copy(path, snapshot, overwrite=True)
    logger.info("cycle %d (%s) ends: kept %s", end[0], end[1], snapshot)
    return snapshot
