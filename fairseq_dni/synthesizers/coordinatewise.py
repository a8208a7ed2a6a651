"""The seed paper's synthesizer: one small recurrent network shared by every state coordinate.

torch only. Shang & Zhang (arXiv 1902.10630, sec. 3; their code: ``RNNSynthesizer`` in
``parap1uie-s/alternate_sg/model.py``): every scalar coordinate of the carried LSTM state (h and
c of every layer, of every stream) is one element of a batch of ``N = B x D`` and goes through

    x (1) --Linear(1, H)--> recurrent layer(s) of H units --Linear(H, 1)--> prediction (1)

The recurrent layers' own state is carried per (stream, coordinate) from one window to the next
(reset with the LM's state, at every epoch), so the synthesizer sees each coordinate's history
across windows, with a parameter count (a few thousand) that does not grow with the LM. In
training its input is multiplied by noise from N(1, ``input_noise``) per element (0.5 in the paper).

Where we depart from the paper's code (docs/design.md lists these):

* the last layer starts at zero (theirs: uniform in [-0.1, 0.1]), so training starts as TBPTT;
* it is called once per window; the regression later re-evaluates that same call (same noisy
  input, same recurrent state) instead of calling it a second time on the same state;
* the QRNN cell has no zoneout (a random mask would make the regressed prediction differ from
  the injected one); GRU/LSTM cells are torch's (cuDNN on GPU), the paper ran a QRNN.
"""
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn

from fairseq_dni.synthesizers import Synthesizer

CELLS = ("gru", "lstm", "qrnn")


class QRNNLayer(nn.Module):
    """One quasi-recurrent layer (Bradbury et al. 2017) with an output gate, run one step at a time.

    Gates from the current input and, with ``window`` 2, the previous one:
    ``z = tanh(W_z [x_t, x_{t-1}])``, ``f = sigmoid(W_f [...])``, ``o = sigmoid(W_o [...])``;
    then ``c_t = f * c_{t-1} + (1 - f) * z`` and ``h_t = o * c_t``. ``x``, ``c`` and
    ``x_prev`` are (N, H_in), (N, H), (N, H_in); returns ``(h_t, c_t)``.
    (The paper's first synthesizer layer has window 2, later ones window 1.)
    """

    def __init__(self, input_size: int, hidden: int, window: int = 2):
        super().__init__()
        self.window = window
        self.gates = nn.Linear(window * input_size, 3 * hidden)

    def forward(self, x: torch.Tensor, c: torch.Tensor, x_prev: Optional[torch.Tensor] = None):
        inputs = torch.cat([x, x_prev], dim=-1) if self.window == 2 else x
        z, f, o = self.gates(inputs).chunk(3, dim=-1)
        f = torch.sigmoid(f)
        c = f * c + (1 - f) * torch.tanh(z)
        return torch.sigmoid(o) * c, c


class CoordinatewiseSynthesizer(Synthesizer):
    """Coordinate-wise recurrent synthesizer. ``forward(state (B, D), None, own_state)`` ->
    ``(prediction (B, D), new own state)``. Own state, each tensor (layers or 1, B*D, H):
    GRU ``(h,)``; LSTM ``(h, c)``; QRNN ``(c, previous input of the first layer)``."""

    def __init__(self, hidden: int = 50, layers: int = 1, cell: str = "gru", input_noise: float = 0.5):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
        self.hidden, self.layers, self.cell, self.input_noise = hidden, layers, cell, input_noise
        self.encoder = nn.Linear(1, hidden)
        if cell == "gru":
            self.rnn = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        elif cell == "lstm":
            self.rnn = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        else:
            self.rnn = nn.ModuleList(QRNNLayer(hidden, hidden, window=2 if i == 0 else 1) for i in range(layers))
        self.decoder = nn.Linear(hidden, 1)
        # the paper's initialisation, except the last layer: zero, so a fresh synthesizer predicts 0
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.encoder.bias)
        if cell in ("gru", "lstm"):
            for name, weight in self.rnn.named_parameters():
                if name.startswith("weight_"):
                    nn.init.orthogonal_(weight)
        nn.init.zeros_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)

    def initial_state(self, state: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        rows = state.numel()
        zeros = state.new_zeros(self.layers, rows, self.hidden)
        if self.cell == "gru":
            return (zeros,)
        if self.cell == "lstm":
            return zeros, zeros.clone()
        return zeros, state.new_zeros(1, rows, self.hidden)

    def perturb(self, state: torch.Tensor) -> torch.Tensor:
        if self.training and self.input_noise > 0:
            return state * torch.empty_like(state).normal_(1.0, self.input_noise)
        return state

    def forward(self, state: torch.Tensor, condition: Optional[torch.Tensor] = None,
                own_state: Any = None) -> Tuple[torch.Tensor, Any]:
        if condition is not None:
            raise ValueError("the coordinate-wise synthesizer takes no condition")
        if own_state is None:
            own_state = self.initial_state(state)
        batch, dim = state.shape
        x = self.encoder(state.reshape(batch * dim, 1))  # (N, H): every coordinate a batch element
        if self.cell == "gru":
            y, h = self.rnn(x.unsqueeze(1), own_state[0])
            y, new_state = y.squeeze(1), (h,)
        elif self.cell == "lstm":
            y, (h, c) = self.rnn(x.unsqueeze(1), tuple(own_state))
            y, new_state = y.squeeze(1), (h, c)
        else:
            cs, x_prev = own_state
            y, new_cs = x, []
            for i, layer in enumerate(self.rnn):
                y, c = layer(y, cs[i], x_prev[0] if i == 0 else None)
                new_cs.append(c)
            new_state = (torch.stack(new_cs), x.unsqueeze(0))
        return self.decoder(y).reshape(batch, dim), new_state
