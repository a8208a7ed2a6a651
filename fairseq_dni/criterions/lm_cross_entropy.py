"""Criterion ``lm_cross_entropy``: the LM loss plus AWD-LSTM's activation regularisers (AR, TAR).

Merity, Keskar & Socher (2018), sec. 4.6 and ``salesforce/awd-lstm-lm`` ``main.py``: with the last
LSTM layer's outputs ``raw`` (before its output dropout) and ``dropped`` (after it), each (B, T, D),
AWD-LSTM trains on

    mean token cross-entropy + alpha * mean(dropped ** 2) + beta * mean((raw[t] - raw[t-1]) ** 2),

the means over every element (positions x streams x units; TAR over the T-1 consecutive pairs of
the window, never across windows). Here the means skip padding positions (targets == pad; a pair
counts when both positions are real tokens).

Units: like fairseq's ``cross_entropy`` this criterion returns the LM loss *summed* over target
tokens, and fairseq divides the loss by the sample size before backward; AR and TAR are therefore
added multiplied by the sample size, so that after the division the gradient is exactly AWD-LSTM's
(with ``--update-freq`` or several ranks: the token-weighted mean of the windows' terms). Logged
apart: ``loss`` (and ``ppl``) stay the LM loss alone; ``ar`` and ``tar`` are the terms as AWD-LSTM adds
them to its per-token loss (nats, alpha and beta included). Only in training (dropout on); never
in validation or eval-lm.

The model must expose the last layer's outputs as ``extra["raw_output"]`` / ``extra["dropped_output"]``
(fairseq_dni's ``dni_lstm_lm`` and ``dni_qrnn_lm`` do). ``dni_cross_entropy`` builds on this criterion.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from fairseq_dni.errors import DNIUserError


@dataclass
class LMCrossEntropyConfig(FairseqDataclass):
    alpha: float = field(
        default=0.0,
        metadata={"help": "activation regularisation (AR; AWD-LSTM's --alpha, 2 there): add alpha x the mean square "
                          "of the last LSTM layer's outputs after its output dropout to the per-token loss (0: off)"})
    beta: float = field(
        default=0.0,
        metadata={"help": "temporal activation regularisation (TAR; AWD-LSTM's --beta, 1 there): add beta x the mean "
                          "square of the step-to-step change of the last layer's raw outputs (0: off)"})
    sentence_avg: bool = II("optimization.sentence_avg")


def activation_terms(raw: torch.Tensor, dropped: torch.Tensor, valid: torch.Tensor):
    """AWD-LSTM's AR and TAR means, over real tokens only.

    Args:
        raw, dropped: (B, T, D) the last layer's outputs before / after its output dropout.
        valid: (B, T) bool, True at real target positions (False at padding).

    Returns:
        ``(ar, tar)``, 0-d tensors: mean of ``dropped ** 2`` over the valid positions and the D units,
        mean of ``(raw[:, t] - raw[:, t-1]) ** 2`` over the pairs of consecutive valid positions and
        the D units (0 when there is none).
    """
    units = raw.size(-1)
    mask = valid.to(dropped.dtype)
    ar = (dropped.pow(2).sum(-1) * mask).sum() / (mask.sum() * units).clamp_min(1)
    pairs = (valid[:, 1:] & valid[:, :-1]).to(raw.dtype)
    step = (raw[:, 1:] - raw[:, :-1]).pow(2).sum(-1)
    tar = (step * pairs).sum() / (pairs.sum() * units).clamp_min(1)
    return ar, tar


@register_criterion("lm_cross_entropy", dataclass=LMCrossEntropyConfig)
class LMCrossEntropyCriterion(CrossEntropyCriterion):
    """fairseq's ``cross_entropy`` (or ``adaptive_loss`` for an adaptive softmax) plus AR and TAR."""

    def __init__(self, task, cfg: LMCrossEntropyConfig):
        super().__init__(task, cfg.sentence_avg)
        for flag, value in (("--alpha", cfg.alpha), ("--beta", cfg.beta)):
            if not value >= 0:
                raise DNIUserError(f"{flag} (the weight of {'AR' if flag == '--alpha' else 'TAR'}) must be >= 0, "
                                   f"got {value}")
        self.alpha, self.beta = float(cfg.alpha), float(cfg.beta)

    def lm_loss(self, model, net_output, sample) -> torch.Tensor:
        """The LM loss summed over target tokens (padding ignored), as ``cross_entropy`` /
        ``adaptive_loss`` compute it."""
        decoder = model.decoder
        if getattr(decoder, "adaptive_softmax", None) is None:
            return self.compute_loss(model, net_output, sample)[0]
        target = model.get_targets(sample, net_output).view(-1)
        logits, targets = decoder.adaptive_softmax(net_output[0], target)
        loss = net_output[0].new_zeros(())
        for lg, tg in zip(logits, targets):
            if tg is not None:
                loss = loss + F.cross_entropy(lg, tg, ignore_index=self.padding_idx, reduction="sum")
        return loss

    def activation_regularization(self, net_output, sample, sample_size, logging_output) -> torch.Tensor:
        """``sample_size * (alpha * AR + beta * TAR)`` (the loss's units, see the module docstring), logged
        as ``ar`` / ``tar``; 0 when both weights are 0."""
        if self.alpha == 0 and self.beta == 0:
            return 0.0
        extra = net_output[1]
        if "raw_output" not in extra or "dropped_output" not in extra:
            raise DNIUserError("--alpha/--beta (AR/TAR) need a model that exposes its last LSTM layer's outputs "
                               "(extra['raw_output'], extra['dropped_output']): --arch dni_lstm_lm*")
        ar, tar = activation_terms(extra["raw_output"], extra["dropped_output"], sample["target"].ne(self.padding_idx))
        ar, tar = self.alpha * ar, self.beta * tar
        logging_output["ar"] = ar.detach() * sample_size
        logging_output["tar"] = tar.detach() * sample_size
        return sample_size * (ar + tar)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss = self.lm_loss(model, net_output, sample)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": sample["target"].size(0),
                          "sample_size": sample_size}
        if self.training and model.training:
            loss = loss + self.activation_regularization(net_output, sample, sample_size, logging_output)
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        CrossEntropyCriterion.reduce_metrics(logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        for name in ("ar", "tar"):
            if sample_size > 0 and any(name in log for log in logging_outputs):
                value = sum(float(log.get(name, 0)) for log in logging_outputs)
                metrics.log_scalar(name, value / sample_size, sample_size, round=5)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True

