"""Criterion ``dni_cross_entropy``: the LM loss plus Decoupled Neural Interfaces.

Per training window ``t`` (stream set ``train``; see ``fairseq_dni/dni.py`` for the maths):

1. The window starts from the carried state ``s_{t-1}`` made a leaf that requires
   grad, so backward leaves the true gradient arriving at the window's start on it.
2. LM loss (summed over target tokens, as fairseq's ``cross_entropy`` /
   ``adaptive_loss``), plus, in synthetic mode, the injected synthetic gradient
   ``scale * M(s_t)`` at the window's final state (none in real mode).
3. After backward (``after_backward``, called by the task with the optimizer's
   loss scale) the gradient on ``s_{t-1}`` is unscaled and divided by the window's
   token count: the regression target for ``M(s_{t-1})``. It is regressed one
   window later (the synthesizer's loss is part of window ``t+1``'s loss), in
   both modes, so the synthesizer keeps learning while real gradients are used.

Units: the synthesizer predicts, per stream, the gradient of the *summed* loss of
that stream's future tokens with respect to its state — the same units as the LM
loss this criterion returns (a sum over tokens), so injection needs no rescaling:
fairseq divides the whole loss by the sample size, injected term included, exactly
as full BPTT would divide the future tokens' loss. These targets are O(1) (the
per-token mean would be B*T times smaller). Only the synthesizer's own regression
loss is multiplied by the sample size, so that fairseq's division leaves it as is.

The synthesizer lives in this criterion (fairseq optimizes, all-reduces and
checkpoints criterion parameters), so LM checkpoints stay plain LSTMs for eval-lm.
Its parameters carry ``param_group = "synthesizer"`` for optimizers that treat them apart.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from fairseq_dni.errors import DNIUserError
from fairseq_dni.rank_state import this_rank_entry, world_size
from fairseq_dni.dni import (
    Synthesizer,
    bootstrapped_target,
    cosine_similarity,
    flatten_state,
    synthesizer_loss,
    synthetic_gradient_term,
)

DNI_MODES = ChoiceEnum(["synthetic", "real"])


@dataclass
class DNICrossEntropyConfig(FairseqDataclass):
    dni_mode: DNI_MODES = field(
        default="synthetic",
        metadata={"help": "synthetic: inject the synthesizer's gradient at every window's end; "
                          "real: plain TBPTT (the synthesizer still learns)"},
    )
    dni_scale: float = field(
        default=0.1, metadata={"help": "scale of the injected synthetic gradient (also the bootstrap discount)"})
    dni_synthesizer_layers: int = field(
        default=2, metadata={"help": "linear layers in the synthesizer MLP (ReLU between; last starts at zero)"})
    dni_synthesizer_hidden: int = field(
        default=256,
        metadata={"help": "width of the synthesizer's hidden layers (0: the state size 2*layers*hidden; "
                          "256 keeps its cost small next to the LM, see benchmarks/dni_throughput.py)"})
    dni_no_input_norm: bool = field(
        default=False,
        metadata={"help": "feed the raw state to the synthesizer; by default h and c of each layer "
                          "are normalised separately (plus their log-norms): c is unbounded and would drown h"})
    dni_condition_on_next_input: bool = field(
        default=False, metadata={"help": "also feed the synthesizer the embedding of the next window's first input token"})
    dni_condition_on_next_target: bool = field(
        default=False,
        metadata={"help": "also feed the synthesizer the label vector (output-layer row; embedding with "
                          "adaptive softmax) of the next window's first target: conditional DNI. The true "
                          "future gradient is dominated by that unseen label (see docs/dni_stability)"})
    dni_future_aux: float = field(
        default=0.0,
        metadata={"help": "weight of the auxiliary task: from s_{t-1}, also predict the synthetic gradient "
                          "one window further ahead, M(s_t) (0: off)"},
    )
    dni_target_clip: float = field(
        default=0.0,
        metadata={"help": "clip each stream's regression target to this L2 norm (0: no clipping)"})
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("dni_cross_entropy", dataclass=DNICrossEntropyConfig)
class DNICrossEntropyCriterion(CrossEntropyCriterion):
    def __init__(self, task, cfg: DNICrossEntropyConfig):
        super().__init__(task, cfg.sentence_avg)
        dims = getattr(task, "recurrent_state_dims", None)
        if dims is None:
            raise DNIUserError(
                "dni_cross_entropy needs --task dni_language_modeling and an LSTM model from fairseq_dni "
                "(--arch dni_lstm_lm*): it reads the carried state the task threads through the windows")
        self.cfg = cfg
        self.mode = str(cfg.dni_mode)
        state_dim = 2 * dims["layers"] * dims["hidden"]
        self.synthesizer = Synthesizer(
            state_dim,
            hidden_dim=cfg.dni_synthesizer_hidden,
            num_layers=cfg.dni_synthesizer_layers,
            condition_dim=(dims["embed"] if cfg.dni_condition_on_next_input else 0)
            + (dims.get("label", dims["embed"]) if cfg.dni_condition_on_next_target else 0),
            state_chunks=0 if cfg.dni_no_input_norm else 2 * dims["layers"],
        )
        self.future_head = None
        if cfg.dni_future_aux > 0:
            self.future_head = Synthesizer(
                state_dim, hidden_dim=cfg.dni_synthesizer_hidden, num_layers=cfg.dni_synthesizer_layers,
                condition_dim=0, state_chunks=0 if cfg.dni_no_input_norm else 2 * dims["layers"])
        for p in self.parameters():
            p.param_group = "synthesizer"
        self._this_window = None   # what after_backward needs from the window just computed
        self._to_regress = None    # (state, condition, target, future target) awaiting regression
        self.pending_by_rank = None  # every rank's _to_regress, gathered by the task (several ranks)

    def set_mode(self, mode: str):
        """real / synthetic for the coming windows (the cosine_alternating schedule calls this via the task)."""
        if mode not in ("real", "synthetic"):
            raise ValueError(f"unknown DNI mode {mode!r}")
        self.mode = mode

    # ---- pieces --------------------------------------------------------------------------
    def lm_loss(self, model, net_output, sample):
        decoder = model.decoder
        if getattr(decoder, "adaptive_softmax", None) is None:
            return self.compute_loss(model, net_output, sample)[0]
        # same as fairseq's adaptive_loss criterion
        target = model.get_targets(sample, net_output).view(-1)
        logits, targets = decoder.adaptive_softmax(net_output[0], target)
        loss = net_output[0].new_zeros(())
        for lg, tg in zip(logits, targets):
            if tg is not None:
                loss = loss + F.cross_entropy(lg, tg, ignore_index=self.padding_idx, reduction="sum")
        return loss

    def synthesize(self, state_flat, condition):
        dtype = next(self.synthesizer.parameters()).dtype
        cond = None if condition is None else condition.to(dtype)
        return self.synthesizer(state_flat.to(dtype), cond)

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
    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        key, reset = net_input.get("state_key"), bool(net_input.get("reset_state", False))
        if key is None:
            raise DNIUserError("dni_cross_entropy needs batches from --task dni_language_modeling")
        decoder = model.decoder
        src = net_input["src_tokens"]
        bsz = src.size(0)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        training = self.training and model.training
        carried = (not reset and key in decoder.carry_state and decoder.carry_state[key][0].size(1) == bsz)

        start = decoder.initial_state(bsz, key, reset)
        if training:
            start = tuple(s.detach().requires_grad_(True) for s in start)
        net_output = model(**net_input, initial_state=start)
        loss = self.lm_loss(model, net_output, sample)
        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": bsz,
            "sample_size": sample_size,
        }
        if not training:
            return loss, sample_size, logging_output

        final = net_output[1]["final_state"]
        final_flat = flatten_state(final)
        with torch.no_grad():
            # cell-state norm per stream (all layers): the first thing to blow up when DNI goes wrong
            logging_output["state_norm"] = final[1].float().transpose(0, 1).reshape(bsz, -1).norm(dim=-1).mean()
        logging_output["dni_windows"] = 1
        logging_output["dni_synthetic"] = float(self.mode == "synthetic")

        # 1) regress the prediction made one window ago onto the gradient that reached its successor
        total = loss + sample_size * self.regression(logging_output, bsz)

        # 2) the synthetic gradient at this window's end
        condition = self.condition_for(model, sample["target"][:, -1], sample.get("next_target"))
        with torch.no_grad():
            prediction = self.synthesize(final_flat.detach(), condition)
            finite = torch.isfinite(prediction).all()
            prediction = torch.where(finite, prediction, torch.zeros_like(prediction))
        logging_output["dni_nonfinite"] = (~finite).float()
        if self.mode == "synthetic":
            total = total + synthetic_gradient_term(final_flat, prediction.to(final_flat.dtype), self.cfg.dni_scale)

        # 3) remember what after_backward needs to form M(s_{t-1})'s target
        start_condition = self.condition_for(model, src[:, 0], sample["target"][:, 0])
        self._this_window = {
            "leaf": start if carried else None,
            "state": flatten_state(start).detach(),
            "condition": start_condition,
            "future_target": prediction.detach(),  # M(s_t): the synthetic gradient one window ahead of s_{t-1}
        }
        return total, sample_size, logging_output

    def regression(self, logging_output, bsz):
        """The synthesizer's loss for the pending (state, target) pair, logged; 0 when none.

        A non-finite target (fp16 overflow, a diverging LM) or prediction (diverged synthesizer)
        skips this regression and is counted in ``dni_nonfinite``; the host check costs one
        synchronisation per window, and keeps NaN out of every gradient.
        """
        pending, self._to_regress = self._to_regress, None
        prediction = None
        if pending is not None and pending["state"].size(0) == bsz:
            prediction = self.synthesize(pending["state"], pending["condition"])
            if not bool(torch.isfinite(prediction).all() & torch.isfinite(pending["target"]).all()):
                logging_output["dni_nonfinite_target"] = 1.0
                prediction = None
        if prediction is None:
            # keep every synthesizer parameter in the graph (DDP expects it); contributes exactly 0,
            # with a zero (never NaN) gradient even if a parameter has gone non-finite
            total = sum(p.sum() for p in self.parameters())
            return torch.where(torch.isfinite(total), total, torch.zeros_like(total)) * 0.0
        target = pending["target"]
        loss = synthesizer_loss(prediction, target)
        with torch.no_grad():
            # prequential: this pair has not been trained on yet; the ratio to the zero predictor's
            # error (1 - R^2) is comparable across training, when the target's size keeps changing
            logging_output["dni_mse"] = loss.detach().float()
            logging_output["dni_zero_mse"] = target.float().pow(2).sum(-1).mean()
        if self.future_head is not None:
            future = self.future_head(pending["state"].to(prediction.dtype))
            loss = loss + self.cfg.dni_future_aux * synthesizer_loss(future, pending["future_target"])
        with torch.no_grad():
            logging_output["dni_loss"] = loss.detach().float()
            logging_output["dni_cos"] = cosine_similarity(prediction, target)
            logging_output["dni_target_norm"] = target.float().norm(dim=-1).mean()
            logging_output["dni_pred_norm"] = prediction.float().norm(dim=-1).mean()
            logging_output["dni_regressions"] = 1.0
        return loss

    def after_backward(self, loss_scale: float = 1.0, valid: bool = True):
        """Turn the gradient now sitting on this window's initial state into M(s_{t-1})'s target."""
        window, self._this_window = self._this_window, None
        if window is None or window["leaf"] is None or not valid:
            return
        grads = [s.grad for s in window["leaf"]]
        if any(g is None for g in grads):
            return
        target = bootstrapped_target(flatten_state(tuple(grads)), loss_scale)
        if self.cfg.dni_target_clip > 0:
            norms = target.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            target = target * (self.cfg.dni_target_clip / norms).clamp(max=1.0)
        self._to_regress = {
            "state": window["state"],
            "condition": window["condition"],
            "target": target,
            "future_target": window["future_target"],
        }

    # the pending (state, target) pair travels in checkpoints, so a resumed run regresses the
    # same pair at its first window as the uninterrupted run does; with several ranks rank 0
    # writes every rank's (gathered by the task each micro-batch)
    def get_extra_state(self):
        if world_size() > 1:
            return {"to_regress_by_rank": self.pending_by_rank}
        pending = self._to_regress
        if pending is None:
            return {"to_regress": None}
        return {"to_regress": {k: (None if v is None else v.detach().cpu()) for k, v in pending.items()}}

    def set_extra_state(self, state):
        state = state or {}
        pending = state.get("to_regress")
        by_rank = state.get("to_regress_by_rank")
        if by_rank is not None:
            pending = this_rank_entry(by_rank)
        if pending is None:
            self._to_regress = None
            return
        device = next(self.synthesizer.parameters()).device
        self._to_regress = {k: (None if v is None else v.to(device)) for k, v in pending.items()}
        self._to_regress.setdefault("condition", None)

    # ---- logging -------------------------------------------------------------------------
    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        CrossEntropyCriterion.reduce_metrics(logging_outputs)

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
            if total("dni_zero_mse") > 0:
                metrics.log_scalar("dni_rel_loss", total("dni_mse") / total("dni_zero_mse"), regressions, round=4)
            metrics.log_scalar("dni_target_norm", total("dni_target_norm") / regressions, regressions, round=5)
            metrics.log_scalar("dni_pred_norm", total("dni_pred_norm") / regressions, regressions, round=5)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
