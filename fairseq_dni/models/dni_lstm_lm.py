"""Model ``dni_lstm_lm``: an LSTM language model whose state flows across windows.

One ``torch.nn.LSTM`` call per window (cuDNN on GPU, one fused kernel per layer),
not fairseq's per-time-step ``LSTMCell`` loop. The final (h, c) of a window is
carried, detached, to the next window of the same stream set; what it shares with
``dni_qrnn_lm`` (embedding, dropouts, output layer, the carry, the hub) is
``fairseq_dni/models/stateful_lm.py``.

AWD-LSTM (Merity et al. 2018, ``salesforce/awd-lstm-lm``; the regularisers live in
``fairseq_dni/modules/``): ``--weight-drop`` (DropConnect on the hidden-to-hidden weights,
one mask per window, still one fused LSTM call), ``--locked-dropout`` (the input, between-layer
and output dropouts draw one mask per stream and window), ``--decoder-embed-dropout`` and
``--decoder-last-layer-out-dim`` (the last layer as wide as the embedding, so it can be tied).
The plain model keeps one stacked ``torch.nn.LSTM`` (parameters ``lstm.*``); layers of unequal
widths, or locked dropout between layers, run one single-layer LSTM per layer (``lstms.{l}.*``)
and carry the state as per-layer (h, c) pairs (``StateLayout(stacked=False)``).
"""

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
from fairseq.models import register_model, register_model_architecture

from fairseq_dni.carried_state import StateLayout
from fairseq_dni.models.stateful_lm import (
    State,
    StatefulDecoder,
    StatefulLanguageModel,
    StatefulLMConfig,
    dropout_module,
    rate,
    set_defaults,
)
from fairseq_dni.modules import WeightDropLSTM

logger = logging.getLogger(__name__)


@dataclass
class DNILSTMLMConfig(StatefulLMConfig):
    """``--arch dni_lstm_lm``: the shared flags (stateful_lm.py); the defaults are Zaremba et al.'s
    'medium' PTB LSTM, 2 x 650, dropout 0.5."""


@register_model("dni_lstm_lm", dataclass=DNILSTMLMConfig)
class DNILSTMLanguageModel(StatefulLanguageModel):
    @classmethod
    def build_model(cls, cfg: DNILSTMLMConfig, task):
        return cls(DNILSTMDecoder(cfg, task.target_dictionary))


class DNILSTMDecoder(StatefulDecoder):
    """The LSTM layers: state ``(h, c)`` laid out as :class:`~fairseq_dni.carried_state.StateLayout`."""

    def build_layers(self, cfg: DNILSTMLMConfig, embed_dim, widths) -> StateLayout:
        layers = len(widths)
        if len(set(widths)) == 1 and not (cfg.locked_dropout and layers > 1):
            # one stacked LSTM (its between-layer dropout is nn.LSTM's own, a new mask per token)
            self.lstm = WeightDropLSTM(
                embed_dim, widths[0], num_layers=layers, batch_first=True,
                dropout=rate(cfg, cfg.decoder_hidden_dropout) if layers > 1 else 0.0, weight_drop=cfg.weight_drop)
            self.lstms, self.hidden_dropout = None, None
        else:
            # the layers apart: unequal widths, or locked dropout between them
            self.lstm = None
            self.lstms = nn.ModuleList(
                WeightDropLSTM(embed_dim if l == 0 else widths[l - 1], width, batch_first=True,
                               weight_drop=cfg.weight_drop) for l, width in enumerate(widths))
            self.hidden_dropout = dropout_module(cfg, cfg.decoder_hidden_dropout)
        return StateLayout(widths, stacked=self.lstm is not None)

    def upgrade_state_dict_named(self, state_dict, name):
        """Checkpoints of fairseq-dni 0.1.0 kept the carried state in the decoder's own extra state."""
        old = f"{name}._extra_state" if name else "_extra_state"
        if old in state_dict:
            legacy = state_dict.pop(old) or {}
            train = (legacy.get("carry_state") or {}).get("train")
            state_dict[f"{name}.carried._extra_state" if name else "carried._extra_state"] = {
                "train": None if train is None else (int(train[0].size(1)), tuple(train))}

    def run_layers(self, x: torch.Tensor, state: State):
        """The LSTM layers over one window: x (B, T, E) -> (last layer's output (B, T, width_L), final state)."""
        if self.lstm is not None:
            return self.lstm(x, state)
        final = []
        for l, lstm in enumerate(self.lstms):
            if l > 0:
                x = self.hidden_dropout(x)
            x, layer_state = lstm(x, state[l])
            final.append(layer_state)
        return x, tuple(final)


# ---- named architectures ------------------------------------------------------------------
# defaults are set only where the command line left a value unset (fairseq's convention)

# ``--arch dni_lstm_lm`` itself is registered with the model and takes DNILSTMLMConfig's
# defaults: Zaremba et al.'s 'medium' PTB LSTM, 2 x 650, dropout 0.5.


@register_model_architecture("dni_lstm_lm", "dni_lstm_lm_small")
def dni_lstm_lm_small(args):
    """Zaremba et al.'s 'small' PTB LSTM: 2 x 200, no dropout (the setting of the DNI stability study)."""
    set_defaults(args, decoder_embed_dim=200, decoder_hidden_size=200, decoder_layers=2, dropout=0.0)


@register_model_architecture("dni_lstm_lm", "dni_lstm_lm_wikitext103")
def dni_lstm_lm_wikitext103(args):
    """WikiText-103 (267k types): 2 x 1024 LSTM, 512-d projection, adaptive softmax 20k/60k."""
    set_defaults(
        args, decoder_embed_dim=512, decoder_hidden_size=1024, decoder_layers=2,
        decoder_out_embed_dim=512, dropout=0.1, adaptive_softmax_cutoff="20000,60000",
        adaptive_softmax_dropout=0.1,
    )


@register_model_architecture("dni_lstm_lm", "dni_awd_lstm_lm")
def dni_awd_lstm_lm(args):
    """AWD-LSTM (Merity et al. 2018) as its PTB command runs it (``salesforce/awd-lstm-lm`` README:
    ``--dropouti 0.4 --dropouth 0.25``, defaults ``--dropout 0.4 --dropoute 0.1 --wdrop 0.5``,
    ``--emsize 400 --nhid 1150 --nlayers 3``, tied): 3 layers 1150/1150/400, 400-d tied embedding,
    locked dropout, weight drop. Its AR/TAR (``--alpha 2 --beta 1``) are criterion flags."""
    set_defaults(
        args, decoder_embed_dim=400, decoder_hidden_size=1150, decoder_layers=3,
        share_decoder_input_output_embed=True, decoder_last_layer_out_dim=True, locked_dropout=True,
        dropout=0.4, decoder_dropout_in=0.4, decoder_hidden_dropout=0.25, decoder_dropout_out=0.4,
        decoder_embed_dropout=0.1, weight_drop=0.5,
    )


@register_model_architecture("dni_lstm_lm", "dni_awd_lstm_lm_small")
def dni_awd_lstm_lm_small(args):
    """dni_awd_lstm_lm's shape at CPU size: 3 layers 256/256/128, 128-d tied embedding, AWD-LSTM's PTB
    dropout rates halved (a smaller model trained for a few epochs; not tuned further): dropouti 0.2,
    dropouth 0.125, dropout 0.2, dropoute 0.05, wdrop 0.25. About 4.5 minutes of one core per PTB epoch
    at 20 x 35 tokens (docs/awd.md)."""
    set_defaults(
        args, decoder_embed_dim=128, decoder_hidden_size=256, dropout=0.2, decoder_dropout_in=0.2,
        decoder_hidden_dropout=0.125, decoder_dropout_out=0.2, decoder_embed_dropout=0.05, weight_drop=0.25,
    )
    dni_awd_lstm_lm(args)
