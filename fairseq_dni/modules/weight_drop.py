"""DropConnect on a recurrent layer's weights, one mask per window (AWD-LSTM's weight drop).

:func:`weight_dropout` is the operation (the QRNN layer, ``modules/qrnn.py``, applies it to its gate
matrix, as AWD-LSTM wraps torchqrnn's ``linear`` in ``WeightDrop``); :class:`WeightDropLSTM` applies
it to an LSTM's hidden-to-hidden weights.

Wan et al. (2013); Merity et al. (2018), sec. 2. AWD-LSTM's ``WeightDrop`` (``salesforce/awd-lstm-lm``,
``weight_drop.py``) swaps the module's parameters and disables ``flatten_parameters``; here the
module is an ordinary ``torch.nn.LSTM`` (same parameters, same names, same checkpoints) whose
training forward hands the dropped weights to ``torch.lstm``, the fused op ``nn.LSTM`` itself calls
(one ``aten::lstm`` per call: cuDNN on GPU, oneDNN ``mkldnn_rnn_layer`` per layer on CPU). Nothing
of the module is patched or replaced, so eval, ``.cuda()``, ``flatten_parameters`` and state dicts
behave as for ``nn.LSTM``. On GPU the dropped weights are not in the module's flat cuDNN buffer, so
cuDNN copies them into one per call (as it does for AWD-LSTM).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_dni.modules.locked_dropout import check_rate


def weight_dropout(weight: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """DropConnect (Wan et al. 2013; AWD-LSTM's ``WeightDrop``): ``weight`` with each element zeroed with
    probability ``p`` and the rest scaled by 1 / (1 - p) (``F.dropout`` of the weight), one mask per call,
    in training; ``weight`` itself otherwise (or with p = 0: nothing drawn)."""
    if not training or p == 0:
        return weight
    return F.dropout(weight, p, training=True)


class WeightDropLSTM(nn.LSTM):
    """``nn.LSTM`` (batch-first here) with DropConnect of rate ``weight_drop`` on every layer's
    ``weight_hh_l{k}`` in training: each element is zeroed with probability p and the rest scaled
    by 1 / (1 - p) (``F.dropout`` of the weight, as AWD-LSTM), one mask per forward call, shared by
    every time step and stream of the call. Eval mode, or p = 0: exactly ``nn.LSTM``."""

    def __init__(self, *args, weight_drop: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_drop = check_rate("weight drop rate", weight_drop)

    def forward(self, input, hx=None):
        if not self.training or self.weight_drop == 0:
            return super().forward(input, hx)
        if input.dim() != 3 or hx is None or self.bidirectional or self.proj_size:
            raise NotImplementedError("WeightDropLSTM runs batched, unpacked input from a given state only")
        weights = []  # layer by layer, as torch.lstm takes them: w_ih, w_hh, b_ih, b_hh
        for w_ih, w_hh, *biases in self.all_weights:
            weights += [w_ih, weight_dropout(w_hh, self.weight_drop, training=True), *biases]
        output, h, c = torch.lstm(input, hx, weights, self.bias, self.num_layers, self.dropout,
                                  self.training, self.bidirectional, self.batch_first)
        return output, (h, c)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_drop={self.weight_drop}"
