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

Who decides the mode: ``--optimizer alternating``, which follows this schedule (the schedule calls
its ``follow`` when fairseq builds it; before every window the task asks the optimizer's
``begin_window(clock)``, which reads :meth:`CosineAlternatingSchedule.lr_and_mode`). The
optimizer's ``--dni-mode`` is the mode when no schedule decides; given together with this
schedule, it must agree with it (``--mode-schedule real`` with ``--dni-mode real``), or training
stops at once with a one-line error.

Everything in this module above the fairseq class is plain Python, testable on its own.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II

from fairseq_dni.errors import DNIUserError
from fairseq_dni.optim.alternating import MODES, Clock, WindowSchedule, find_alternating

logger = logging.getLogger(__name__)

MODE_SCHEDULES = ChoiceEnum(["alternate", "real", "synthetic"])


Periods = Union[int, Sequence[int]]


def cycle_lengths(period: Periods) -> Tuple[int, ...]:
    return tuple(period) if isinstance(period, (tuple, list)) else (period,)


def check_schedule(period: Periods, t_mult: int, warmup: int, lr_shrink: float, restarts_per_switch: int,
                   mode_schedule: str, first_mode: str, unit: str = "updates"):
    """One clear error per impossible setting (raised before any training happens)."""
    if period is None or any(int(p) != p or p < 1 for p in cycle_lengths(period)):
        what = "a positive integer" if unit == "updates" else "positive integers"
        raise DNIUserError(f"--lr-period-{unit} must be {what}, got {period}")
    if int(t_mult) != t_mult or t_mult < 1:
        raise DNIUserError(f"--t-mult must be an integer >= 1 (restarts fall on whole {unit}), got {t_mult}")
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


def check_first_cycle_fits(schedule, max_update: int, max_epoch: int, updates_per_epoch: int, update_freq: int = 1):
    """Refuse a first cycle (or real first phase) that the run ends before, whichever unit ``--max-*``
    uses: the scheduler's own check compares only the clock's unit (``--lr-period-updates`` with
    ``--max-update``), before the epoch length is known. ``schedule``: cosine_alternating's config
    (anything else: nothing to check); ``updates_per_epoch``: ceil(windows per epoch and rank /
    ``--update-freq``), from the task once it has cut the training streams (with ``--variable-window``,
    epoch 1's). Raises DNIUserError."""
    if schedule is None or getattr(schedule, "_name", None) != "cosine_alternating" or updates_per_epoch < 1:
        return
    epochs = schedule.lr_period_epochs is not None
    unit = "epochs" if epochs else "updates"
    if epochs:
        first = int(str(schedule.lr_period_epochs).split(",")[0])
        real_first = schedule.real_first_epochs
    else:
        first = (1000 if schedule.lr_period_updates is None else schedule.lr_period_updates) + schedule.warmup_updates
        real_first = schedule.real_first_updates
    limits = []  # (the run's length in the schedule's unit, what says so)
    if max_update and max_update > 0:
        limits.append((max_update / updates_per_epoch if epochs else max_update, f"--max-update {max_update}"))
    if max_epoch and max_epoch > 0:
        limits.append((max_epoch if epochs else max_epoch * updates_per_epoch, f"--max-epoch {max_epoch}"))
    if not limits:
        return
    length, flag = min(limits)
    run = (f"{flag}: {length:.4g} {unit} of {updates_per_epoch} updates per epoch"
           f"{f' with --update-freq {update_freq}' if update_freq != 1 else ''}")
    if first > length:
        raise DNIUserError(f"the first cosine cycle ({first} {unit}) is longer than the run ({run}): the learning "
                           f"rate would never anneal, restart or switch mode; shorten --lr-period-{unit}")
    if real_first and real_first >= length:
        raise DNIUserError(f"--real-first-{unit} {real_first} covers the whole run ({run}): no synthetic gradient "
                           f"would ever be used")


def cycle_of(position, period: Periods, t_mult: int, warmup: int = 0):
    """(cycle index, start of the cycle, cycle length) for a 0-based position (an update number,
    or epochs done as a float).

    ``period`` is the first cycle's length, or the lengths of the first cycles (e.g. the seed
    paper's 5, 5, 10, 20, 40, 80, 160 epochs); after the last listed one, each cycle is ``t_mult``
    times the previous. Warm-up belongs to cycle 0 (start 0, length warmup + the first period).
    Integer positions give integer boundaries (no floating-point logarithm).
    """
    lengths = cycle_lengths(period)
    if position < warmup:
        return 0, 0, warmup + lengths[0]
    u = position - warmup
    if len(lengths) == 1 and t_mult == 1:
        i = int(u // lengths[0])
        return i, warmup + i * lengths[0], lengths[0]
    i, start, length = 0, 0, lengths[0]
    while u >= start + length:  # O(log u) steps
        start += length
        i += 1
        length = lengths[i] if i < len(lengths) else length * t_mult
    return i, warmup + start, length


def restart_updates(limit: int, period: Periods, t_mult: int, warmup: int = 0) -> List[int]:
    """Every position < limit at which a new cycle (a warm restart) begins, excluding 0 (used by
    ``--keep-cycle-ends`` to check that every cycle end gets a checkpoint)."""
    out, position = [], 0
    while True:
        i, start, length = cycle_of(position, period, t_mult, warmup)
        position = start + length
        if position >= limit:
            return out
        out.append(position)


def learning_rate(update, max_lr: float, min_lr: float, period: Periods, t_mult: int, warmup: int = 0,
                  warmup_init_lr: float = 0.0, lr_shrink: float = 1.0) -> float:
    """SGDR (Loshchilov & Hutter 2017, eq. 5): ``min + (peak_i - min) (1 + cos(pi x)) / 2`` with ``x``
    the fraction of cycle ``i`` done and ``peak_i = max_lr * lr_shrink**i``; linear warm-up first."""
    if update < warmup:
        return warmup_init_lr + (max_lr - warmup_init_lr) * update / warmup
    i, start, length = cycle_of(update, period, t_mult, warmup)  # cycle 0 anneals from the end of warm-up
    peak = max_lr * lr_shrink ** i
    progress = (update - start) / length
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))


def mode_at(update, period: Periods, t_mult: int, warmup: int = 0, mode_schedule: str = "alternate",
            first_mode: str = "synthetic", restarts_per_switch: int = 1, real_first=0) -> str:
    """The mode at a position: real during the first ``real_first`` positions (the seed paper's
    ``--whenswitch 2``: epoch 1 real), then by cycle: ``first_mode`` in cycle 0 and switching every
    ``restarts_per_switch`` restarts (``alternate``), or one mode throughout."""
    if update < real_first:
        return "real"
    if mode_schedule in ("real", "synthetic"):
        return mode_schedule
    i, _, _ = cycle_of(update, period, t_mult, warmup)
    other = "real" if first_mode == "synthetic" else "synthetic"
    return first_mode if (i // restarts_per_switch) % 2 == 0 else other


@dataclass
class CosineAlternatingConfig(FairseqDataclass):
    warmup_updates: int = field(default=0, metadata={"help": "linear warm-up updates (part of cycle 0)"})
    warmup_init_lr: float = field(default=-1, metadata={"help": "learning rate at update 0 of the warm-up (-1: --min-lr)"})
    lr_period_updates: Optional[int] = field(
        default=None,
        metadata={"help": "length P of the first cosine cycle, in updates (default 1000 when --lr-period-epochs "
                          "is not given)"})
    lr_period_epochs: Optional[str] = field(
        default=None,
        metadata={"help": "count cycles in epochs instead: the first cycle's length, or comma-separated lengths of "
                          "the first cycles (the seed paper: 5,5,10,20,40,80,160 or 160,160); after the last, each "
                          "cycle is --t-mult times the previous. The learning rate anneals within epochs (fraction "
                          "of the epoch's windows done); needs --optimizer alternating"})
    lr_step_per_epoch: bool = field(
        default=False,
        metadata={"help": "with --lr-period-epochs: hold the learning rate for a whole epoch at the cosine's value at "
                          "the epoch's start, as the seed paper's code does"})
    t_mult: int = field(default=1, metadata={"help": "each cycle is t_mult times longer than the previous one (integer >= 1)"})
    lr_shrink: float = field(default=1.0, metadata={"help": "the peak learning rate is multiplied by this at every restart"})
    min_lr: float = field(default=0.0, metadata={"help": "learning rate at the end of every cycle"})
    mode_schedule: MODE_SCHEDULES = field(
        default="alternate",
        metadata={"help": "alternate: switch between synthetic and real gradients at restarts; "
                          "real / synthetic: one mode throughout"})
    first_mode: MODES = field(default="synthetic", metadata={"help": "mode of the first cycle (alternate)"})
    restarts_per_switch: int = field(default=1, metadata={"help": "restarts between two mode switches (alternate)"})
    real_first_updates: int = field(
        default=0, metadata={"help": "the first N updates use real gradients whatever the mode schedule says"})
    real_first_epochs: int = field(
        default=0,
        metadata={"help": "with --lr-period-epochs: the first N epochs use real gradients whatever the mode schedule "
                          "says (the seed paper's --whenswitch 2 is 1)"})
    keep_cycle_ends: bool = field(
        default=False,
        metadata={"help": "also keep the checkpoint written at the end of every cosine cycle as "
                          "checkpoint_cycle{N}_{mode}.pt (snapshots; needs a save at every cycle end: "
                          "fairseq_dni/snapshots.py)"})
    lr: List[float] = II("optimization.lr")
    max_update: int = II("optimization.max_update")
    max_epoch: int = II("optimization.max_epoch")
    save_interval_updates: int = II("checkpoint.save_interval_updates")
    save_interval: int = II("checkpoint.save_interval")
    no_save: bool = II("checkpoint.no_save")


@register_lr_scheduler("cosine_alternating", dataclass=CosineAlternatingConfig)
class CosineAlternatingSchedule(FairseqLRScheduler, WindowSchedule):
    """Learning rate and mode as pure functions of where training is (:meth:`lr_and_mode`). Clock:
    updates (``--lr-period-updates``; fairseq's ``step_update`` also sets the learning rate after every
    update, for any optimizer), or epochs (``--lr-period-epochs``; ``--optimizer alternating`` sets it
    before every window from the fraction of epochs done, so cycles stay whole epochs when epochs differ
    in length)."""

    def __init__(self, cfg: CosineAlternatingConfig, optimizer):
        super().__init__(cfg, optimizer)
        if len(cfg.lr) > 1:
            raise DNIUserError("cosine_alternating takes one --lr (the peak learning rate)")
        if cfg.lr_period_updates is not None and cfg.lr_period_epochs is not None:
            raise DNIUserError("give the cosine cycles in updates (--lr-period-updates) or in epochs "
                               "(--lr-period-epochs), not both")
        self.counts_epochs = cfg.lr_period_epochs is not None
        unit = "epochs" if self.counts_epochs else "updates"
        if self.counts_epochs:
            try:
                self.period = tuple(int(p) for p in str(cfg.lr_period_epochs).split(","))
            except ValueError:
                raise DNIUserError(f"--lr-period-epochs takes comma-separated integers, got {cfg.lr_period_epochs}")
        else:
            self.period = 1000 if cfg.lr_period_updates is None else cfg.lr_period_updates
        check_schedule(self.period, cfg.t_mult, cfg.warmup_updates, cfg.lr_shrink,
                       cfg.restarts_per_switch, str(cfg.mode_schedule), str(cfg.first_mode), unit)
        self.mode_schedule = str(cfg.mode_schedule)
        alternating = find_alternating(optimizer)
        if alternating is not None:
            alternating.follow(self)  # first: a --dni-mode it contradicts is the mistake to name
        self.max_lr = cfg.lr[0]
        if self.max_lr < cfg.min_lr:
            raise DNIUserError(f"--lr ({self.max_lr}) must be >= --min-lr ({cfg.min_lr})")
        self.warmup_init_lr = cfg.min_lr if cfg.warmup_init_lr < 0 else cfg.warmup_init_lr
        self.real_first = self.check_units(cfg)
        if cfg.keep_cycle_ends:
            from fairseq_dni.snapshots import check_saves  # snapshots reads this module's functions
            check_saves(cfg)
        if alternating is None and self.counts_epochs:
            raise DNIUserError("--lr-period-epochs needs --optimizer alternating (with --base-optimizer adam|adamw|"
                               "sgd|nag): it sets the learning rate of every window from the epoch clock")
        if alternating is None and str(cfg.mode_schedule) != "real":
            logger.info("cosine_alternating: --optimizer %s trains no synthesizer, so --mode-schedule has no "
                        "effect (warm restarts only)", optimizer.__class__.__name__)
        if self.counts_epochs:
            self.optimizer.set_lr(self.lr_at(0.0))
        else:
            self.step_update(0)

    def check_units(self, cfg) -> int:
        """The real-first phase in the clock's unit; refuses settings that cannot do what they say."""
        if self.counts_epochs:
            if cfg.warmup_updates or cfg.real_first_updates:
                raise DNIUserError("with --lr-period-epochs give the real first phase in epochs "
                                   "(--real-first-epochs), and no --warmup-updates")
            real_first, length, unit = cfg.real_first_epochs, cfg.max_epoch, "epochs"
        else:
            if cfg.real_first_epochs or cfg.lr_step_per_epoch:
                raise DNIUserError("--real-first-epochs and --lr-step-per-epoch need --lr-period-epochs")
            real_first, length, unit = cfg.real_first_updates, cfg.max_update, "updates"
        if real_first < 0:
            raise DNIUserError(f"--real-first-{unit} must be >= 0, got {real_first}")
        first = cycle_lengths(self.period)[0] + (cfg.warmup_updates if not self.counts_epochs else 0)
        if length and length > 0:
            if real_first >= length:
                raise DNIUserError(f"--real-first-{unit} {real_first} covers the whole run (--max-{unit[:-1]} "
                                   f"{length}): no synthetic gradient would ever be used")
            if first > length:
                raise DNIUserError(f"the first cosine cycle ({first} {unit}) is longer than the run (--max-{unit[:-1]} "
                                   f"{length}): the learning rate would never anneal; shorten --lr-period-{unit}")
        return real_first

    def position(self, clock: Clock):
        return clock.epoch if self.counts_epochs else clock.update

    def lr_at(self, position) -> float:
        c = self.cfg
        if self.counts_epochs and c.lr_step_per_epoch:
            position = math.floor(position)
        return learning_rate(position, self.max_lr, c.min_lr, self.period, c.t_mult,
                             0 if self.counts_epochs else c.warmup_updates, self.warmup_init_lr, c.lr_shrink)

    def lr_and_mode(self, clock: Clock):
        """The learning rate and the mode of the window about to run at ``clock`` (read by
        ``--optimizer alternating``'s ``begin_window``)."""
        c = self.cfg
        position = self.position(clock)
        return self.lr_at(position), mode_at(
            position, self.period, c.t_mult, 0 if self.counts_epochs else c.warmup_updates, self.mode_schedule,
            str(c.first_mode), c.restarts_per_switch, self.real_first)

    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        """Update clock: the learning rate of the update about to run (``num_updates`` are done).
        Epoch clock: unchanged (``--optimizer alternating`` sets it before every window)."""
        if self.counts_epochs:
            return self.optimizer.get_lr()
        lr = self.lr_at(num_updates)
        self.optimizer.set_lr(lr)
        return lr
