"""The seed paper's QRNN synthesizer as its code computes it: one scan across the flattened state.

torch only. Shang & Zhang (arXiv 1902.10630) run every DNI arm with ``--sgtype QRNN``. Their
``RNNSynthesizer.forward`` (``parap1uie-s/alternate_sg``, ``model.py``) reshapes the joined LSTM
state to ``(-1, 1, 1)`` and feeds it to torchqrnn's ``QRNNLayer`` (``salesforce/pytorch-qrnn``,
``torchqrnn/qrnn.py``), which reads its input *time-major* (``seq_len, batch_size, _ = X.size()``).
So the recurrence runs across the coordinates: the state of B streams is **one sequence of B x D
scalars, batch 1**, stream after stream, each stream's coordinates in ``join_hidden``'s order
(layer 0's h, layer 0's c, layer 1's h, ...). Per position ``t`` (one scalar ``s_t``)::

    x_t = Linear(1, H)(s_t)                                    (the encoder; s_t with its input noise)
    layer 0 (window 2): [z, f, o]_t = Linear(2H, 3H)([x_t, x_{t-1}]), x_{-1} carried (save_prev_x)
    layer l > 0 (window 1): [z, f, o]_t = Linear(H, 3H)(h^{l-1}_t)
    z = tanh(z), f = sigmoid(f) * zoneout mask (training; f * 0.9 in eval), o = sigmoid(o)
    c_t = f_t * z_t + (1 - f_t) * c_{t-1},   c_{-1} carried          (forget-mult, a scan)
    h_t = o_t * c_t
    prediction_t = Linear(H, 1)(h^{last}_t)

The prediction for coordinate ``k`` of the sequence depends on every coordinate before it: across
layers, h and c, and across streams. Carried from one call to the next (torchqrnn's
``self.states``/``prevX``, detached): each layer's last cell state and layer 0's last input
``x_{L-1}`` (encoded with the weights of its call); all reset with the LM's state at the first
window of a pass (the paper resets them every epoch). Zoneout 0.1 drops forget gates to 0
(that coordinate keeps its old cell value): torchqrnn's ``F * Bernoulli(1 - zoneout)``, scaled
by ``1 - zoneout`` in eval mode. Input noise: each scalar times N(1, 0.5) in training
(:meth:`ScanSynthesizer.perturb`; the paper also draws it in eval mode, where our criterion never
calls a synthesizer).

The same function, computed differently (exact algebra, float rounding aside):

* the encoder is folded into layer 0's gates: ``W [x_t, x_{t-1}]`` with ``x = s w + b`` is a product
  with inner size 3 (``s_t``, ``s_{t-1}``, 1) plus, at ``t = 0``, ``W_b x_{-1}``: the (B D, 2H) x
  (2H, 3H) product would cost more than everything else on a CPU;
* the forget-mult recurrence is a vectorised scan (:mod:`fairseq_dni.modules.forget_mult`) with an
  exact reverse-scan gradient, not a loop over the B x D positions; with one layer (the paper's)
  the whole synthesizer after its input is one autograd Function (:class:`_OneLayerScan`) with a
  hand-written backward, tanh computed as ``2 sigmoid(2x) - 1`` and, on a CPU, its large buffers
  reused from call to call (:class:`Workspace`);
* the state arrives in our flat order (:meth:`~fairseq_dni.carried_state.StateLayout.flatten`:
  h of every layer, then c of every layer) and is permuted to the paper's per-stream order
  (h_0, c_0, h_1, c_1, ...) before the scan, and the prediction permuted back;
* the zoneout masks come from a seed kept in the own state (three float "bytes", exact in every
  float dtype), so the criterion's later re-evaluation of a call draws exactly the masks the call
  drew; the next seed is drawn from the same seeded generator.

Departures (documented in ``docs/synthesizers.md``): called once per window and re-evaluated for
the regression (the paper calls it again on the carried-on state); the last layer starts at zero
(``init="zero"``, so training starts as TBPTT; ``init="paper"``: the paper's U(-0.1, 0.1) decoder
weights); ``per_stream=True`` scans each stream's D coordinates as its own sequence (batch B: no
leak from one stream into the next, parallel over streams), its own state kept per stream.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from fairseq_dni.carried_state import StateLayout
from fairseq_dni.modules.forget_mult import forget_mult, linear_scan
from fairseq_dni.synthesizers import Synthesizer

INITS = ("zero", "paper")


def paper_order(layer_sizes: Sequence[int]) -> torch.Tensor:
    """Index ``order`` (D,) such that ``flat[:, order]`` is the paper's ``join_hidden`` order
    (h_0, c_0, h_1, c_1, ...) of an LSTM's flat state (h_0, h_1, ..., c_0, c_1, ...): its
    :attr:`~fairseq_dni.carried_state.StateLayout.join_order`."""
    return StateLayout(tuple(layer_sizes)).join_order


def seed_bytes(generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """A fresh zoneout seed: three integers in [0, 256) (int64, (3,))."""
    return torch.randint(0, 256, (3,), generator=generator, device=device)


class Workspace:
    """Scratch buffers reused from call to call on a CPU, where every fresh multi-megabyte tensor
    costs its page faults again (glibc returns such blocks to the system); fresh tensors elsewhere
    (CUDA has its caching allocator). Never holds a tensor that leaves the synthesizer; the ones
    autograd saves have names of their own. Also remembers the last few zoneout draws
    (:meth:`recall`, :meth:`remember`)."""

    def __init__(self, remembered: int = 3):
        self.buffers = {}
        self.remembered, self.recent = remembered, {}

    def recall(self, key):
        """A value kept by :meth:`remember` under ``key``, or None."""
        return self.recent.get(key)

    def evicted(self, key):
        """The value :meth:`remember` (``key``) will forget to make room, or None."""
        if key in self.recent or len(self.recent) < self.remembered:
            return None
        return self.recent[next(iter(self.recent))]

    def remember(self, key, value):
        """Keep ``value`` under ``key``, with the ``remembered`` - 1 most recent others; returns it."""
        self.recent[key] = value
        while len(self.recent) > self.remembered:
            self.recent.pop(next(iter(self.recent)))
        return value

    def get(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        """The buffer ``name`` of ``shape`` in ``like``'s dtype and device (contents undefined)."""
        shape = torch.Size(shape)
        if like.device.type != "cpu":
            return like.new_empty(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype:
            buffer = self.buffers[name] = like.new_empty(shape)
        return buffer


def _one_layer_forward(columns, kernel, bias, start, c0, keep, scale, steps, work, saved):
    """The one-layer synthesizer's forward without autograd: each gate (N, H) = columns @ kernel_g +
    bias_g (+ start_g on the first S rows), in its own contiguous buffer (activations on strided
    slices of one (N, 3H) product cost several times more on a CPU), activated in place: tanh z
    (as ``2 sigmoid(2 z) - 1``, equal up to float rounding, absolute error ~1e-7 in float32),
    sigmoid f (times the keep mask, or ``scale``), sigmoid o; the cells (N, H) by the forget-mult
    scan; h = o c in ``work``'s buffer "h". ``saved``: gates and cells in ``work``'s buffers kept for
    the backward (names apart from the no-grad call's, which runs between a regression's forward
    and its backward; a second forward before that backward bumps their version counters, which
    autograd then refuses loudly). Returns ((z, f, o), 1 - f, cells, h)."""
    rows, hidden = columns.size(0), kernel.size(1) // 3
    sequences = rows // steps
    gates = []
    for g, name in enumerate("zfo"):
        gate = work.get(("saved " if saved else "") + name, (rows, hidden), columns)
        part = slice(g * hidden, (g + 1) * hidden)
        torch.addmm(bias[part], columns, kernel[:, part], out=gate)
        gate[:sequences] += start[:, part]
        gates.append(gate)
    z, f, o = gates
    z.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)   # tanh(x) = 2 sigmoid(2x) - 1: torch's CPU tanh costs 6 sigmoids
    f.sigmoid_()
    o.sigmoid_()
    if keep is not None:
        f.mul_(keep.view(rows, hidden))
    elif scale != 1.0:
        f.mul_(scale)
    a = torch.neg(f, out=work.get(("saved " if saved else "") + "a", (rows, hidden), columns)).add_(1.0)
    b = torch.mul(f, z, out=work.get("b", (rows, hidden), columns))
    cells = work.get(("saved " if saved else "") + "cells", (rows, hidden), columns)
    one_step = (steps, sequences, hidden)
    linear_scan(a.view(one_step), b.view(one_step), c0, out=cells.view(one_step),
                scratch=work.get("scratch", (2, *one_step), columns))
    h = torch.mul(o, cells, out=work.get("h", (rows, hidden), columns))
    return gates, a, cells, h


class _OneLayerScan(torch.autograd.Function):
    """The whole one-layer synthesizer after its input columns, with a hand-written backward:
    ``y = decoder(o * forget_mult(f, z, c0))`` from the folded layer-0 gates (see
    :meth:`ScanSynthesizer.first_layer_columns`). Saves the activated gates and the cells only;
    all its large buffers come from the synthesizer's :class:`Workspace`.

    Inputs: columns (N, 3) = [s_t, s_{t-1}, has previous], kernel (3, 3H), bias (3H,), start (S, 3H)
    (added to the first S rows: the carried input's term), c0 (S, H), decoder weight (H,) and bias
    (1,), keep (L, S, H) float 0/1 or None, scale (the forget gates' factor without a mask), steps L,
    the workspace. Outputs y (N,) and the last cells (S, H) (not differentiable)."""

    @staticmethod
    def forward(ctx, columns, kernel, bias, start, c0, weight, decoder_bias, keep, scale, steps, work):
        (z, f, o), a, cells, h = _one_layer_forward(columns, kernel, bias, start, c0, keep, scale, steps, work,
                                                    saved=True)
        y = torch.addmv(decoder_bias, h, weight)
        last = cells[-c0.size(0):].clone()
        ctx.save_for_backward(columns, kernel, c0, weight, z, f, o, a, cells)
        ctx.scale, ctx.steps, ctx.work = scale, steps, work
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, _grad_last):
        columns, kernel, c0, weight, z, f, o, a, cells = ctx.saved_tensors
        work, steps, scale = ctx.work, ctx.steps, ctx.scale
        rows, hidden = cells.shape
        sequences = rows // steps
        h = torch.mul(o, cells, out=work.get("h", (rows, hidden), cells))
        grad_weight = h.t().mv(grad_y)
        grad_decoder_bias = grad_y.sum().view(1)
        # d loss / d gate pre-activations, one contiguous buffer per gate
        d_z, d_f, d_o = (work.get("d" + name, (rows, hidden), cells) for name in "zfo")
        grad_h = torch.mul(grad_y.view(rows, 1), weight.view(1, hidden), out=work.get("dh", (rows, hidden), cells))
        torch.mul(grad_h, cells, out=d_o)
        d_o.mul_(o)
        torch.addcmul(d_o, d_o, o, value=-1.0, out=d_o)          # * o (1 - o)
        grad_c = grad_h.mul_(o)
        # the adjoint g~_t = grad_c_t + (1 - f_{t+1}) g~_{t+1}: a reverse scan
        adjoint = work.get("adjoint", (rows, hidden), cells)
        one_step = (steps, sequences, hidden)
        adjoint_steps, grad_c_steps, a_steps = adjoint.view(one_step), grad_c.view(one_step), a.view(one_step)
        adjoint_steps[-1] = grad_c_steps[-1]
        if steps > 1:
            linear_scan(a_steps[1:], grad_c_steps[:-1], grad_c_steps[-1], reverse=True, out=adjoint_steps[:-1],
                        scratch=work.get("scratch", (2, *one_step), cells)[:, 1:])
        torch.mul(f, adjoint, out=d_z)
        torch.mul(z, z, out=h)
        torch.addcmul(d_z, d_z, h, value=-1.0, out=d_z)          # * (1 - z^2)
        torch.sub(z[sequences:], cells[:-sequences], out=d_f[sequences:])
        torch.sub(z[:sequences], c0, out=d_f[:sequences])        # (z_t - c_{t-1})
        d_f.mul_(adjoint)
        d_f.mul_(f)
        torch.addcmul(d_f, d_f, f, value=-1.0 / scale, out=d_f)  # * f (1 - f / scale): sigmoid', mask or scale
        grad_c0 = a[:sequences] * adjoint[:sequences]
        gates = (d_z, d_f, d_o)
        grad_columns = None
        if ctx.needs_input_grad[0]:
            grad_columns = sum(d.mm(kernel[:, g * hidden:(g + 1) * hidden].t()) for g, d in enumerate(gates))
        grad_kernel = torch.cat([columns.t().mm(d) for d in gates], dim=1)
        grad_start = torch.cat([d[:sequences] for d in gates], dim=1)
        # columns[:, 2] is 1 on every row but the first S: the bias's gradient without another pass
        grad_bias = grad_kernel[2] + grad_start.sum(0)
        return (grad_columns, grad_kernel, grad_bias, grad_start, grad_c0, grad_weight, grad_decoder_bias,
                None, None, None, None)


class QRNNLayer(nn.Module):
    """One torchqrnn-style QRNN layer's parameters: ``linear`` maps ``window * input_size`` to the
    three gates (z, f, o), ``[x_t, x_{t-1}]`` for window 2 (torchqrnn's ``QRNNLayer``)."""

    def __init__(self, input_size: int, hidden: int, window: int):
        super().__init__()
        self.window = window
        self.linear = nn.Linear(window * input_size, 3 * hidden)


class ScanSynthesizer(Synthesizer):
    """``--dni-synthesizer scan``: the paper's ``--sgtype QRNN`` synthesizer (module docstring).

    ``order`` (D,): the index that puts the flat state in the paper's ``join_hidden`` order (the
    layout's ``join_order``: :func:`paper_order` for an LSTM, the identity for a QRNN's cell states).
    ``forward(state (B, D), None, own_state)`` -> ``(prediction (B, D), new own state)``.
    Own state ``(cells, previous_input, seed)``: ``cells`` (layers, S, H) every layer's last cell
    state, ``previous_input`` (S, H) layer 0's last (encoded) input, ``seed`` (3,) the zoneout seed
    of the next call; S = 1 sequence (the paper), or B with ``per_stream``. All tensors in the
    state's dtype; the new own state is detached (the paper's ``repackage_hidden``). Raises
    ValueError for a state whose width is not the layout's, or an own state of another shape."""

    def __init__(self, order: Sequence[int], hidden: int = 50, layers: int = 1, input_noise: float = 0.5,
                 zoneout: float = 0.1, init: str = "zero", per_stream: bool = False):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown --dni-synthesizer-init {init!r}; choose one of {', '.join(INITS)}")
        if not 0.0 <= zoneout < 1.0:
            raise ValueError(f"zoneout must be in [0, 1), got {zoneout}")
        self.hidden, self.layers, self.input_noise = hidden, layers, input_noise
        self.zoneout, self.init, self.per_stream = zoneout, init, per_stream
        order = torch.as_tensor(order, dtype=torch.long)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("unorder", torch.argsort(order), persistent=False)
        self.encoder = nn.Linear(1, hidden)
        self.rnns = nn.ModuleList(QRNNLayer(hidden, hidden, window=2 if i == 0 else 1) for i in range(layers))
        self.decoder = nn.Linear(hidden, 1)
        self.work = Workspace()
        # the paper's init_weights(): encoder and decoder weights U(-0.1, 0.1), biases 0; the QRNN
        # layers keep nn.Linear's default (torchqrnn's); ours zeroes the decoder: a fresh one predicts 0
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.encoder.bias)
        nn.init.zeros_(self.decoder.bias)
        if init == "paper":
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        else:
            nn.init.zeros_(self.decoder.weight)

    def extra_repr(self) -> str:
        return f"zoneout={self.zoneout}, input_noise={self.input_noise}, init={self.init}, per_stream={self.per_stream}"

    def initial_own_state(self, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zero cell states and previous input (the paper's reset), a fresh zoneout seed (drawn from
        torch's global generator)."""
        sequences = state.size(0) if self.per_stream else 1
        zeros = state.new_zeros(self.layers, sequences, self.hidden)
        return zeros, state.new_zeros(sequences, self.hidden), seed_bytes().to(state.device, state.dtype)

    # ---- pieces -------------------------------------------------------------------------------
    def sequences(self, state: torch.Tensor) -> torch.Tensor:
        """The state (B, D), our flat order, as the scan's input (L, S): the paper's order, one
        sequence of B*D scalars (S = 1) or, per stream, B sequences of D."""
        if state.dim() != 2 or state.size(1) != self.order.numel():
            raise ValueError(f"the scan synthesizer was built for states of width {self.order.numel()}, "
                             f"got shape {tuple(state.shape)}")
        ordered = state[:, self.order]
        return ordered.t() if self.per_stream else ordered.reshape(-1, 1)

    def zoneout_masks(self, seed: torch.Tensor, shape, like: torch.Tensor):
        """Every layer's keep mask (float32 0/1, ``shape``; 1 with probability 1 - zoneout) and the next
        seed, all from a generator seeded by ``seed``, so a re-evaluation of a call draws the same
        masks. The last few draws are remembered (the criterion re-evaluates a call two windows
        later), which saves drawing them again; the masks are never written to."""
        a, b, c = (int(v) for v in seed.detach().round().long().tolist())
        key = (((a % 256) << 16) | ((b % 256) << 8) | (c % 256), tuple(shape), like.device, self.layers)
        drawn = self.work.recall(key)
        if drawn is None:
            generator = torch.Generator(device=like.device)
            generator.manual_seed(key[0])
            reusable = self.work.evicted(key)   # the oldest draw's buffers, about to be forgotten
            masks = []
            for layer in range(self.layers):
                mask = (reusable[0][layer] if reusable is not None and reusable[0][layer].shape == torch.Size(shape)
                        else torch.empty(shape, device=like.device))
                masks.append(mask.uniform_(generator=generator).ge_(self.zoneout))   # float 0/1
            drawn = self.work.remember(key, (masks, seed_bytes(generator, like.device)))
        masks, next_seed = drawn
        return masks, next_seed.clone()

    def first_layer_columns(self, seq: torch.Tensor, previous_input: torch.Tensor):
        """Layer 0's gates with the encoder folded in, as ``columns @ kernel + bias`` plus ``start`` on
        the first S rows. ``W_a x_t + W_b x_{t-1} + bias`` with ``x_t = s_t w + b_e`` is
        ``[s_t, s_{t-1}, 1] [W_a w; W_b w; W_b b_e] + W_a b_e + bias`` for ``t >= 1`` and
        ``[s_0, 0, 0] [...] + W_a b_e + bias + W_b x_{-1}`` at ``t = 0``. Returns columns (L*S, 3)
        (rows time-major: t * S + sequence), kernel (3, 3H), bias (3H,), start (S, 3H)."""
        hidden, (steps, sequences) = self.hidden, seq.shape
        w, b_e = self.encoder.weight[:, 0], self.encoder.bias
        linear = self.rnns[0].linear
        w_a, w_b = linear.weight[:, :hidden], linear.weight[:, hidden:]
        kernel = torch.stack([w_a @ w, w_b @ w, w_b @ b_e])
        bias = w_a @ b_e + linear.bias
        columns = seq.new_empty(steps, sequences, 3)
        columns[:, :, 0] = seq
        columns[0, :, 1:] = 0
        columns[1:, :, 1] = seq[:-1]
        columns[1:, :, 2] = 1
        return columns.view(steps * sequences, 3), kernel, bias, previous_input @ w_b.t()

    def qrnn(self, z, f, o, c0, keep, scale):
        """A QRNN layer from its gate pre-activations (L, S, H): (h (L, S, H), last cell state (S, H)).
        The forget gates are multiplied by the keep mask (training) or by ``scale`` (eval)."""
        in_place = not torch.is_grad_enabled()
        z = z.tanh_() if in_place else z.tanh()
        f = f.sigmoid_() if in_place else f.sigmoid()
        if keep is not None:
            f = f.mul_(keep) if in_place else f * keep
        elif scale != 1.0:
            f = f.mul_(scale) if in_place else f * scale
        c = forget_mult(f, z, c0)
        h = o.sigmoid_().mul_(c) if in_place else o.sigmoid() * c
        return h, c[-1].detach().clone()   # carried detached, as the paper's repackage_hidden

    # ---- the synthesizer ----------------------------------------------------------------------
    def forward(self, state: torch.Tensor, condition: Optional[torch.Tensor] = None,
                own_state=None) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if condition is not None:
            raise ValueError("the scan synthesizer takes no condition")
        if own_state is None:
            own_state = self.initial_own_state(state)
        cells, previous_input, seed = own_state
        seq = self.sequences(state)                            # (L, S)
        steps, sequences = seq.shape
        if cells.shape != (self.layers, sequences, self.hidden):
            raise ValueError(f"own state {tuple(cells.shape)} does not fit {self.layers} layer(s) of {self.hidden} "
                             f"units over {sequences} sequence(s)")
        one_layer = self.layers == 1
        if self.training and self.zoneout > 0:
            masks, next_seed = self.zoneout_masks(seed, (steps, sequences, self.hidden), state)
            next_seed = next_seed.to(seed.dtype)
        else:
            masks, next_seed = [None] * self.layers, seed.clone()
        scale = 1.0 - self.zoneout if not self.training else 1.0
        columns, kernel, bias, start = self.first_layer_columns(seq, previous_input)
        if one_layer:   # the paper's default: one fused step (hand-written backward, reused buffers)
            weight, decoder_bias = self.decoder.weight[0], self.decoder.bias
            if torch.is_grad_enabled():
                out, last = _OneLayerScan.apply(columns, kernel, bias, start, cells[0], weight, decoder_bias,
                                                masks[0], scale, steps, self.work)
            else:
                _, _, cells_out, h = _one_layer_forward(columns, kernel, bias, start, cells[0], masks[0], scale, steps,
                                                     self.work, saved=False)
                out, last = torch.addmv(decoder_bias, h, weight), cells_out[-sequences:].clone()
            new_cells = [last]
        else:
            gates = torch.addmm(bias, columns, kernel)
            gates[:sequences] += start
            h, last = self.qrnn(*gates.view(steps, sequences, -1).chunk(3, dim=-1), cells[0], masks[0], scale)
            new_cells = [last]
            for i in range(1, self.layers):
                z, f, o = self.rnns[i].linear(h).chunk(3, dim=-1)
                h, last = self.qrnn(z, f, o, cells[i], masks[i], scale)
                new_cells.append(last)
            out = self.decoder(h)
        out = out.view(steps, sequences)                       # the paper's order
        batch, dim = state.shape
        out = out.t() if self.per_stream else out.reshape(batch, dim)
        # layer 0's last input x_{L-1} = encoder(s_{L-1}), carried as torchqrnn's prevX (detached)
        with torch.no_grad():
            next_input = self.encoder(seq[-1].unsqueeze(-1))   # (S, H)
        return out[:, self.unorder], (torch.stack(new_cells).detach(), next_input, next_seed)
