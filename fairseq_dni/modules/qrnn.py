"""A quasi-recurrent layer (QRNN) in pure PyTorch: one matmul for a whole window's gates, then a scan.

torch only, CPU and CUDA, no compiled extension. Bradbury, Merity, Xiong & Socher 2017 (arXiv
1611.01576), as ``salesforce/pytorch-qrnn``'s ``torchqrnn.QRNNLayer`` computes it (the layer AWD-LSTM's
``--model QRNN`` and the seed paper's ``model.py`` stack). Time-major, for inputs x (T, B, I):

* gates (eq. 1, a masked convolution of width ``window``): with window 1 the source is ``x_t``, with
  window 2 ``[x_t, x_{t-1}]`` (``x_{-1}``: the previous call's last input, torchqrnn's ``prevX`` with
  ``save_prev_x``; zeros without one); ``[Z, F, O] = source W^T + b``, ONE (T*B, window*I) x
  (window*I, 3H) product for the whole window, W (3H, window*I) ``linear.weight`` as torchqrnn lays it
  out (rows z, f, o; columns x_t then x_{t-1});
* ``z = tanh(Z)``, ``f = sigmoid(F)``, ``o = sigmoid(O)`` (eq. 1-2);
* fo-pooling (eq. 4) in torchqrnn's convention for f: ``c_t = f_t * z_t + (1 - f_t) * c_{t-1}`` (the
  paper's f is torchqrnn's 1 - f), run as a scan over t by :func:`fairseq_dni.modules.forget_mult.
  forget_mult`; ``h_t = o_t * c_t`` (with ``output_gate``; ``h_t = c_t`` without);
* zoneout (Krueger et al. 2016, torchqrnn's form, 0 by default): in training each f is multiplied by a
  Bernoulli(1 - zoneout) mask (that unit keeps its old cell value), in eval by 1 - zoneout;
* weight drop (AWD-LSTM's ``WeightDrop`` on torchqrnn's ``linear``, Merity et al. 2018): DropConnect of
  rate ``weight_drop`` on W, one mask per call (window), in training
  (:func:`~fairseq_dni.modules.weight_drop.weight_dropout`).

Stateless: the carried cell state and previous input come in as arguments and go out as results (the
model carries them, ``fairseq_dni/models/dni_qrnn_lm.py``).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_dni.modules.forget_mult import forget_mult
from fairseq_dni.modules.locked_dropout import check_rate
from fairseq_dni.modules.weight_drop import weight_dropout


class QRNNLayer(nn.Module):
    """One QRNN layer (module docstring): ``input_size`` I -> ``hidden_size`` H, ``window`` 1 or 2.

    Parameters: ``linear`` (``nn.Linear(window * I, 3H)``, or 2H without ``output_gate``), torchqrnn's
    name and layout. ``forward(x (T, B, I), c0 (B, H) or None, previous_input (B, I) or None)`` ->
    ``(h (T, B, H), c_last (B, H))``; ``previous_input`` is ``x_{-1}`` of a window-2 layer (None: zeros;
    a window-1 layer takes none). Raises ValueError for a window other than 1 or 2, a rate outside
    [0, 1), or inputs of the wrong width.
    """

    def __init__(self, input_size: int, hidden_size: int, window: int = 1, output_gate: bool = True,
                 zoneout: float = 0.0, weight_drop: float = 0.0):
        super().__init__()
        if window not in (1, 2):
            raise ValueError(f"QRNN window must be 1 or 2, got {window}")
        self.input_size, self.hidden_size, self.window, self.output_gate = input_size, hidden_size, window, output_gate
        self.zoneout = check_rate("QRNN zoneout", zoneout)
        self.weight_drop = check_rate("--weight-drop", weight_drop)
        self.linear = nn.Linear(window * input_size, (3 if output_gate else 2) * hidden_size)

    def source(self, x: torch.Tensor, previous_input: Optional[torch.Tensor]) -> torch.Tensor:
        """The gates' input (T, B, window * I): ``x``, or ``[x_t, x_{t-1}]`` for window 2."""
        if x.dim() != 3 or x.size(2) != self.input_size:
            raise ValueError(f"QRNN layer of input size {self.input_size} got input {tuple(x.shape)} (want (T, B, I))")
        if self.window == 1:
            if previous_input is not None:
                raise ValueError("a window-1 QRNN layer takes no previous input")
            return x
        before = x.new_zeros(1, *x.shape[1:]) if previous_input is None else previous_input.unsqueeze(0)
        return torch.cat([x, torch.cat([before, x[:-1]])], dim=2)

    def forward(self, x: torch.Tensor, c0: Optional[torch.Tensor] = None,
                previous_input: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        weight = weight_dropout(self.linear.weight, self.weight_drop, self.training)
        gates = F.linear(self.source(x, previous_input), weight, self.linear.bias)   # one matmul: (T, B, 3H)
        if self.output_gate:
            z, f, o = gates.chunk(3, dim=2)
        else:
            (z, f), o = gates.chunk(2, dim=2), None
        z, f = torch.tanh(z), torch.sigmoid(f)
        if self.zoneout > 0:
            if self.training:
                f = f * torch.empty_like(f).bernoulli_(1 - self.zoneout)
            else:
                f = f * (1 - self.zoneout)
        c = forget_mult(f, z, c0)
        h = c if o is None else torch.sigmoid(o) * c
        return h, c[-1]

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, window={self.window}, output_gate={self.output_gate}, "
                f"zoneout={self.zoneout}, weight_drop={self.weight_drop}")
