"""Optimizer ``alternating``: the LM's optimizer and the synthesizer's, side by side.

``--optimizer alternating --base-optimizer adam|adamw|sgd|nag`` optimizes the language
model with the chosen torch optimizer and the usual hyperparameters (``--lr`` and the
schedule, ``--adam-betas``, ``--adam-eps``, ``--weight-decay``, ``--momentum``), and the
synthesizer (parameters tagged ``param_group = "synthesizer"`` by ``dni_cross_entropy``)
with its own optimizer state and a constant ``--dni-lr``: the synthesizer keeps learning
at the same pace in both modes and through learning-rate restarts.

It owns the mode (real or synthetic gradients) as it owns the LM's learning rate, and alternates
them: before every window the task asks :meth:`AlternatingOptimizer.begin_window` once, with the
:class:`Clock`; it answers the window's mode and sets the window's learning rate, both from the
schedule it follows (``--lr-scheduler cosine_alternating`` attaches itself with :meth:`follow`, a
pure function clock -> (learning rate, mode)), or, with no such schedule, ``--dni-mode`` and the
learning rate fairseq's scheduler set. A change of
``--base-optimizer`` or ``--dni-optimizer`` between a checkpoint and the resuming run is refused
with fairseq's own "Optimizer does not match" line. ``--clip-norm`` clips the language model's gradient only
(the synthesizer's is not clipped); the norm fairseq logs as ``gnorm`` is the language model's.

fairseq wraps it as usual for ``--fp16`` / ``--bf16`` (with ``--fp16-no-flatten-grads``:
a flat parameter vector would lose which parameters are the synthesizer's, and fairseq
says so), and ``--amp``. Under ``--fp16``/``--bf16`` fairseq's wrapper clips with one
factor for all parameters, computed from the language model's norm. ``--memory-efficient-fp16``
is refused (torch optimizers would keep fp16 state).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from fairseq import utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

from fairseq_dni.errors import DNIUserError

BASE_OPTIMIZERS = ChoiceEnum(["adam", "adamw", "sgd", "nag"])
MODES = ChoiceEnum(["synthetic", "real"])


@dataclass(frozen=True)
class Clock:
    """Where training is, as the task sees it before a window: the update about to run (0-based)
    and the epochs done (a float: epoch 3, window 50 of 200 is 2.25)."""
    update: int
    epoch: float


class WindowSchedule:
    """What :class:`AlternatingOptimizer` follows: a pure function of the clock (``cosine_alternating``)."""

    mode_schedule: str  # --mode-schedule: alternate, real or synthetic

    def lr_and_mode(self, clock: Clock) -> Tuple[float, str]:
        """The LM's learning rate and the mode (``synthetic`` / ``real``) of the window about to run."""
        raise NotImplementedError


def mode_conflict(given: str, schedule: str) -> str:
    return (f"--dni-mode {given} disagrees with --lr-scheduler cosine_alternating --mode-schedule {schedule}, "
            f"which decides the mode: drop --dni-mode, or use --mode-schedule {given}")


@dataclass
class AlternatingOptimizerConfig(FairseqDataclass):
    base_optimizer: BASE_OPTIMIZERS = field(
        default="adam",
        metadata={"help": "the language model's optimizer: adam (L2 weight decay), adamw (decoupled), "
                          "sgd, nag (SGD with Nesterov momentum)"})
    dni_optimizer: BASE_OPTIMIZERS = field(default="adam", metadata={"help": "the synthesizer's optimizer"})
    dni_lr: float = field(default=1e-4, metadata={"help": "the synthesizer's learning rate (constant)"})
    dni_mode: Optional[MODES] = field(
        default=None,
        metadata={"help": "synthetic: inject the synthesizer's gradient at every window's end; real: plain TBPTT "
                          "(the synthesizer still learns). Default: synthetic, or whatever "
                          "--lr-scheduler cosine_alternating's --mode-schedule decides (given both, they must agree)"},
    )
    dni_weight_decay: float = field(
        default=0.0, metadata={"help": "the synthesizer's weight decay (the seed paper: 1.2e-6, with Adam)"})
    adam_betas: str = field(default="(0.9, 0.999)", metadata={"help": "betas for adam/adamw"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for adam/adamw"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay of the language model"})
    momentum: float = field(default=0.0, metadata={"help": "momentum for sgd (nag: 0 means 0.99)"})
    lr: List[float] = II("optimization.lr")


def optimizer_kind(state_dict) -> str:
    """Which of adam/adamw/sgd/nag wrote a torch optimizer state dict (read off its param groups)."""
    group = (state_dict.get("param_groups") or [{}])[0]
    if "betas" in group:
        return "adamw" if group.get("decoupled_weight_decay") else "adam"
    if "nesterov" in group:
        return "nag" if group["nesterov"] else "sgd"
    return "unknown"


def build_torch_optimizer(name: str, params, lr: float, cfg: AlternatingOptimizerConfig, weight_decay: float,
                          fused: bool = False):
    """torch's optimizer ``name`` over ``params``. ``fused``: torch's fused Adam/AdamW kernel where the
    parameters allow it (float32, all on the CPU or all on one CUDA device); the synthesizer's
    optimizer uses it (per update on CPU: 0.5 ms instead of 3.1 ms for the MLP synthesizer's 0.5 M
    parameters), the LM's keeps torch's default so that it matches fairseq's own Adam."""
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        params = list(params)
        devices = {p.device for p in params}
        fused = (fused and len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
                 and all(p.dtype == torch.float32 for p in params))
        return cls(params, lr=lr, betas=tuple(eval(cfg.adam_betas)), eps=cfg.adam_eps, weight_decay=weight_decay,
                   **({"fused": True} if fused else {}))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=weight_decay)
    if name == "nag":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum or 0.99, nesterov=True, weight_decay=weight_decay)
    raise DNIUserError(f"unknown optimizer {name!r}; choose one of adam, adamw, sgd, nag")


class TwoOptimizers(torch.optim.Optimizer):
    """A torch optimizer made of the LM's and the synthesizer's (fairseq expects one object)."""

    def __init__(self, lm: torch.optim.Optimizer, synthesizer: torch.optim.Optimizer = None):
        # deliberately no super().__init__: every Optimizer method fairseq uses is defined here
        self.lm, self.synthesizer = lm, synthesizer
        self.defaults = lm.defaults

    @property
    def param_groups(self):
        return self.lm.param_groups + (self.synthesizer.param_groups if self.synthesizer else [])

    @property
    def state(self):
        merged = dict(self.lm.state)
        if self.synthesizer:
            merged.update(self.synthesizer.state)
        return merged

    def step(self, closure=None):
        loss = self.lm.step(closure)
        if self.synthesizer is not None:
            self.synthesizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        self.lm.zero_grad(set_to_none=set_to_none)
        if self.synthesizer is not None:
            self.synthesizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"lm": self.lm.state_dict(),
                "synthesizer": self.synthesizer.state_dict() if self.synthesizer else None}

    def load_state_dict(self, state_dict):
        if "lm" not in state_dict:
            raise DNIUserError("this optimizer state was not written by --optimizer alternating")
        for part, name in (("lm", "--base-optimizer"), ("synthesizer", "--dni-optimizer")):
            mine, saved = getattr(self, part), state_dict.get(part)
            if mine is not None and saved is not None and optimizer_kind(saved) != optimizer_kind(mine.state_dict()):
                raise DNIUserError(
                    f"Optimizer does not match; please reset the optimizer (--reset-optimizer). The checkpoint's "
                    f"{name} is {optimizer_kind(saved)}, this run's is {optimizer_kind(mine.state_dict())}")
        self.lm.load_state_dict(state_dict["lm"])
        if self.synthesizer is not None and state_dict.get("synthesizer") is not None:
            self.synthesizer.load_state_dict(state_dict["synthesizer"])

    def __getstate__(self):
        return {"lm": self.lm, "synthesizer": self.synthesizer}

    def __repr__(self):
        return f"TwoOptimizers(lm={self.lm.__class__.__name__}, synthesizer={self.synthesizer.__class__.__name__})"


@register_optimizer("alternating", dataclass=AlternatingOptimizerConfig)
class AlternatingOptimizer(FairseqOptimizer):
    def __init__(self, cfg: AlternatingOptimizerConfig, params):
        super().__init__(cfg)
        params = list(params)
        synth = [p for p in params if getattr(p, "param_group", None) == "synthesizer"]
        lm = [p for p in params if getattr(p, "param_group", None) != "synthesizer"]
        if not lm:
            raise DNIUserError("--optimizer alternating found no language-model parameters "
                             "(a flat fp16 parameter vector? use --fp16-no-flatten-grads)")
        for flag, value in (("--dni-lr", cfg.dni_lr), ("--dni-weight-decay", cfg.dni_weight_decay)):
            if value < 0:
                raise DNIUserError(f"{flag} must be >= 0, got {value}")
        lr = cfg.lr[0]
        self.lm_params, self.synthesizer_params = lm, synth
        self._optimizer = TwoOptimizers(
            build_torch_optimizer(cfg.base_optimizer, lm, lr, cfg, cfg.weight_decay),
            build_torch_optimizer(cfg.dni_optimizer, synth, cfg.dni_lr, cfg, cfg.dni_weight_decay, fused=True)
            if synth else None,
        )
        self.schedule: Optional[WindowSchedule] = None  # see follow()

    @property
    def optimizer_config(self):
        return {"lr": self.cfg.lr[0], "weight_decay": self.cfg.weight_decay}

    def follow(self, schedule: WindowSchedule):
        """From now on the window's learning rate and mode are ``schedule``'s (called by
        ``--lr-scheduler cosine_alternating`` when fairseq builds it, before anything runs). A
        ``--dni-mode`` that its ``--mode-schedule`` contradicts is refused."""
        given = self.cfg.dni_mode
        if given is not None and str(schedule.mode_schedule) != str(given):
            raise DNIUserError(mode_conflict(str(given), str(schedule.mode_schedule)))
        self.schedule = schedule

    def begin_window(self, clock: Clock) -> str:
        """The mode of the window about to run at ``clock``; sets its learning rate. Following a schedule:
        the schedule's rate and mode at ``clock`` (with the update clock fairseq's ``step_update`` set the
        same rate after the last update); else ``--dni-mode`` (default synthetic), the rate unchanged."""
        if self.schedule is None:
            return str(self.cfg.dni_mode or "synthetic")
        lr, mode = self.schedule.lr_and_mode(clock)
        self.set_lr(lr)
        return mode

    # the schedule drives the language model's learning rate only
    def get_lr(self):
        return self._optimizer.lm.param_groups[0]["lr"]

    def set_lr(self, lr):
        for group in self._optimizer.lm.param_groups:
            group["lr"] = lr

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        self._optimizer.load_state_dict(state_dict)
        if optimizer_overrides:
            for group in self._optimizer.lm.param_groups:
                group.update(optimizer_overrides)
        if self._optimizer.synthesizer is not None:  # --dni-lr of the current command wins
            for group in self._optimizer.synthesizer.param_groups:
                group["lr"] = self.cfg.dni_lr

    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        return utils.clip_grad_norm_(self.lm_params, max_norm, aggregate_norm_fn)

    @property
    def supports_flat_params(self):
        return False

    @property
    def supports_memory_efficient_fp16(self):
        return False


def current_loss_scale(optimizer) -> float:
    """The factor fairseq's optimizer wrapper multiplied the loss by before the last backward.

    FP16Optimizer / MemoryEfficientFP16Optimizer: ``scaler`` is fairseq's DynamicLossScaler
    (``loss_scale``; None under bf16); AMPOptimizer: ``scaler`` is torch's GradScaler.
    """
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None:
        return 1.0
    if hasattr(scaler, "loss_scale"):
        return float(scaler.loss_scale)
    if scaler.is_enabled():
        return float(scaler.get_scale())
    return 1.0


def find_alternating(optimizer):
    """The AlternatingOptimizer inside fairseq's fp16/bf16/AMP wrappers, or None."""
    seen = 0
    while optimizer is not None and seen < 4:
        if isinstance(optimizer, AlternatingOptimizer):
            return optimizer
        optimizer = getattr(optimizer, "fp32_optimizer", None) or getattr(optimizer, "wrapped_optimizer", None)
        seen += 1
    return None
