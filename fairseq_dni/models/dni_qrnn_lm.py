"""Model ``dni_qrnn_lm``: a QRNN language model whose state flows across windows (AWD-QRNN).

The seed paper's base model (Shang & Zhang, arXiv 1902.10630; ``parap1uie-s/alternate_sg``, ``model.py``,
``--model QRNN``), which is AWD-LSTM's QRNN setting (Merity, Keskar & Socher 2018, ``salesforce/awd-lstm-lm``):
a stack of torchqrnn ``QRNNLayer``s (Bradbury et al. 2017), the first with window 2 and ``save_prev_x``,
the others window 1, every one with an output gate and no zoneout, weight drop on each layer's gate
matrix, locked dropout between layers, a last layer as wide as the tied embedding. Each layer is
:class:`fairseq_dni.modules.qrnn.QRNNLayer`: one matmul for the whole window's gates and the forget-mult
recurrence as a scan, in pure PyTorch. Everything around the layers (embedding, embedding dropout, the
dropouts, tied output, the carry, ``model_spec``, the hub) is the LSTM model's
(``fairseq_dni/models/stateful_lm.py``), with the same flags.

Carried state (:class:`~fairseq_dni.carried_state.QRNNStateLayout`): ``(cells, previous_input)``, every
layer's last cell state ``c_l`` (1, B, width_l) and, with ``--qrnn-window 2``, the first layer's last input
(1, B, E): the previous window's last token's embedding after the input dropout (torchqrnn's ``prevX``).
Both go from one window to the next like the LSTM's (h, c), through stateful training, ``fairseq-eval-lm``,
the hub, checkpoints and several ranks. DNI reads and injects at the cell states only (the seed paper's
``join_hidden`` of torchqrnn's hidden states, which are the cells: c_0, c_1, ...). The previous input is
carried detached and outside the DNI vector, as torchqrnn carries ``prevX`` (``requires_grad=False``):
its gradient would reach only the embedding table and the first layer's gate matrix, through the
previous window's last input token, and no recurrent path: no later state depends on it except through
the next window's first gates. Full BPTT over two windows therefore means, for this model, BPTT with
that input detached at the window boundary (``tests/test_qrnn_lm.py`` checks the DNI oracle against it).
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from fairseq.models import register_model, register_model_architecture

from fairseq_dni.carried_state import QRNNStateLayout
from fairseq_dni.errors import DNIUserError
from fairseq_dni.models.stateful_lm import (
    State,
    StatefulDecoder,
    StatefulLanguageModel,
    StatefulLMConfig,
    dropout_module,
    set_defaults,
)
from fairseq_dni.modules import QRNNLayer


@dataclass
class DNIQRNNLMConfig(StatefulLMConfig):
    """``--arch dni_qrnn_lm``: the shared flags (stateful_lm.py, the LSTM model's) and the first layer's window."""

    qrnn_window: int = field(
        default=2,
        metadata={"help": "the first QRNN layer's window: 2 (its gates see x_t and x_{t-1}; the last input is "
                          "carried to the next window, torchqrnn's save_prev_x) or 1; later layers have window 1"})


@register_model("dni_qrnn_lm", dataclass=DNIQRNNLMConfig)
class DNIQRNNLanguageModel(StatefulLanguageModel):
    @classmethod
    def build_model(cls, cfg: DNIQRNNLMConfig, task):
        return cls(DNIQRNNDecoder(cfg, task.target_dictionary))


class DNIQRNNDecoder(StatefulDecoder):
    """The QRNN layers (``qrnns.{l}.linear.*``), run time-major; between layers the hidden dropout
    (locked with ``--locked-dropout``: one mask per stream and window)."""

    def build_layers(self, cfg: DNIQRNNLMConfig, embed_dim, widths) -> QRNNStateLayout:
        if cfg.qrnn_window not in (1, 2):
            raise DNIUserError(f"--qrnn-window must be 1 or 2, got {cfg.qrnn_window}")
        self.qrnns = nn.ModuleList(
            QRNNLayer(embed_dim if l == 0 else widths[l - 1], width, window=cfg.qrnn_window if l == 0 else 1,
                      output_gate=True, weight_drop=cfg.weight_drop)
            for l, width in enumerate(widths))
        self.hidden_dropout = dropout_module(cfg, cfg.decoder_hidden_dropout)
        return QRNNStateLayout(tuple(widths), previous_input_size=embed_dim if cfg.qrnn_window == 2 else 0)

    def run_layers(self, x: torch.Tensor, state: State):
        """The QRNN layers over one window: x (B, T, E) -> (last layer's output (B, T, width_L), final state
        ``(cells, previous_input)``, laid out as ``self.state_layout`` says)."""
        cells, previous = state
        new_previous = None if previous is None else x[:, -1].unsqueeze(0).detach()   # torchqrnn's prevX
        final = []
        for l, qrnn in enumerate(self.qrnns):
            if l > 0:
                x = self.hidden_dropout(x)
            h, c = qrnn(x.transpose(0, 1), cells[l][0], previous[0] if l == 0 and previous is not None else None)
            x = h.transpose(0, 1)
            final.append(c.unsqueeze(0))
        return x, (tuple(final), new_previous)


# ---- named architectures ------------------------------------------------------------------
# ``--arch dni_qrnn_lm`` itself takes DNIQRNNLMConfig's defaults (the LSTM model's: 2 x 650, dropout 0.5),
# first layer window 2.


@register_model_architecture("dni_qrnn_lm", "dni_awd_qrnn_lm")
def dni_awd_qrnn_lm(args):
    """The seed paper's QRNN (its README's PTB command: ``--model QRNN --nhid 1550 --nlayers 4 --emsize 400
    --wdrop 0.1 --dropouth 0.3 --dropouti 0.4``, tied): 4 layers 1550/1550/1550/400, 400-d tied embedding,
    first layer window 2, locked dropout, weight drop 0.1 on each gate matrix; the other dropouts as
    ``dni_awd_lstm_lm`` (AWD-LSTM's PTB: dropout 0.4, dropouti 0.4, dropouth 0.25, dropoute 0.1; the paper's
    commands set dropouth 0.3 on PTB and 0.2 on WikiText-2: ``--decoder-hidden-dropout``)."""
    set_defaults(
        args, decoder_embed_dim=400, decoder_hidden_size=1550, decoder_layers=4, qrnn_window=2,
        share_decoder_input_output_embed=True, decoder_last_layer_out_dim=True, locked_dropout=True,
        dropout=0.4, decoder_dropout_in=0.4, decoder_hidden_dropout=0.25, decoder_dropout_out=0.4,
        decoder_embed_dropout=0.1, weight_drop=0.1,
    )


@register_model_architecture("dni_qrnn_lm", "dni_awd_qrnn_lm_small")
def dni_awd_qrnn_lm_small(args):
    """dni_awd_qrnn_lm's shape at CPU size, scaled as ``dni_awd_lstm_lm_small``: 3 layers 256/256/128,
    128-d tied embedding, first layer window 2, the dropout rates halved (dropouti 0.2, dropouth 0.125,
    dropout 0.2, dropoute 0.05), weight drop 0.05 (half the paper's 0.1)."""
    set_defaults(
        args, decoder_embed_dim=128, decoder_hidden_size=256, decoder_layers=3, dropout=0.2,
        decoder_dropout_in=0.2, decoder_hidden_dropout=0.125, decoder_dropout_out=0.2, decoder_embed_dropout=0.05,
        weight_drop=0.05,
    )
    dni_awd_qrnn_lm(args)
