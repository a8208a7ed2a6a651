"""The seed paper's QRNN synthesizer as its code computes it: one scan across the flattened state.

torch only (on a CPU one C++ file, :file:`scan_cpu.cpp`, built by torch's own
``torch.utils.cpp_extension``; torch's ops wherever it is not built). Shang & Zhang (arXiv 1902.10630) run every DNI arm with ``--sgtype QRNN``. Their
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
* the paper's one layer, on a CPU, is one autograd Function (:class:`_CPUScan`): torch computes
  the three gate products and their sigmoids (tanh as ``2 sigmoid(2x) - 1``), :file:`scan_cpu.cpp`
  the rest in one pass over the B x D positions (the recurrence, ``h = o c`` and the decoder), and
  its whole backward in one reverse pass (the adjoint recurrence, the gates' gradients and the gate
  products' weight gradients), into a few large buffers reused from call to call (:class:`Workspace`).
  Elsewhere (CUDA, more layers, no C++ compiler: :func:`cpu_kernels`) the forget-mult is torch's
  vectorised scan (:mod:`fairseq_dni.modules.forget_mult`) with its exact hand-written gradient;
* the state arrives in our flat order (:meth:`~fairseq_dni.carried_state.StateLayout.flatten`:
  h of every layer, then c of every layer) and is permuted to the paper's per-stream order
  (h_0, c_0, h_1, c_1, ...) before the scan, and the prediction permuted back;
* the zoneout masks come from a seed kept in the own state (three float "bytes", exact in every
  float dtype), so the criterion's later re-evaluation of a call draws exactly the masks the call
  drew (one 32-bit integer per element against :func:`keep_threshold`:
  :meth:`ScanSynthesizer.zoneout_draws`); the next seed is drawn from the same seeded generator.

Departures (documented in ``docs/synthesizers.md``): called once per window and re-evaluated for
the regression (the paper calls it again on the carried-on state); the last layer starts at zero
(``init="zero"``, so training starts as TBPTT; ``init="paper"``: the paper's U(-0.1, 0.1) decoder
weights); ``per_stream=True`` scans each stream's D coordinates as its own sequence (batch B: no
leak from one stream into the next, parallel over streams), its own state kept per stream.
"""
import hashlib
import logging
import os
import shutil
import sys
import time
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from fairseq_dni.carried_state import StateLayout
from fairseq_dni.modules.forget_mult import forget_mult
from fairseq_dni.modules.qrnn import QRNNLayer
from fairseq_dni.synthesizers import Synthesizer

INITS = ("zero", "paper")

logger = logging.getLogger(__name__)


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

    def remember(self, key, value):
        """Keep ``value`` under ``key``, with the ``remembered`` - 1 most recently kept others; returns it."""
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


#: {"module": the compiled :file:`scan_cpu.cpp`, or None when it could not be built}, once tried: :func:`cpu_kernels`
_KERNELS = {}


def cpu_kernels():
    """The one-layer scan's CPU kernels (:file:`scan_cpu.cpp`: its forward and reverse passes in one
    loop over the rows each), compiled by ``torch.utils.cpp_extension.load`` on first use (about
    30 s, once per machine and checkout: cached in ``TORCH_EXTENSIONS_DIR``, default
    ``~/.cache/torch_extensions``, in a folder named after the file's path and contents;
    it needs a C++ compiler and ninja, taken from the interpreter's own folder when not on PATH).
    Returns the module, or None when it cannot be built (no C++ compiler, say): logged once as a
    warning, and the synthesizer then computes the same function with torch's ops (:meth:`ScanSynthesizer.qrnn`;
    slower on a CPU, equal up to float rounding)."""
    if "module" not in _KERNELS:
        here = os.path.dirname(sys.executable)   # a virtual environment's own ninja (pip's), when not on PATH
        if shutil.which("ninja") is None and shutil.which("ninja", path=here):
            os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
        try:
            from torch.utils.cpp_extension import load
            logger.info("fairseq-dni: loading the scan synthesizer's CPU kernel (compiled the first time on a machine, "
                        "about 30 s)")
            start = time.perf_counter()
            source = os.path.abspath(os.path.join(os.path.dirname(__file__), "scan_cpu.cpp"))
            with open(source, "rb") as f:   # one build folder per checkout and version of the file
                digest = hashlib.sha1(source.encode() + f.read()).hexdigest()[:12]
            _KERNELS["module"] = load(name=f"fairseq_dni_scan_cpu_{digest}", sources=[source], extra_cflags=["-O3"],
                                      verbose=False)
            logger.info("fairseq-dni: the scan synthesizer's CPU kernel is ready (%.1f s)", time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 - any build failure falls back to the torch path
            logger.warning("fairseq-dni: the scan synthesizer's CPU kernel could not be built (%s); "
                           "it runs on torch's ops instead (the same function, slower)", build_failure(e))
            _KERNELS["module"] = None
    return _KERNELS["module"]


def build_failure(error: Exception) -> str:
    """One line from a failed ``torch.utils.cpp_extension.load``: its first line up to the compiler's
    command, and the first line after it that names an error (``error``, ``not found``), else its last."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    head = lines[0].split(": [", 1)[0]
    named = [line for line in lines[1:] if ("error" in line.lower() or "not found" in line.lower())
             and not line.startswith(("ninja:", "FAILED:"))]
    detail = named[0] if named else (lines[-1] if len(lines) > 1 else "")
    return f"{head}: {detail}" if detail else head


def _gates(columns, kernel, start, sequences, name, work):
    """Layer 0's activated gates (3, N, H) in the workspace buffer ``name``: ``zs = sigmoid(2 x_z)``
    (the kernel forms tanh(x_z) = 2 zs - 1; the factor 2 multiplies z's columns of the small kernel
    and start, exact in floating point), ``fs = sigmoid(x_f)``, ``os = sigmoid(x_o)``, with ``x =
    columns @ kernel`` plus ``start`` on the first S rows (:meth:`ScanSynthesizer.first_layer_columns`).
    One product per gate: a CPU BLAS computes (N, 4) x (4, 3H) several times slower than three
    (N, 4) x (4, H)."""
    hidden = kernel.size(1) // 3
    gates = work.get(name, (3, columns.size(0), hidden), columns)
    for g in range(3):
        factor = 2.0 if g == 0 else 1.0
        part = slice(g * hidden, (g + 1) * hidden)
        torch.mm(columns, kernel[:, part] * factor, out=gates[g])
        gates[g, :sequences] += start[:, part] * factor
    return gates.sigmoid_()


class _CPUScan(torch.autograd.Function):
    """The whole one-layer synthesizer after its input columns, on a CPU: ``y = decoder(o *
    forget_mult(f, z, c0))`` from the folded layer-0 gates; the gate products and their sigmoids by
    torch (:func:`_gates`), the recurrence, the decoder and the whole backward in :file:`scan_cpu.cpp`
    (one pass over the rows each way). Saves the activated gates and the cells in reused buffers of
    the synthesizer's :class:`Workspace` (a second forward before this one's backward bumps their
    version counters, which autograd then refuses loudly).

    Inputs: columns (N, 4) (rows time-major: t S + s), kernel (4, 3H), start (S, 3H), c0 (S, H), decoder
    weight (H,) and bias (1,), draws (N, H) int32 (zoneout keeps a unit whose draw is >= ``threshold``)
    or None (then the forget gates are multiplied by ``scale``), the kernels module, the workspace.
    Outputs y (N,) and the cells of the last step (S, H) (not differentiable)."""

    @staticmethod
    def forward(ctx, columns, kernel, start, c0, weight, bias, draws, threshold, scale, kernels, work):
        gates = _gates(columns, kernel, start, c0.size(0), "saved gates", work)
        cells = work.get("saved cells", gates.shape[1:], gates)
        y, last = kernels.forward(gates, draws, threshold, scale, c0, weight, bias, cells)
        ctx.save_for_backward(columns, kernel, c0, weight, gates, draws, cells)
        ctx.threshold, ctx.scale, ctx.kernels = threshold, scale, kernels
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, _grad_last):
        columns, kernel, c0, weight, gates, draws, cells = ctx.saved_tensors
        grad_kernel, grad_start, grad_weight, grad_c0, grad_columns = ctx.kernels.backward(
            grad_y.contiguous(), gates, draws, ctx.threshold, ctx.scale, cells, c0, weight, columns, kernel,
            ctx.needs_input_grad[0])
        return (grad_columns, grad_kernel, grad_start, grad_c0, grad_weight, grad_y.sum().view(1),
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

    def zoneout_draws(self, seed: torch.Tensor, shape):
        """Every layer's zoneout draws ((L, S, H) = ``shape``, int32, uniform over the whole int32 range)
        and the next seed, all from a generator seeded by ``seed``, so a re-evaluation of a call draws
        the same: a unit keeps its forget gate when its draw is ``>= keep_threshold(zoneout)``
        (:meth:`zoneout_masks`; the keep probability is 1 - zoneout to within 2^-32). Drawn 64 bits at a
        time (``random_`` over the whole int64 range, viewed as int32 pairs): half the generator's work
        of one float ``uniform_`` per element. The last few draws are remembered (the criterion
        re-evaluates a call two windows later), which saves drawing them again; never written to."""
        a, b, c = (int(v) for v in seed.detach().round().long().tolist())
        key = (((a % 256) << 16) | ((b % 256) << 8) | (c % 256), tuple(shape), seed.device, self.layers)
        drawn = self.work.recall(key)
        if drawn is None:
            generator = torch.Generator(device=seed.device)
            generator.manual_seed(key[0])
            size = torch.Size(shape).numel()
            draws = []
            for layer in range(self.layers):   # fresh tensors: a regression's autograd may still hold older ones
                bits = torch.empty((size + 1) // 2, dtype=torch.int64, device=seed.device)
                bits.random_(-2 ** 63, None, generator=generator)  # every int64 value equally likely
                draws.append(bits.view(torch.int32)[:size].view(shape))
            drawn = self.work.remember(key, (draws, seed_bytes(generator, seed.device)))
        draws, next_seed = drawn
        return draws, next_seed.clone()

    def zoneout_masks(self, seed: torch.Tensor, shape, like: torch.Tensor):
        """Every layer's keep mask ((L, S, H) = ``shape``, 0/1 in ``like``'s dtype and device: 1 with
        probability 1 - zoneout) from :meth:`zoneout_draws` (``seed``), and the next seed."""
        draws, next_seed = self.zoneout_draws(seed.to(like.device), shape)
        threshold = keep_threshold(self.zoneout)
        return [(d >= threshold).to(like.dtype) for d in draws], next_seed

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
        zoneout = self.training and self.zoneout > 0
        threshold, scale = keep_threshold(self.zoneout), 1.0 if self.training else 1.0 - self.zoneout
        next_seed = seed.clone()
        columns, kernel, start = self.first_layer_columns(seq, previous_input)
        # the paper's one layer, on a CPU: gate products by torch, the recurrence in scan_cpu.cpp
        kernels = (cpu_kernels() if self.layers == 1 and state.device.type == "cpu"
                   and state.dtype in (torch.float32, torch.float64) else None)
        if kernels is not None:
            draws = None
            if zoneout:
                (draws,), next_seed = self.zoneout_draws(seed, (steps, sequences, self.hidden))
            weight, bias, c0 = self.decoder.weight[0], self.decoder.bias, cells[0].contiguous()
            if torch.is_grad_enabled():
                out, last = _CPUScan.apply(columns, kernel, start, c0, weight, bias, draws, threshold, scale,
                                           kernels, self.work)
            else:
                gates = _gates(columns, kernel, start, sequences, "call gates", self.work)
                out, last = kernels.forward(gates, draws, threshold, scale, c0, weight, bias, None)
            new_cells = [last]
        else:
            masks = [None] * self.layers
            if zoneout:
                masks, next_seed = self.zoneout_masks(seed, (steps, sequences, self.hidden), state)
            gates = columns @ kernel
            gates[:sequences] += start
            h, last = self.qrnn(*gates.view(steps, sequences, -1).chunk(3, dim=-1), cells[0], masks[0], scale)
            new_cells = [last]
            for i in range(1, self.layers):
                z, f, o = self.rnns[i].linear(h).chunk(3, dim=-1)
                h, last = self.qrnn(z, f, o, cells[i], masks[i], scale)
                new_cells.append(last)
            out = self.decoder(h)
        next_seed = next_seed.to(seed.dtype)
        out = out.view(steps, sequences)                       # the paper's order
        batch, dim = state.shape
        out = out.t() if self.per_stream else out.reshape(batch, dim)
        # layer 0's last input x_{L-1} = encoder(s_{L-1}), carried as torchqrnn's prevX (detached)
        with torch.no_grad():
            next_input = self.encoder(seq[-1].unsqueeze(-1))   # (S, H)
        return out[:, self.unorder], (torch.stack(new_cells).detach(), next_input, next_seed)
