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
* the QRNN's first layer folds the encoder into its gates (exact algebra, the same function and
  parameters; its own state keeps the previous scalar input instead of its encoding): on a CPU
  the unfolded (N, H) x (H, 3H) products cost more than the rest of the synthesizer;
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
    then ``c_t = f * c_{t-1} + (1 - f) * z`` and ``h_t = o * c_t``.
    (The paper's first synthesizer layer has window 2, later ones window 1.) A window-2 layer runs on
    encoded scalars (:meth:`forward_encoded_scalars`), a window-1 layer on (N, H_in) inputs (:meth:`forward`).
    """

    def __init__(self, input_size: int, hidden: int, window: int = 2):
        super().__init__()
        self.window = window
        self.gates = nn.Linear(window * input_size, 3 * hidden)

    def forward(self, x: torch.Tensor, c: torch.Tensor):
        """A window-1 step: ``x`` (N, H_in), ``c`` (N, H) -> ``(h_t, c_t)``."""
        return self.cell(*self.gates(x).chunk(3, dim=-1), c)

    @staticmethod
    def cell(z: torch.Tensor, f: torch.Tensor, o: torch.Tensor, c: torch.Tensor):
        """``(h_t, c_t)`` from the gate pre-activations ``z``, ``f``, ``o`` and ``c_{t-1}``, each (N, H)."""
        c = torch.lerp(torch.tanh(z), c, torch.sigmoid(f))  # f * c + (1 - f) * z
        return torch.sigmoid(o) * c, c

    def forward_encoded_scalars(self, s: torch.Tensor, c: torch.Tensor, prev: torch.Tensor, encoder: nn.Linear):
        """The same step on ``x_t = encoder(s_t)`` for scalar inputs ``s`` (N,), window 2, without the
        (N, H) x (H, 3H) products: since the encoder is affine in a scalar, ``W [enc(s_t), enc(s_{t-1})]
        = s_t W_a w + m s_{t-1} W_b w + m W_b b + W_a b`` (``enc(s) = s w + b``; ``W = [W_a, W_b]``), a
        product with inner size 3. ``prev`` (N, 2) holds ``[s_{t-1}, m]``, ``m`` = 1 when there is a
        previous input and 0 after a reset (then ``x_{t-1}`` = 0, as in the unfolded layer).

        Each gate gets its own contiguous (N, H) product: on a CPU this step is bound by memory
        traffic, and activations of strided (N, 3H) slices cost several times more. Without autograd
        the activations run in place."""
        hidden = c.size(-1)
        w, b = encoder.weight[:, 0], encoder.bias
        w_a, w_b = self.gates.weight[:, :hidden], self.gates.weight[:, hidden:]
        folded = torch.stack([w_a @ w, w_b @ w, w_b @ b])  # (3, 3H)
        bias = w_a @ b + self.gates.bias
        inputs = torch.cat([s.unsqueeze(1), prev], dim=1)  # (N, 3)
        (k_z, k_f, k_o), (b_z, b_f, b_o) = folded.split(hidden, dim=1), bias.split(hidden)
        if torch.is_grad_enabled():
            return self.cell(torch.addmm(b_z, inputs, k_z), torch.addmm(b_f, inputs, k_f),
                             torch.addmm(b_o, inputs, k_o), c)
        c = torch.addmm(b_z, inputs, k_z).tanh_().lerp_(c, torch.addmm(b_f, inputs, k_f).sigmoid_())
        return torch.addmm(b_o, inputs, k_o).sigmoid_().mul_(c), c


class CoordinatewiseSynthesizer(Synthesizer):
    """Coordinate-wise recurrent synthesizer. ``forward(state (B, D), None, own_state)`` ->
    ``(prediction (B, D), new own state)``. Own state: GRU ``(h,)``, LSTM ``(h, c)``, each
    (layers, B*D, H); QRNN ``(c, prev)``, ``c`` (layers, B*D, H) and ``prev`` (1, B*D, 2): the first
    layer's previous scalar input and a flag, 1 when there is one (:meth:`QRNNLayer.forward_encoded_scalars`)."""

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

    def initial_own_state(self, state: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        rows = state.numel()
        zeros = state.new_zeros(self.layers, rows, self.hidden)
        if self.cell == "gru":
            return (zeros,)
        if self.cell == "lstm":
            return zeros, zeros.clone()
        return zeros, state.new_zeros(1, rows, 2)

    def forward(self, state: torch.Tensor, condition: Optional[torch.Tensor] = None,
                own_state: Any = None) -> Tuple[torch.Tensor, Any]:
        if condition is not None:
            raise ValueError("the coordinate-wise synthesizer takes no condition")
        if own_state is None:
            own_state = self.initial_own_state(state)
        batch, dim = state.shape
        flat = state.reshape(batch * dim, 1)  # (N, 1): every coordinate a batch element
        if self.cell == "qrnn":
            cs, prev = own_state
            # the first layer folds the encoder in (no (N, H) product: the layer costs elementwise work only)
            y, c = self.rnn[0].forward_encoded_scalars(flat[:, 0], cs[0], prev[0], self.encoder)
            new_cs = [c]
            for i, layer in enumerate(self.rnn[1:], 1):
                y, c = layer(y, cs[i])
                new_cs.append(c)
            new_state = (torch.stack(new_cs), torch.cat([flat, torch.ones_like(flat)], dim=1).unsqueeze(0))
            return self.decoder(y).reshape(batch, dim), new_state
        x = self.encoder(flat)
        if self.cell == "gru":
            y, h = self.rnn(x.unsqueeze(1), own_state[0])
            y, new_state = y.squeeze(1), (h,)
        else:
            y, (h, c) = self.rnn(x.unsqueeze(1), tuple(own_state))
            y, new_state = y.squeeze(1), (h, c)
        return self.decoder(y).reshape(batch, dim), new_state
