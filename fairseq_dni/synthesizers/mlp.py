"""Jaderberg et al. (2016)'s synthesizer: an MLP over the whole carried state (torch only)."""
from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from fairseq_dni.synthesizers import Synthesizer


class SliceNorm(nn.Module):
    """Normalise each slice of the last dim (widths ``slices``) to zero mean, unit variance, and
    append each slice's log-norm.

    The state is h and c of every layer; c is unbounded and can be orders of magnitude larger
    than h, so one LayerNorm over the whole vector would erase h. Each (layer, h-or-c) slice is
    normalised on its own, and its log-norm tells the MLP how large (how saturated) it is.
    (B, sum(slices)) -> (B, sum(slices) + len(slices)).
    """

    def __init__(self, slices: Sequence[int]):
        super().__init__()
        self.slices = tuple(slices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(set(self.slices)) == 1:  # equal widths: one batched call
            parts = x.reshape(*x.shape[:-1], len(self.slices), -1)
            normed = nn.functional.layer_norm(parts, parts.shape[-1:]).flatten(-2)
            scale = parts.norm(dim=-1).clamp_min(1e-6).log()
            return torch.cat([normed, scale], dim=-1)
        parts = x.split(self.slices, dim=-1)
        normed = [nn.functional.layer_norm(p, p.shape[-1:]) for p in parts]
        scale = [p.norm(dim=-1, keepdim=True).clamp_min(1e-6).log() for p in parts]
        return torch.cat(normed + scale, dim=-1)


class MLPSynthesizer(Synthesizer):
    """MLP over the flattened state (h and c of every layer) -> predicted dLoss_future/d(state).

    ``num_layers`` linear layers (ReLU between them) of width ``hidden_dim``; the last layer
    starts at zero, so a fresh synthesizer injects nothing. ``condition_dim`` > 0 adds an input
    (cDNI: e.g. the next window's first target's label vector). With ``slices`` (the state's
    per-(layer, h-or-c) widths) each slice is normalised separately (:class:`SliceNorm`), so the
    regression neither dies on a growing cell state nor loses h next to it. ``input_noise`` > 0
    multiplies the state by noise drawn from N(1, input_noise) per element in training.
    Stateless: ``own_state`` is always None.
    """

    def __init__(self, state_dim: int, hidden_dim: int = 256, num_layers: int = 2, condition_dim: int = 0,
                 slices: Sequence[int] = (), input_noise: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a synthesizer needs at least one layer, got {num_layers}")
        if slices and sum(slices) != state_dim:
            raise ValueError(f"slices {tuple(slices)} do not add up to the state size {state_dim}")
        self.normalize = SliceNorm(slices) if slices else nn.Identity()
        dims = [state_dim + len(slices) + condition_dim] + [hidden_dim] * (num_layers - 1) + [state_dim]
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.condition_dim = condition_dim
        self.input_noise = input_noise

    def forward(self, state: torch.Tensor, condition: Optional[torch.Tensor] = None,
                own_state: Any = None) -> Tuple[torch.Tensor, Any]:
        x = self.normalize(state)
        if condition is not None:
            x = torch.cat([x, condition], dim=-1)
        return self.net(x), None
