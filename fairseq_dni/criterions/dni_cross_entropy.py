"""Criterion ``dni_cross_entropy``: the LM loss plus Decoupled Neural Interfaces.

Per training window ``t`` over B streams (the maths: ``fairseq_dni/dni.py``; the order of the
steps: ``fairseq_dni/step.py``, whose ``train_window`` calls :meth:`forward` with the window and its
mode, then :meth:`end_window` after backward):

1. The window starts from the carried state ``s_{t-1}``, made a leaf that requires grad by the step,
   so that backward leaves the true gradient arriving at the window's start on it.
2. Its loss: the LM loss (summed over target tokens, as fairseq's ``cross_entropy`` /
   ``adaptive_loss``), plus AWD-LSTM's AR/TAR with ``--alpha``/``--beta`` (``lm_cross_entropy``,
   which this criterion builds on); plus the synthesizer's regression loss for the pair whose target arrived
   one window ago; plus, in synthetic mode, the injected synthetic gradient ``scale * M(s_t)``
   at the window's final state.
3. After backward (:meth:`end_window`, called by the step with the optimizer's loss scale),
   the gradient on ``s_{t-1}``, unscaled, is the regression target for the prediction made at
   ``s_{t-1}`` (at the end of window ``t-1``). It is regressed in window ``t+1``, in both modes,
   so the synthesizer keeps learning while real gradients are used.

Units: the synthesizer predicts, per stream, the gradient of the *summed* loss of that stream's
future tokens with respect to its state: the units of the loss this criterion returns, so
injection needs no rescaling (fairseq divides the whole loss by the sample size, injected term
included, exactly as full BPTT divides the future tokens' loss). The targets are not divided by
the window's token count. Only the synthesizer's own regression loss is multiplied by fairseq's
divisor (the sample size, or 1 in a window without one), so that fairseq's division leaves it as it is.

The synthesizer (any ``fairseq_dni.synthesizers.Synthesizer``: ``--dni-synthesizer mlp``,
``coordinatewise`` or ``scan``) lives in this criterion: fairseq optimizes, all-reduces and checkpoints
criterion parameters, and LM checkpoints stay plain language models (LSTM or QRNN) for eval-lm. Its parameters carry
``param_group = "synthesizer"``: ``--optimizer alternating`` trains them with their own optimizer,
and this criterion is refused with any other optimizer (the synthesizer's gradient would change
the LM's update, e.g. through gradient clipping).

What crosses a window boundary (the synthesizer's own recurrent state, the call made at the last
window's end, the pending regression pair) is a :class:`DNICarry` kept in a
:class:`~fairseq_dni.carried_state.CarriedState`, checkpointed and shared across ranks with it.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from omegaconf import II

from fairseq_dni.carried_state import CarriedState, tree_map
from fairseq_dni.criterions.lm_cross_entropy import LMCrossEntropyConfig, LMCrossEntropyCriterion
from fairseq_dni.dni import bootstrapped_target, cosine_similarity, synthesizer_loss, synthetic_gradient_term
from fairseq_dni.errors import DNIUserError
from fairseq_dni.step import MODES, Window, WindowCriterion, WindowTask
from fairseq_dni.synthesizers import build_synthesizer

logger = logging.getLogger(__name__)

SYNTHESIZERS = ChoiceEnum(["mlp", "coordinatewise", "scan"])
CELLS = ChoiceEnum(["gru", "lstm", "qrnn"])
SYNTHESIZER_INITS = ChoiceEnum(["zero", "paper"])


@dataclass
class DNICrossEntropyConfig(LMCrossEntropyConfig):
    dni_scale: float = field(
        default=0.1, metadata={"help": "scale of the injected synthetic gradient (also the bootstrap discount)"})
    dni_synthesizer: SYNTHESIZERS = field(
        default="mlp",
        metadata={"help": "mlp: Jaderberg et al.'s MLP over the whole state; coordinatewise: a small recurrent "
                          "network shared by every state coordinate, its own state carried across windows (what the "
                          "seed paper's code computes with --sgtype GRU/LSTM); "
                          "scan: the paper's QRNN synthesizer as its code runs it (--sgtype QRNN), one scan across "
                          "the B x D scalars of the flattened state"})
    dni_synthesizer_init: Optional[SYNTHESIZER_INITS] = field(
        default=None,
        metadata={"help": "scan: zero (default: the last layer starts at zero, training starts as TBPTT) or paper "
                          "(the paper's U(-0.1, 0.1) decoder weights)"})
    dni_scan_per_stream: bool = field(
        default=False,
        metadata={"help": "scan: scan each stream's coordinates on its own (a departure from the paper, whose "
                          "scan runs on from one stream into the next)"})
    dni_synthesizer_cell: Optional[CELLS] = field(
        default=None,
        metadata={"help": "coordinatewise: its recurrent cell, default gru (the paper's --sgtype GRU/LSTM; qrnn: its "
                          "QRNN cell run per coordinate, not what --sgtype QRNN computes: that is --dni-synthesizer scan)"})
    dni_synthesizer_layers: Optional[int] = field(
        default=None,
        metadata={"help": "mlp: linear layers (ReLU between; default 2); coordinatewise, scan: recurrent layers "
                          "(default 1)"})
    dni_synthesizer_hidden: Optional[int] = field(
        default=None,
        metadata={"help": "width of the synthesizer's hidden layers: mlp default 256 (0: the state size), "
                          "coordinatewise and scan default 50 (the paper's)"})
    dni_input_noise: Optional[float] = field(
        default=None,
        metadata={"help": "in training, multiply the synthesizer's input by noise from N(1, this) per element "
                          "(default: 0.5 for coordinatewise and scan, as the paper; 0 for mlp)"})
    dni_no_input_norm: bool = field(
        default=False,
        metadata={"help": "mlp: feed the raw state; by default h and c of each layer are normalised separately "
                          "(plus their log-norms): c is unbounded and would drown h"})
    dni_condition_on_next_input: bool = field(
        default=False, metadata={"help": "mlp: also feed the embedding of the next window's first input token"})
    dni_condition_on_next_target: bool = field(
        default=False,
        metadata={"help": "mlp: also feed the label vector (output-layer row; embedding with adaptive softmax) of "
                          "the next window's first target: conditional DNI. The true future gradient is dominated "
                          "by that unseen label (see docs/dni_stability)"})
    # checked when the criterion is built, before anything runs or is written:
    optimizer: Optional[str] = II("optimizer._name")  # must be 'alternating'


def relative_loss(meters) -> float:
    """``dni_rel_loss`` over a log interval: the synthesizer's summed squared error over the zero
    predictor's (1 - R^2 of the regression; 1 = no better than predicting zero), from the two sums
    ``reduce_metrics`` logs. NaN when no regression target was non-zero."""
    zero = meters["_dni_zero_mse"].sum if "_dni_zero_mse" in meters else 0.0
    return round(meters["_dni_mse"].sum / zero, 4) if zero > 0 else float("nan")


def resolved(cfg, name: str) -> Optional[str]:
    """A field interpolated from another config group, or None where that group has no such field."""
    try:
        value = getattr(cfg, name)
    except Exception:  # no such field in that group
        return None
    value = None if value is None else str(value)
    return None if value is None or value.startswith("${") else value  # "${...}": built outside a fairseq config


def check_optimizer(cfg: DNICrossEntropyConfig):
    """Refuse, before anything runs, an optimizer that would train the synthesizer with the LM."""
    optimizer = resolved(cfg, "optimizer")
    if optimizer is not None and optimizer != "alternating":
        raise DNIUserError(NEEDS_ALTERNATING)


NEEDS_ALTERNATING = (
    "--criterion dni_cross_entropy trains its synthesizer with its own optimizer, apart from the LM's (else its "
    "gradient would change the LM's update, e.g. through --clip-norm): use --optimizer alternating "
    "--base-optimizer adam|adamw|sgd|nag; for plain TBPTT use --criterion cross_entropy")


@dataclass
class SynthesizerCall:
    """What the synthesizer was fed at a window's end: re-evaluated, with gradients, to regress it."""
    inputs: torch.Tensor                 # (B, D) the flat state as fed (input noise included)
    condition: Optional[torch.Tensor]    # (B, C) or None
    own_state: Any                       # the synthesizer's own state before the call (None: stateless)


@dataclass
class PendingRegression:
    """A call whose target has arrived: regressed at the next window."""
    call: SynthesizerCall
    target: torch.Tensor                 # (B, D) the unscaled gradient at the state it was fed


@dataclass
class DNICarry:
    """Everything this criterion carries from one window to the next (per stream set)."""
    own_state: Any = None                         # the synthesizer's recurrent state after the last call
    last_call: Optional[SynthesizerCall] = None   # the call at the last window's end (awaiting its target)
    pending: Optional[PendingRegression] = None   # awaiting regression


@dataclass
class WindowCarry:
    """The criterion's part of a :class:`~fairseq_dni.step.Window`, from its forward to :meth:`end_window`."""
    next: DNICarry                              # what goes on to the next window, less the pending pair
    awaiting_target: Optional[SynthesizerCall]  # the call made at this window's start state (the last window's end)


@register_criterion("dni_cross_entropy", dataclass=DNICrossEntropyConfig)
class DNICrossEntropyCriterion(LMCrossEntropyCriterion, WindowCriterion):
    def __init__(self, task, cfg: DNICrossEntropyConfig):
        spec = task.model_spec if isinstance(task, WindowTask) else None
        if spec is None:
            raise DNIUserError(
                "dni_cross_entropy needs --task dni_language_modeling and a recurrent model from fairseq_dni "
                "(--arch dni_lstm_lm*, dni_qrnn_lm*): it reads the carried state the task threads through the windows")
        check_optimizer(cfg)
        if cfg.dni_scale < 0:  # a negative scale would inject the gradient's opposite
            raise DNIUserError(f"--dni-scale must be >= 0, got {cfg.dni_scale}")
        super().__init__(task, cfg)
        self.cfg = cfg
        self.layout = spec.layout
        kind = str(cfg.dni_synthesizer)
        if kind != "mlp":
            for flag, given in (("--dni-condition-on-next-input", cfg.dni_condition_on_next_input),
                                ("--dni-condition-on-next-target", cfg.dni_condition_on_next_target),
                                ("--dni-no-input-norm", cfg.dni_no_input_norm)):
                if given:
                    raise DNIUserError(f"{flag} applies to --dni-synthesizer mlp only, not {kind}")
        condition_dim = ((spec.embed_dim if cfg.dni_condition_on_next_input else 0)
                         + (spec.label_dim if cfg.dni_condition_on_next_target else 0))
        try:
            self.synthesizer = build_synthesizer(
                kind, self.layout, hidden=cfg.dni_synthesizer_hidden, layers=cfg.dni_synthesizer_layers,
                condition_dim=condition_dim, input_norm=not cfg.dni_no_input_norm,
                cell=None if cfg.dni_synthesizer_cell is None else str(cfg.dni_synthesizer_cell),
                input_noise=cfg.dni_input_noise,
                init=None if cfg.dni_synthesizer_init is None else str(cfg.dni_synthesizer_init),
                per_stream=cfg.dni_scan_per_stream)
        except ValueError as e:
            raise DNIUserError(str(e)) from None
        for p in self.parameters():
            p.param_group = "synthesizer"
        self.carried = CarriedState(dataclasses_in_values=(DNICarry, SynthesizerCall, PendingRegression))

    # ---- pieces --------------------------------------------------------------------------
    def synthesize(self, inputs, condition, own_state):
        """The synthesizer in its own dtype: (prediction (B, D), new own state)."""
        dtype = next(self.synthesizer.parameters()).dtype
        cond = None if condition is None else condition.to(dtype)
        return self.synthesizer(inputs.to(dtype), cond, tree_map(lambda t: t.to(dtype), own_state))

    def condition_for(self, model, next_input, next_target):
        """What the synthesizer sees besides the state (detached; None when not conditioned):
        the embedding of the next window's first input and/or the label vector of its first target."""
        parts = []
        if self.cfg.dni_condition_on_next_input:
            parts.append(model.decoder.embed_tokens(next_input))
        if self.cfg.dni_condition_on_next_target:
            if next_target is None:
                raise DNIUserError("--dni-condition-on-next-target needs batches from --task dni_language_modeling "
                                   "(they carry each window's next target)")
            projection = getattr(model.decoder, "output_projection", None)
            parts.append(projection.weight[next_target] if projection is not None
                         else model.decoder.embed_tokens(next_target))
        return torch.cat(parts, dim=-1).detach() if parts else None

    # ---- criterion -----------------------------------------------------------------------
    def forward(self, model, sample, reduce=True, window: Optional[Window] = None, mode: Optional[str] = None):
        """Training (``window`` and ``mode`` from ``fairseq_dni.step.train_window``): the window's loss from
        ``window.start`` as the module docstring says; fills ``window.final`` and ``window.criterion_carry``.
        Evaluation (no window): the LM loss, the model carrying its own state."""
        net_input = sample["net_input"]
        if net_input.get("state_key") is None:
            raise DNIUserError("dni_cross_entropy needs batches from --task dni_language_modeling")
        bsz = net_input["src_tokens"].size(0)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        training = self.training and model.training
        if training and window is None:
            raise DNIUserError("dni_cross_entropy trains through fairseq_dni.step.train_window (the task's "
                               "train_step), which hands it each window's start state and mode")
        if training and mode not in MODES:
            raise DNIUserError(NEEDS_ALTERNATING if mode is None else f"unknown mode {mode!r}: synthetic or real")

        net_output = model(**net_input, start_state=window.start) if training else model(**net_input)
        loss = self.lm_loss(model, net_output, sample)
        logging_output = {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": bsz,
                          "sample_size": sample_size}
        if not training:
            return loss, sample_size, logging_output

        loss = loss + self.activation_regularization(net_output, sample, sample_size, logging_output)
        final = window.final = net_output[1]["final_state"]
        final_flat = self.layout.flatten(final)
        with torch.no_grad():
            # cell-state norm per stream (all layers): the first thing to blow up when DNI goes wrong
            cells = torch.cat(self.layout.cells(final), dim=-1)
            logging_output["state_norm"] = cells.float().norm(dim=-1).mean()
        logging_output["dni_windows"] = 1
        logging_output["dni_synthetic"] = float(mode == "synthetic")

        carry = self.carried.get(window.key, bsz) or DNICarry()
        if window.reset:  # a new pass: the synthesizer's own state restarts with the LM's; a pending pair still counts
            carry = DNICarry(pending=carry.pending)

        # regress the call made at s_{t-2} (window t-2's end) onto the gradient that reached s_{t-2}
        # in window t-1's backward
        # (weighted by fairseq's divisor, ``sample_size or 1``, so that it reaches the synthesizer at unit
        # weight even in a window with no scored target, e.g. the copy task's input phase)
        total = loss + (sample_size or 1.0) * self.regression(carry.pending, logging_output)

        # the synthetic gradient at this window's end (computed in both modes: the synthesizer learns in both)
        condition = self.condition_for(model, sample["target"][:, -1], sample.get("next_target"))
        with torch.no_grad():
            inputs = self.synthesizer.perturb(final_flat.detach())
            own = carry.own_state if carry.own_state is not None else self.synthesizer.initial_own_state(inputs)
            prediction, new_own = self.synthesize(inputs, condition, own)
            finite = torch.isfinite(prediction).all()  # no host synchronisation: where() keeps it on the device
            prediction = torch.where(finite, prediction, 0.0)
            new_own = tree_map(lambda t: t.masked_fill_(~finite, 0.0), new_own)  # in place: made just above
        logging_output["dni_nonfinite"] = (~finite).float()
        if mode == "synthetic":
            total = total + synthetic_gradient_term(final_flat, prediction.to(final_flat.dtype), self.cfg.dni_scale)

        # this call goes on to the next window; end_window adds the pending pair (the last call and its target)
        window.criterion_carry = WindowCarry(
            next=DNICarry(own_state=new_own, last_call=SynthesizerCall(inputs, condition, own)),
            awaiting_target=carry.last_call if window.continues else None)
        return total, sample_size, logging_output

    def regression(self, pending: Optional[PendingRegression], logging_output):
        """The synthesizer's loss for the pending pair, logged; 0 when none.

        The call is re-evaluated with gradients on exactly what was fed (same input, same own
        state). A non-finite target (fp16 overflow, a diverging LM) or prediction (diverged
        synthesizer) skips this regression and is counted in ``dni_nonfinite``; the host check
        costs one synchronisation per window, and keeps NaN out of every gradient.
        """
        prediction = None
        if pending is not None:
            call = pending.call
            prediction, _ = self.synthesize(call.inputs, call.condition, call.own_state)
            if not bool(torch.isfinite(prediction).all() & torch.isfinite(pending.target).all()):
                logging_output["dni_nonfinite_target"] = 1.0
                prediction = None
        if prediction is None:
            # keep every synthesizer parameter in the graph (DDP expects it); contributes exactly 0,
            # with a zero (never NaN) gradient even if a parameter has gone non-finite
            total = sum(p.sum() for p in self.parameters())
            return torch.where(torch.isfinite(total), total, torch.zeros_like(total)) * 0.0
        target = pending.target
        loss = synthesizer_loss(prediction, target)
        with torch.no_grad():
            # prequential: this pair has not been trained on yet; the ratio to the zero predictor's
            # error (1 - R^2) is comparable across training, when the target's size keeps changing
            logging_output["dni_mse"] = loss.detach().float()
            logging_output["dni_zero_mse"] = target.float().pow(2).sum(-1).mean()
        with torch.no_grad():
            logging_output["dni_loss"] = loss.detach().float()
            logging_output["dni_cos"] = cosine_similarity(prediction, target)
            logging_output["dni_target_norm"] = target.float().norm(dim=-1).mean()
            logging_output["dni_pred_norm"] = prediction.float().norm(dim=-1).mean()
            logging_output["dni_regressions"] = 1.0
        return loss

    def end_window(self, window: Window, loss_scale: float = 1.0, valid: bool = True):
        """After backward: the gradient now sitting on the window's start state, unscaled, is the target
        of the call made at that state (the previous window's end): a pending pair, regressed at the next
        window. Carries that pair and this window's call (``window.criterion_carry``) on."""
        carry, pending = window.criterion_carry, None
        gradient = self.layout.gradient(window.start)  # None: some part of the DNI state received no gradient
        if carry.awaiting_target is not None and valid and gradient is not None:
            target = bootstrapped_target(gradient, loss_scale)
            pending = PendingRegression(call=carry.awaiting_target, target=target)
        self.carried.set(window.key, window.streams, DNICarry(own_state=carry.next.own_state,
                                                              last_call=carry.next.last_call, pending=pending))

    def pending(self, key: str = "train") -> Optional[PendingRegression]:
        """The pair awaiting regression for stream set ``key`` (None: none)."""
        carry = self.carried.peek(key)
        return None if carry is None else carry.pending

    # ---- checkpoints ---------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """fairseq's loader, except for a checkpoint without a synthesizer (see :meth:`has_synthesizer`)."""
        if not self.has_synthesizer(state_dict):
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @staticmethod
    def has_synthesizer(state_dict) -> bool:
        """Whether a checkpoint's criterion state holds a synthesizer. One trained with another criterion
        (plain TBPTT, ``--criterion cross_entropy``: the paper's real-gradient first phase) has none (fairseq
        saves no criterion state, or another criterion's): its LM is loaded and this synthesizer starts
        afresh, logged; the reverse (a DNI checkpoint continued with plain TBPTT) is fairseq's own."""
        if any(name.startswith("synthesizer.") for name in (state_dict or {})):
            return True
        logger.info("fairseq-dni: the checkpoint has no synthesizer (trained with another criterion, e.g. "
                    "--criterion cross_entropy): its LM is loaded and the synthesizer starts afresh")
        return False

    # ---- logging -------------------------------------------------------------------------
    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        LMCrossEntropyCriterion.reduce_metrics(logging_outputs)

        def total(name):
            return sum(float(log.get(name, 0)) for log in logging_outputs)

        windows, regressions = total("dni_windows"), total("dni_regressions")
        if windows > 0:
            metrics.log_scalar("state_norm", total("state_norm") / windows, windows, round=3)
            metrics.log_scalar("dni_synthetic", total("dni_synthetic") / windows, windows, round=2)
            metrics.log_scalar_sum("dni_nonfinite", total("dni_nonfinite") + total("dni_nonfinite_target"), round=0)
        if regressions > 0:
            metrics.log_scalar("dni_loss", total("dni_loss") / regressions, regressions, round=5)
            metrics.log_scalar("dni_cos", total("dni_cos") / regressions, regressions, round=4)
            # the ratio of the summed errors over the log interval (not a mean of per-update ratios,
            # which windows with a near-zero target make explode); "_" keeps the sums out of the log
            metrics.log_scalar_sum("_dni_mse", total("dni_mse"))
            metrics.log_scalar_sum("_dni_zero_mse", total("dni_zero_mse"))
            metrics.log_derived("dni_rel_loss", relative_loss)
            metrics.log_scalar("dni_target_norm", total("dni_target_norm") / regressions, regressions, round=5)
            metrics.log_scalar("dni_pred_norm", total("dni_pred_norm") / regressions, regressions, round=5)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
