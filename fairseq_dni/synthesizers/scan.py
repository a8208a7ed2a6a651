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

* the encoder is folded into layer 0's gates: ``W [x_t, x_{t-1}] + bias`` with ``x = s w + b`` is a
  product with inner size 4 (``s_t``, ``s_{t-1}``, has previous, 1) plus, at ``t = 0``, ``W_b x_{-1}``:
  the (B D, 2H) x (2H, 3H) product would cost more than everything else on a CPU;
* the forget-mult recurrence is a vectorised scan (:mod:`fairseq_dni.modules.forget_mult`) with an
  exact gradient, not a loop over the B x D positions; with one layer (the paper's) the whole
  synthesizer after its input is one autograd Function (:class:`_OneLayerScan`) with a
  hand-written backward, on rows stored chunk-major (:func:`~fairseq_dni.modules.forget_mult.chunk_scan`,
  C = :func:`chunk_length`), tanh computed as ``2 sigmoid(2x) - 1`` and, on a CPU, a few large
  buffers reused from call to call (:class:`Workspace`, :data:`SHARED`);
* the state arrives in our flat order (:meth:`~fairseq_dni.carried_state.StateLayout.flatten`:
  h of every layer, then c of every layer) and is permuted to the paper's per-stream order
  (h_0, c_0, h_1, c_1, ...) before the scan, and the prediction permuted back;
* the zoneout masks come from a seed kept in the own state (three float "bytes", exact in every
  float dtype), so the criterion's later re-evaluation of a call draws exactly the masks the call
  drew (one 32-bit integer per element against :func:`keep_threshold`); the next seed is drawn
  from the same seeded generator.

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
from fairseq_dni.modules.forget_mult import chunk_scan, forget_mult, from_chunks, to_chunks
from fairseq_dni.modules.qrnn import QRNNLayer
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


def keep_threshold(zoneout: float) -> int:
    """The int32 threshold ``t`` such that a uniform 32-bit integer ``v`` (in [-2^31, 2^31)) is ``>= t``
    with probability ``1 - round(zoneout * 2^32) / 2^32``: zoneout's keep probability to within 2^-32."""
    return round(zoneout * 2 ** 32) - 2 ** 31


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


def chunk_length(steps: int) -> int:
    """The chunk length C of the one-layer path's chunk-major layout for a sequence of ``steps``
    (:func:`~fairseq_dni.modules.forget_mult.chunk_scan`: 3 C slab operations plus a scan over
    ceil(steps / C) chunks; of 8, 16 and 32, 32 was fastest at 16,000 steps on a CPU; short
    sequences use 4)."""
    return 32 if steps >= 1024 else 4


#: the four (N, H) buffers that the no-grad call (the injection) and the backward share: the no-grad
#: call runs between a regression's forward and its backward, never inside that backward
SHARED = ("shared 0", "shared 1", "shared 2", "shared 3")


def _one_layer_forward(columns, kernel, start, c0, keep, scale, chunk, work, saved):
    """The one-layer synthesizer's forward without autograd, on rows in chunk-major order
    (:func:`~fairseq_dni.modules.forget_mult.to_chunks`: N = C K S rows, step t = k C + j of
    sequence s at row (j K + k) S + s; the first S rows are step 0). Each gate (N, H) = columns @
    kernel_g (+ start_g on the first S rows), in its own contiguous buffer (activations on
    strided slices of one (N, 3H) product cost several times more on a CPU), activated in place:
    tanh z as ``2 sigmoid(2 z) - 1`` (equal up to float rounding, absolute error ~1e-7 in float32;
    the factor 2 multiplies z's slice of the small kernel and start, exact in floating
    point), sigmoid f (times the keep mask, or ``scale``), sigmoid o; ``a = 1 - f``, ``b = f z``;
    the cells (N, H) by the chunk-major forget-mult scan; h = o c.

    At this size every pass over an (N, H) buffer goes to memory, so the buffers are few and
    reused (``work``): ``saved`` (the regression's call, under autograd) keeps z, f, o, a, the
    cells and h for the backward in buffers of their own (b is written where h goes next), and a
    second forward before that backward bumps their version counters, which autograd then refuses
    loudly; the no-grad call computes in place in the four :data:`SHARED` buffers (b over z, a over
    f, h over o). Returns ((z, f, o), a, cells, h) (z, f, o only meaningful when ``saved``)."""
    rows, hidden, sequences = columns.size(0), kernel.size(1) // 3, c0.size(0)
    names = ("saved z", "saved f", "saved o", "saved cells") if saved else SHARED
    gates = []
    for g, name in enumerate(names[:3]):
        gate = work.get(name, (rows, hidden), columns)
        part = slice(g * hidden, (g + 1) * hidden)
        factor = 2.0 if g == 0 else 1.0
        torch.mm(columns, kernel[:, part] * factor, out=gate)
        gate[:sequences] += start[:, part] * factor
        gates.append(gate)
    z, f, o = gates
    z.sigmoid_().mul_(2.0).sub_(1.0)   # tanh(x) = 2 sigmoid(2x) - 1: torch's CPU tanh costs 6 sigmoids
    f.sigmoid_()
    o.sigmoid_()
    if keep is not None:
        f.mul_(keep.view(rows, hidden))
    elif scale != 1.0:
        f.mul_(scale)
    one = f.new_ones(())
    if saved:
        a = torch.sub(one, f, out=work.get("saved a", (rows, hidden), columns))
        b = torch.mul(f, z, out=work.get("saved h", (rows, hidden), columns))
    else:
        b = z.mul_(f)
        a = torch.sub(one, f, out=f)
    cells = work.get(names[3], (rows, hidden), columns)
    slabs = (chunk, rows // (chunk * sequences), sequences, hidden)
    chunk_scan(a.view(slabs), b.view(slabs), c0, out=cells.view(slabs))
    h = torch.mul(o, cells, out=b) if saved else o.mul_(cells)
    return gates, a, cells, h


def _last_step(x: torch.Tensor, chunk: int, steps: int, sequences: int) -> torch.Tensor:
    """Step ``steps - 1`` (S, ...) of the chunk-major rows ``x`` (C K S, ...) (a view)."""
    chunks = x.size(0) // (chunk * sequences)
    row = ((steps - 1) % chunk * chunks + (steps - 1) // chunk) * sequences
    return x[row:row + sequences]


class _OneLayerScan(torch.autograd.Function):
    """The whole one-layer synthesizer after its input columns, with a hand-written backward:
    ``y = decoder(o * forget_mult(f, z, c0))`` from the folded layer-0 gates (see
    :meth:`ScanSynthesizer.first_layer_columns`), rows in chunk-major order (:func:`_one_layer_forward`).
    Saves the activated gates, ``1 - f``, the cells and h; all its large buffers come from the
    synthesizer's :class:`Workspace`.

    Inputs: columns (N, 4) = [s_t, s_{t-1}, has previous, 1] (N = C K S, chunk-major; zero rows on
    the padding), kernel (4, 3H), start (S, 3H) (added to the first S rows: the carried input's
    term), c0 (S, H), decoder weight (H,) and bias (1,), keep (N, H) float 0/1 or None (chunk-major),
    scale (the forget gates' factor without a mask), the chunk length C, the sequence's length L
    (<= C K), the workspace. Outputs y (N,) (chunk-major; rows past step L - 1 are padding) and the cells of step
    L - 1 (S, H) (not differentiable)."""

    @staticmethod
    def forward(ctx, columns, kernel, start, c0, weight, decoder_bias, keep, scale, chunk, steps, work):
        (z, f, o), a, cells, h = _one_layer_forward(columns, kernel, start, c0, keep, scale, chunk, work,
                                                    saved=True)
        y = torch.addmv(decoder_bias, h, weight)
        last = _last_step(cells, chunk, steps, c0.size(0)).clone()
        ctx.save_for_backward(columns, kernel, c0, weight, z, f, o, a, cells, h)
        ctx.scale, ctx.chunk, ctx.work = scale, chunk, work
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, _grad_last):
        columns, kernel, c0, weight, z, f, o, a, cells, h = ctx.saved_tensors
        work, chunk, scale = ctx.work, ctx.chunk, ctx.scale
        rows, hidden = cells.shape
        sequences = c0.size(0)
        slabs = (chunk, rows // (chunk * sequences), sequences, hidden)
        grad_weight = h.t().mv(grad_y)
        grad_decoder_bias = grad_y.sum().view(1)
        # d loss / d gate pre-activations in the four shared buffers (see _one_layer_forward)
        first, second, d_o, d_f = (work.get(name, (rows, hidden), cells) for name in SHARED)
        grad_h = torch.mul(grad_y.view(rows, 1), weight.view(1, hidden), out=first)
        torch.mul(grad_h, h, out=d_o)
        torch.addcmul(d_o, d_o, o, value=-1.0, out=d_o)          # grad_h c o (1 - o), with h = o c
        grad_c = grad_h.mul_(o)
        # the adjoint g~_t = grad_c_t + (1 - f_{t+1}) g~_{t+1}: the scan's transposed recurrence
        chunk_scan(a.view(slabs), grad_c.view(slabs), adjoint=True, out=second.view(slabs))
        adjoint = second
        grad_c0 = a[:sequences] * adjoint[:sequences]
        d_z = torch.mul(f, adjoint, out=first)                   # f g~, shared by d_z and d_f
        # (z_t - c_{t-1}): the previous step is the slab before, or the previous chunk's last step
        z_s, c_s, d_f_s = z.view(slabs), cells.view(slabs), d_f.view(slabs)
        torch.sub(z_s[1:], c_s[:-1], out=d_f_s[1:])
        torch.sub(z_s[0, 1:], c_s[-1, :-1], out=d_f_s[0, 1:])
        torch.sub(z_s[0, 0], c0, out=d_f_s[0, 0])
        d_f.mul_(d_z)
        torch.addcmul(d_f, d_f, f, value=-1.0 / scale, out=d_f)  # * f (1 - f / scale): sigmoid', mask or scale
        square = torch.mul(z, z, out=second)
        torch.addcmul(d_z, d_z, square, value=-1.0, out=d_z)     # * (1 - z^2)
        gates = (d_z, d_f, d_o)
        grad_columns = None
        if ctx.needs_input_grad[0]:
            grad_columns = sum(d.mm(kernel[:, g * hidden:(g + 1) * hidden].t()) for g, d in enumerate(gates))
        grad_kernel = torch.cat([columns.t().mm(d) for d in gates], dim=1)
        grad_start = torch.cat([d[:sequences] for d in gates], dim=1)
        return (grad_columns, grad_kernel, grad_start, grad_c0, grad_weight, grad_decoder_bias,
                None, None, None, None, None)


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
        # the QRNN LM's layer (modules/qrnn.py), for its parameters (``linear``): the synthesizer computes the
        # layers itself, encoder folded into layer 0 and zoneout replayable (see the module docstring)
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

    def zoneout_masks(self, seed: torch.Tensor, shape, like: torch.Tensor, chunk: Optional[int] = None):
        """Every layer's keep mask (float32 0/1, ``shape`` (L, S, H); 1 with probability 1 - zoneout) and
        the next seed, all from a generator seeded by ``seed``, so a re-evaluation of a call draws the
        same masks. With ``chunk`` C, the same masks in chunk-major order (C K, S, H)
        (:func:`~fairseq_dni.modules.forget_mult.to_chunks`; 0 or 1 on the padding after step L - 1).
        Each mask element is one uniform 32-bit integer compared with a threshold
        (:func:`keep_threshold`: the keep probability is 1 - zoneout to within 2^-32), the integers
        drawn 64 bits at a time (``random_`` over the whole int64 range, viewed as int32 pairs): half
        the generator's work of one float ``uniform_`` per element, and a single pass to the float
        mask. The last few draws are remembered (the criterion re-evaluates a call two windows
        later), which saves drawing them again; the masks are never written to."""
        a, b, c = (int(v) for v in seed.detach().round().long().tolist())
        key = (((a % 256) << 16) | ((b % 256) << 8) | (c % 256), tuple(shape), like.device, self.layers, chunk)
        drawn = self.work.recall(key)
        if drawn is None:
            generator = torch.Generator(device=like.device)
            generator.manual_seed(key[0])
            reusable = self.work.evicted(key)   # the oldest draw's buffers, about to be forgotten
            steps, numel, threshold = shape[0], torch.Size(shape).numel(), keep_threshold(self.zoneout)
            stored = shape if chunk is None else (chunk * -(-steps // chunk), *shape[1:])
            size = torch.Size(stored).numel()
            bits = self.work.get("zoneout bits", ((size + 1) // 2,), torch.empty(0, dtype=torch.int64,
                                                                                  device=like.device))
            drawn_bits = bits[:(numel + 1) // 2]
            bits[drawn_bits.numel():].zero_()       # the padding after step L - 1: no draws, its masks never matter
            values = bits.view(torch.int32)[:size]
            masks = []
            for layer in range(self.layers):
                mask = (reusable[0][layer] if reusable is not None and reusable[0][layer].shape == torch.Size(stored)
                        else torch.empty(stored, device=like.device))
                drawn_bits.random_(-2 ** 63, None, generator=generator)  # every int64 value equally likely
                if chunk is None:
                    torch.ge(values.view(shape), threshold, out=mask)     # float 0/1
                else:   # the same values read in time order, written chunk-major
                    chunks = stored[0] // chunk
                    torch.ge(values.view(chunks, chunk, *shape[1:]).transpose(0, 1), threshold,
                             out=mask.view(chunk, chunks, *shape[1:]))
                masks.append(mask)
            drawn = self.work.remember(key, (masks, seed_bytes(generator, like.device)))
        masks, next_seed = drawn
        return masks, next_seed.clone()

    def first_layer_columns(self, seq: torch.Tensor, previous_input: torch.Tensor):
        """Layer 0's gates with the encoder folded in, as ``columns @ kernel`` plus ``start`` on the
        first S rows. ``W_a x_t + W_b x_{t-1} + bias`` with ``x_t = s_t w + b_e`` is
        ``[s_t, s_{t-1}, 1, 1] [W_a w; W_b w; W_b b_e; W_a b_e + bias]`` for ``t >= 1`` and
        ``[s_0, 0, 0, 1] [...] + W_b x_{-1}`` at ``t = 0`` (one product with inner size 4 writes each
        gate once: no bias copied in first). Returns columns (L*S, 4) (rows time-major: t * S +
        sequence), kernel (4, 3H), start (S, 3H)."""
        hidden, (steps, sequences) = self.hidden, seq.shape
        w, b_e = self.encoder.weight[:, 0], self.encoder.bias
        linear = self.rnns[0].linear
        w_a, w_b = linear.weight[:, :hidden], linear.weight[:, hidden:]
        kernel = torch.stack([w_a @ w, w_b @ w, w_b @ b_e, w_a @ b_e + linear.bias])
        columns = seq.new_empty(steps, sequences, 4)
        columns[:, :, 0] = seq
        columns[0, :, 1:3] = 0
        columns[1:, :, 1] = seq[:-1]
        columns[1:, :, 2] = 1
        columns[:, :, 3] = 1
        return columns.view(steps * sequences, 4), kernel, previous_input @ w_b.t()

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
        # the paper's one layer runs chunk-major (fused step, hand-written backward, reused buffers)
        chunk = chunk_length(steps) if one_layer else None
        if self.training and self.zoneout > 0:
            masks, next_seed = self.zoneout_masks(seed, (steps, sequences, self.hidden), state, chunk=chunk)
            next_seed = next_seed.to(seed.dtype)
        else:
            masks, next_seed = [None] * self.layers, seed.clone()
        scale = 1.0 - self.zoneout if not self.training else 1.0
        columns, kernel, start = self.first_layer_columns(seq, previous_input)
        if one_layer:
            columns = to_chunks(columns.view(steps, sequences, 4), chunk).view(-1, 4)
            weight, decoder_bias = self.decoder.weight[0], self.decoder.bias
            if torch.is_grad_enabled():
                out, last = _OneLayerScan.apply(columns, kernel, start, cells[0], weight, decoder_bias,
                                                masks[0], scale, chunk, steps, self.work)
            else:
                _, _, cells_out, h = _one_layer_forward(columns, kernel, start, cells[0], masks[0], scale, chunk,
                                                        self.work, saved=False)
                out = torch.addmv(decoder_bias, h, weight)
                last = _last_step(cells_out, chunk, steps, sequences).clone()
            out = from_chunks(out.view(-1, sequences), chunk, steps)
            new_cells = [last]
        else:
            gates = columns @ kernel
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
