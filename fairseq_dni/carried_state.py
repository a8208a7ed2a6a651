"""What a training run carries from one truncated-BPTT window to the next, in one place.

torch only (no fairseq import). Three things cross a window boundary, all per stream:

* the model's recurrent state: the LSTM's ``s = (h, c)`` of every layer, the QRNN's cell states and
  first layer's previous input (owned by the model);
* the synthesizer's own recurrent state, for a recurrent synthesizer (owned by the criterion);
* the pending regression pair: what the synthesizer saw at a window's end, waiting one window
  for its target (owned by the criterion).

Each owner keeps its values in a :class:`CarriedState`, which does for all of them what used to
be written three times: one value per stream set (``key``: the split name, so a validation pass
never disturbs the training streams), a reset at the first window of a pass, a fresh start when
the number of streams changes, dtype/device following, checkpointing (the ``train`` streams
only), and, with several ranks, every rank's copy gathered so that rank 0's checkpoint holds
them all and each rank resumes its own streams.

:class:`CarriedLayout` says how a model's state is laid out and flattens its DNI part to one vector
per stream, the form the synthesizers and the DNI maths work on: :class:`StateLayout` for the LSTM's
``(h, c)``, :class:`QRNNStateLayout` for the QRNN's cell states (and its detached previous input).
"""
import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

TRAIN = "train"  # the stream set whose carried values travel in checkpoints


# ---- tiny tree helpers: values are tensors, None, tuples/lists/dicts of them, or dataclasses -------
def tree_map(fn: Callable[[torch.Tensor], torch.Tensor], value):
    """Apply ``fn`` to every tensor in ``value`` (None and non-tensors are kept)."""
    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(tree_map(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: tree_map(fn, v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: tree_map(fn, getattr(value, f.name))
                                             for f in dataclasses.fields(value)})
    return value


def tree_leaves(value) -> List[torch.Tensor]:
    """The tensors in ``value``, in a fixed order."""
    out: List[torch.Tensor] = []
    tree_map(lambda t: out.append(t) or t, value)
    return out


def tree_replace_leaves(value, leaves: Sequence[torch.Tensor]):
    """``value`` with its tensors replaced, in :func:`tree_leaves` order, by ``leaves``."""
    it = iter(leaves)
    return tree_map(lambda _: next(it), value)


def to_plain(value):
    """Dataclasses to dicts (``{"__dataclass__": name, ...}``), so a checkpoint holds plain data only
    and loads under torch's ``weights_only`` unpickler."""
    if dataclasses.is_dataclass(value):
        return {"__dataclass__": type(value).__name__,
                **{f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, (tuple, list)):
        return type(value)(to_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def from_plain(value, types: Dict[str, type]):
    """Inverse of :func:`to_plain`; ``types`` maps dataclass names to classes. Fields the class no longer
    has are dropped (e.g. ``future_target`` of checkpoints written while ``--dni-future-aux`` existed)."""
    if isinstance(value, dict) and "__dataclass__" in value:
        cls = types[value["__dataclass__"]]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: from_plain(v, types) for k, v in value.items() if k in names})
    if isinstance(value, (tuple, list)):
        return type(value)(from_plain(v, types) for v in value)
    if isinstance(value, dict):
        return {k: from_plain(v, types) for k, v in value.items()}
    return value


# ---- ranks --------------------------------------------------------------------------------------
def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def rank() -> int:
    return torch.distributed.get_rank() if world_size() > 1 else 0


# ---- the carried state's layout: one interface, one implementation per model --------------------
class CarriedLayout:
    """What the step, the DNI criterion, the synthesizers and the representations read of a model's
    carried state, whatever the model: the interface :class:`StateLayout` (the LSTM's) and
    :class:`QRNNStateLayout` implement.

    A state is a tree of tensors (tuples, None), every tensor (1 or L, B, width) with the stream on
    dim 1. Part of it is the **DNI state**: the per-stream vector (B, D) a synthesizer reads and
    injects into (:meth:`flatten`), whose gradient at a window's start is the regression target
    (:meth:`gradient`). The rest, if any, is carried detached and is no part of DNI.
    """

    layer_sizes: Tuple[int, ...]   # each recurrent layer's width

    @property
    def dim(self) -> int:
        """D, the width of the flat DNI vector."""
        raise NotImplementedError

    @property
    def slices(self) -> Tuple[int, ...]:
        """Widths of the flat vector's parts, in order (the MLP synthesizer normalises each apart)."""
        raise NotImplementedError

    @property
    def join_order(self) -> torch.Tensor:
        """Index (D,) such that ``flat[:, join_order]`` is the seed paper's ``join_hidden`` order of the
        state (``parap1uie-s/alternate_sg``, ``model.py``): the order its scan synthesizer reads."""
        raise NotImplementedError

    def zeros(self, batch_size: int, like: torch.Tensor):
        """The state of ``batch_size`` fresh streams, in ``like``'s dtype and device."""
        raise NotImplementedError

    def flatten(self, state) -> torch.Tensor:
        """The DNI vector (B, D)."""
        raise NotImplementedError

    def cells(self, state) -> List[torch.Tensor]:
        """Each layer's cell state (B, width_l) (the state-norm log)."""
        raise NotImplementedError

    def hiddens(self, state) -> List[torch.Tensor]:
        """Each layer's hidden state as the layer returns it (B, width_l) (representations.py)."""
        raise NotImplementedError

    def with_grad(self, state):
        """``state`` for a training window's start: the DNI parts fresh leaves that require grad (backward
        leaves the true gradient there), the rest detached."""
        raise NotImplementedError

    def gradient(self, state) -> Optional[torch.Tensor]:
        """The gradient (B, D) that backward left on the DNI parts of ``state`` (made by :meth:`with_grad`),
        in :meth:`flatten`'s order; None when some part received none."""
        raise NotImplementedError

    def batch_size(self, state) -> int:
        return tree_leaves(state)[0].size(1)


@dataclasses.dataclass(frozen=True)
class StateLayout(CarriedLayout):
    """How an LSTM's carried state is shaped, and its flat per-stream form.

    ``layer_sizes[l]`` is layer ``l``'s width (h and c have the same). The state is a tuple of
    per-layer pairs ``((h_0, c_0), (h_1, c_1), ...)``, each tensor (1, B, width_l), as
    ``torch.nn.LSTM`` with one layer takes and returns it; a stacked ``torch.nn.LSTM`` of equal
    widths keeps (L, B, H) tensors ``(h, c)`` instead (``stacked=True``). The flat form is
    (B, D), ``D = 2 * sum(layer_sizes)``: h of every layer, then c of every layer. All of it is
    the DNI state.
    """

    layer_sizes: Tuple[int, ...]
    stacked: bool = True

    @property
    def dim(self) -> int:
        return 2 * sum(self.layer_sizes)

    @property
    def slices(self) -> Tuple[int, ...]:
        """Widths of the flat vector's parts, in order: h of each layer, then c of each layer."""
        return tuple(self.layer_sizes) * 2

    @property
    def join_order(self) -> torch.Tensor:
        """The paper's ``join_hidden`` order (h_0, c_0, h_1, c_1, ...) of our flat order (h_0, h_1, ...,
        c_0, c_1, ...)."""
        starts, offset = [], 0
        for size in self.layer_sizes:
            starts.append(offset)
            offset += size
        parts = []
        for start, size in zip(starts, self.layer_sizes):
            parts.append(torch.arange(start, start + size))                    # h of this layer
            parts.append(torch.arange(offset + start, offset + start + size))  # c of this layer
        return torch.cat(parts)

    def zeros(self, batch_size: int, like: torch.Tensor):
        if self.stacked:
            shape = (len(self.layer_sizes), batch_size, self.layer_sizes[0])
            return like.new_zeros(shape), like.new_zeros(shape)
        return tuple((like.new_zeros(1, batch_size, w), like.new_zeros(1, batch_size, w)) for w in self.layer_sizes)

    def hs_and_cs(self, state) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per-layer h and c tensors, each (B, width_l)."""
        if self.stacked:
            h, c = state
            return list(h.unbind(0)), list(c.unbind(0))
        return [h[0] for h, _ in state], [c[0] for _, c in state]

    def flatten(self, state) -> torch.Tensor:
        """The state as (B, D): h of every layer, then c of every layer."""
        hs, cs = self.hs_and_cs(state)
        return torch.cat(hs + cs, dim=-1)

    def cells(self, state) -> List[torch.Tensor]:
        return self.hs_and_cs(state)[1]

    def hiddens(self, state) -> List[torch.Tensor]:
        return self.hs_and_cs(state)[0]

    def with_grad(self, state):
        return tree_map(lambda s: s.detach().requires_grad_(True), state)

    def gradient(self, state) -> Optional[torch.Tensor]:
        grads = [s.grad for s in tree_leaves(state)]
        if any(g is None for g in grads):
            return None
        return self.flatten(tree_replace_leaves(state, grads))


@dataclasses.dataclass(frozen=True)
class QRNNStateLayout(CarriedLayout):
    """How a QRNN language model's carried state is shaped (``fairseq_dni/models/dni_qrnn_lm.py``).

    The state is ``(cells, previous_input)``: ``cells`` a tuple of each layer's last cell state
    ``c_l`` (1, B, width_l) (torchqrnn's ``QRNNLayer`` returns it as its hidden state), and
    ``previous_input`` (1, B, previous_input_size) the last input of the window-2 first layer
    (torchqrnn's ``prevX``), or None when the first layer has window 1 (``previous_input_size`` 0).
    The DNI state is the cells only, flat (B, D), ``D = sum(layer_sizes)``: c_0, c_1, ... (the seed
    paper's ``join_hidden`` of torchqrnn's hidden states, so :attr:`join_order` is the identity).
    ``previous_input`` is carried detached and never requires grad: its gradient would only reach
    the embedding table (and the first layer's gates), through no recurrent path (docs/design.md).
    """

    layer_sizes: Tuple[int, ...]
    previous_input_size: int = 0

    @property
    def dim(self) -> int:
        return sum(self.layer_sizes)

    @property
    def slices(self) -> Tuple[int, ...]:
        """Widths of the flat vector's parts: each layer's cell state."""
        return tuple(self.layer_sizes)

    @property
    def join_order(self) -> torch.Tensor:
        return torch.arange(self.dim)

    def zeros(self, batch_size: int, like: torch.Tensor):
        cells = tuple(like.new_zeros(1, batch_size, w) for w in self.layer_sizes)
        previous = like.new_zeros(1, batch_size, self.previous_input_size) if self.previous_input_size else None
        return cells, previous

    def flatten(self, state) -> torch.Tensor:
        return torch.cat(self.cells(state), dim=-1)

    def cells(self, state) -> List[torch.Tensor]:
        return [c[0] for c in state[0]]

    def hiddens(self, state) -> List[torch.Tensor]:
        return self.cells(state)

    def with_grad(self, state):
        cells, previous = state
        return (tuple(c.detach().requires_grad_(True) for c in cells),
                None if previous is None else previous.detach())

    def gradient(self, state) -> Optional[torch.Tensor]:
        grads = [c.grad for c in state[0]]
        if any(g is None for g in grads):
            return None
        return torch.cat([g[0] for g in grads], dim=-1)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a DNI criterion knows of the model it trains (the model's ``model_spec()`` makes it, the task
    keeps it for the criterion, which fairseq builds after the model): the carried state's layout, and the
    sizes of what the synthesizer may be conditioned on."""

    layout: CarriedLayout  # the carried state's layout and flat DNI size D
    embed_dim: int        # size of a token's input embedding (--dni-condition-on-next-input)
    label_dim: int        # size of a token's label vector: its output-layer row (the embedding with adaptive softmax)
    adaptive_softmax: bool = False  # the output layer is an adaptive softmax (only some criteria can train it)


# ---- the carried values ---------------------------------------------------------------------------
class CarriedState(nn.Module):
    """Per-stream values carried across windows, one per stream set (split).

    A module so that it rides along in its owner's ``state_dict`` (fairseq checkpoints the model
    and the criterion); only the ``train`` streams' value is saved. With several ranks the task
    calls :meth:`share_across_ranks` after every micro-batch (every rank must call it), and the
    checkpoint then holds every rank's value; loaded with another number of ranks, the training
    streams start afresh (logged).
    """

    def __init__(self, dataclasses_in_values: Sequence[type] = ()):
        super().__init__()
        self._values: Dict[str, Tuple[int, Any]] = {}   # key -> (streams, value)
        self._by_rank: Optional[List[Any]] = None         # every rank's train entry (several ranks)
        self._types = {cls.__name__: cls for cls in dataclasses_in_values}

    def get(self, key: Optional[str], streams: int, reset: bool = False,
            device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        """The value carried for ``key`` over ``streams`` streams, or None: no key (a stock task),
        ``reset`` (first window of a pass), nothing carried yet, or another number of streams.
        Floating-point tensors are moved to ``device`` / cast to ``dtype`` when given."""
        if key is None or reset or key not in self._values:
            return None
        carried_streams, value = self._values[key]
        if carried_streams != streams:
            logger.info("number of streams changed (%d -> %d): carried state of '%s' reset",
                        carried_streams, streams, key)
            return None
        if device is None and dtype is None:
            return value
        return tree_map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None), value)

    def has(self, key: Optional[str], streams: int) -> bool:
        """Whether a value is carried for ``key`` over exactly ``streams`` streams."""
        return key in self._values and self._values[key][0] == streams

    def peek(self, key: str):
        """The value carried for ``key`` as it is (None: none)."""
        entry = self._values.get(key)
        return None if entry is None else entry[1]

    def set(self, key: Optional[str], streams: int, value):
        """Carry ``value`` (detached) for ``key`` into the next window; no key: nothing kept."""
        if key is not None:
            self._values[key] = (streams, tree_map(lambda t: t.detach(), value))

    def pop(self, key: str):
        self._values.pop(key, None)

    def keys(self):
        return self._values.keys()

    def snapshot(self):
        """What is carried now (values are replaced, never changed in place, so this is cheap)."""
        return dict(self._values)

    def restore(self, snapshot):
        self._values = dict(snapshot)

    # ---- several ranks: rank 0 writes the checkpoint, so it must hold every rank's value --------
    def share_across_ranks(self):
        """Gather every rank's ``train`` value onto every rank (one all_gather of a flat buffer)."""
        entry = self._values.get(TRAIN)
        leaves = tree_leaves(entry[1]) if entry is not None else []
        if not leaves:
            self._by_rank = [entry] * world_size() if entry is not None else None
            return
        flat = torch.cat([t.reshape(-1).float() for t in leaves])
        gathered = [torch.empty_like(flat) for _ in range(world_size())]
        torch.distributed.all_gather(gathered, flat)
        self._by_rank = []
        for buffer in gathered:
            pieces, offset = [], 0
            for t in leaves:
                pieces.append(buffer[offset: offset + t.numel()].view_as(t).to(t.dtype).cpu())
                offset += t.numel()
            self._by_rank.append((entry[0], tree_replace_leaves(entry[1], pieces)))

    # ---- checkpoints -----------------------------------------------------------------------------
    def get_extra_state(self):
        if world_size() > 1:
            return {"by_rank": to_plain(self._by_rank)}
        entry = self._values.get(TRAIN)
        return {"train": None if entry is None else to_plain((entry[0], tree_map(lambda t: t.cpu(), entry[1])))}

    def set_extra_state(self, state):
        state = state or {}
        self._values.pop(TRAIN, None)
        if "by_rank" in state and state["by_rank"] is not None:
            by_rank = from_plain(state["by_rank"], self._types)
            if len(by_rank) != world_size():
                logger.info("checkpoint holds the carried state of %d ranks, this run has %d: "
                            "the training streams restart from a zero state", len(by_rank), world_size())
                return
            entry = by_rank[rank()]
        else:
            entry = from_plain(state.get("train"), self._types)
        if entry is not None:
            self._values[TRAIN] = (int(entry[0]), entry[1])


def carried_states(*modules: nn.Module) -> List[CarriedState]:
    """Every :class:`CarriedState` inside ``modules`` (wrappers such as fairseq's DDP included)."""
    return [m for module in modules if module is not None for m in module.modules() if isinstance(m, CarriedState)]
