"""LR scheduler ``cosine_alternating``: SGDR whose restarts also switch real/synthetic mode.

Cosine annealing with warm restarts (Loshchilov & Hutter, SGDR): after
``--warmup-updates`` of linear warm-up, cycle ``i`` lasts ``P * t_mult**i`` updates
(``P = --lr-period-updates``) and anneals from ``max_lr * lr_shrink**i`` down to
``--min-lr``. The restart boundaries are computed in integers: cycle ``i`` starts at
``warmup + P * (t_mult**i - 1) / (t_mult - 1)`` (``warmup + P*i`` when t_mult is 1). fairseq's
own ``cosine`` scheduler finds the cycle with a floating-point logarithm and lands one
cycle off at some boundaries (e.g. P=100, t_mult=3, update 12100).

The mode is a pure function of the update number (Shang & Zhang, arXiv 1902.10630):
``--mode-schedule alternate`` starts in ``--first-mode`` and switches every
``--restarts-per-switch`` restarts (the warm-up belongs to cycle 0); ``real`` or
``synthetic`` keep one mode throughout. Nothing about the schedule needs saving: resuming
at update ``u`` recomputes the learning rate and the mode of ``u``.

Who decides the mode: this schedule, whenever it is used with ``--optimizer alternating`` (it
attaches itself to that optimizer, where the task reads it before every window). The
criterion's ``--dni-mode`` is the mode when no schedule decides; given together with this
schedule, it must agree with it (``--mode-schedule real`` with ``--dni-mode real``), or training
stops at once with a one-line error.

Everything in this module above the fairseq class is plain Python, testable on its own.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import List, Tuple

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II

from fairseq_dni.errors import DNIUserError
from fairseq_dni.optim.alternating import find_alternating

logger = logging.getLogger(__name__)

MODE_SCHEDULES = ChoiceEnum(["alternate", "real", "synthetic"])
MODES = ChoiceEnum(["synthetic", "real"])


def check_schedule(period: int, t_mult: int, warmup: int, lr_shrink: float, restarts_per_switch: int,
                   mode_schedule: str, first_mode: str):
    """One clear error per impossible setting (raised before any training happens)."""
    if period is None or int(period) != period or period < 1:
        raise DNIUserError(f"--lr-period-updates must be a positive integer, got {period}")
    if int(t_mult) != t_mult or t_mult < 1:
        raise DNIUserError(f"--t-mult must be an integer >= 1 (restarts fall on whole updates), got {t_mult}")
    if warmup < 0:
        raise DNIUserError(f"--warmup-updates must be >= 0, got {warmup}")
    if not 0 < lr_shrink <= 1:
        raise DNIUserError(f"--lr-shrink must be in (0, 1], got {lr_shrink}")
    if restarts_per_switch < 1:
        raise DNIUserError(f"--restarts-per-switch must be >= 1, got {restarts_per_switch}")
    if mode_schedule not in ("alternate", "real", "synthetic"):
        raise DNIUserError(f"--mode-schedule must be alternate, real or synthetic, got {mode_schedule!r}")
    if first_mode not in ("synthetic", "real"):
        raise DNIUserError(f"--first-mode must be synthetic or real, got {first_mode!r}")


def cycle_of(update: int, period: int, t_mult: int, warmup: int = 0) -> Tuple[int, int, int]:
    """(cycle index, first update of the cycle, cycle length) for a 0-based update number.

    Warm-up updates belong to cycle 0 (start 0, length warmup + P).
    """
    if update < warmup:
        return 0, 0, warmup + period
    u = update - warmup
    if t_mult == 1:
        i = u // period
        return i, warmup + i * period, period
    i, start, length = 0, 0, period
    while u >= start + length:  # geometric growth: O(log u) steps, all integers
        start += length
        length *= t_mult
        i += 1
    return i, warmup + start, length


def restart_updates(limit: int, period: int, t_mult: int, warmup: int = 0) -> List[int]:
    """Every update < limit at which a new cycle (a warm restart) begins, excluding 0."""
    out, start, length = [], warmup, period
    while True:
        start += length
        length *= t_mult
        if start >= limit:
            return out
        out.append(start)


def learning_rate(update: int, max_lr: float, min_lr: float, period: int, t_mult: int, warmup: int = 0,
                  warmup_init_lr: float = 0.0, lr_shrink: float = 1.0) -> float:
    if update < warmup:
        return warmup_init_lr + (max_lr - warmup_init_lr) * update / warmup
    i, start, length = cycle_of(update, period, t_mult, warmup)  # cycle 0 anneals from the end of warm-up
    peak = max_lr * lr_shrink ** i
    progress = (update - start) / length
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))


def mode_at(update: int, period: int, t_mult: int, warmup: int = 0, mode_schedule: str = "alternate",
            first_mode: str = "synthetic", restarts_per_switch: int = 1) -> str:
    if mode_schedule in ("real", "synthetic"):
        return mode_schedule
    i, _, _ = cycle_of(update, period, t_mult, warmup)
    other = "real" if first_mode == "synthetic" else "synthetic"
    return first_mode if (i // restarts_per_switch) % 2 == 0 else other


@dataclass
class CosineAlternatingConfig(FairseqDataclass):
    warmup_updates: int = field(default=0, metadata={"help": "linear warm-up updates (part of cycle 0)"})
    warmup_init_lr: float = field(default=-1, metadata={"help": "learning rate at update 0 of the warm-up (-1: --min-lr)"})
    lr_period_updates: int = field(default=1000, metadata={"help": "length P of the first cosine cycle, in updates"})
    t_mult: int = field(default=1, metadata={"help": "each cycle is t_mult times longer than the previous one (integer >= 1)"})
    lr_shrink: float = field(default=1.0, metadata={"help": "the peak learning rate is multiplied by this at every restart"})
    min_lr: float = field(default=0.0, metadata={"help": "learning rate at the end of every cycle"})
    mode_schedule: MODE_SCHEDULES = field(
        default="alternate",
        metadata={"help": "alternate: switch between synthetic and real gradients at restarts; "
                          "real / synthetic: one mode throughout"})
    first_mode: MODES = field(default="synthetic", metadata={"help": "mode of the first cycle (alternate)"})
    restarts_per_switch: int = field(default=1, metadata={"help": "restarts between two mode switches (alternate)"})
    lr: List[float] = II("optimization.lr")


@register_lr_scheduler("cosine_alternating", dataclass=CosineAlternatingConfig)
class CosineAlternatingSchedule(FairseqLRScheduler):
    def __init__(self, cfg: CosineAlternatingConfig, optimizer):
        super().__init__(cfg, optimizer)
        if len(cfg.lr) > 1:
            raise DNIUserError("cosine_alternating takes one --lr (the peak learning rate)")
        check_schedule(cfg.lr_period_updates, cfg.t_mult, cfg.warmup_updates, cfg.lr_shrink,
                       cfg.restarts_per_switch, str(cfg.mode_schedule), str(cfg.first_mode))
        self.max_lr = cfg.lr[0]
        if self.max_lr < cfg.min_lr:
            raise DNIUserError(f"--lr ({self.max_lr}) must be >= --min-lr ({cfg.min_lr})")
        self.warmup_init_lr = cfg.min_lr if cfg.warmup_init_lr < 0 else cfg.warmup_init_lr
        alternating = find_alternating(optimizer)
        if alternating is not None:
            alternating.mode_schedule = self  # the task reads mode_at(update) there
        elif str(cfg.mode_schedule) != "real":
            logger.info("cosine_alternating: --optimizer %s trains no synthesizer, so --mode-schedule has no "
                        "effect (warm restarts only)", optimizer.__class__.__name__)
        self.step_update(0)

    def lr_at(self, update: int) -> float:
        c = self.cfg
        return learning_rate(update, self.max_lr, c.min_lr, c.lr_period_updates, c.t_mult, c.warmup_updates,
                             self.warmup_init_lr, c.lr_shrink)

    def mode_at(self, update: int) -> str:
        """The mode of the (0-based) update ``update``."""
        c = self.cfg
        return mode_at(update, c.lr_period_updates, c.t_mult, c.warmup_updates, str(c.mode_schedule),
                       str(c.first_mode), c.restarts_per_switch)

    @property
    def fixed_mode(self):
        """The mode when the schedule never switches (``--mode-schedule real|synthetic``), else None."""
        return None if str(self.cfg.mode_schedule) == "alternate" else str(self.cfg.mode_schedule)

    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        """Learning rate of the update about to run (``num_updates`` are done)."""
        lr = self.lr_at(num_updates)
        self.optimizer.set_lr(lr)
        return lr
