"""Decoupled Neural Interfaces for a recurrent state carried across TBPTT windows.

torch only (no fairseq import): the mathematics of synthetic gradients in the RNN
setting of Jaderberg et al. 2016 ("Decoupled Neural Interfaces using Synthetic
Gradients", section 3.1), small enough to read in one sitting.

A window ``t`` starts from the carried state ``s_{t-1}`` and ends in ``s_t``
(``s = (h, c)`` of every layer, flattened per stream by :func:`flatten_state`).
Plain TBPTT drops ``dL_future / ds_t``. DNI estimates it with a synthesizer
``M(s_t) ~ dL_future/ds_t`` and injects ``scale * M(s_t)`` into the backward pass
at ``s_t``: we add the scalar :func:`synthetic_gradient_term` to the window's loss,
whose gradient with respect to ``s_t`` is exactly that vector. The synthesizer is
trained by regression (:func:`synthesizer_loss`) onto the gradient that actually
arrives at the start of the next window, ``d(L_{t+1} + injected_{t+1}) / ds_t`` —
a bootstrapped target, since it contains window ``t+1``'s own synthetic gradient.
The last layer of the synthesizer starts at zero, so training starts as TBPTT.

Gradients flow like this (one window, synthetic mode)::

      s_{t-1} (leaf, requires grad)                       s_t
         |  --LSTM over tokens of window t-->  loss_t      |
         |                                                 +-- scale * M(s_t).detach()  injected
      grad at s_{t-1} = regression target for M(s_{t-1})   |
                                                           +-- detached copy carried to window t+1
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

State = Tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers, batch, hidden)


def flatten_state(state: State) -> torch.Tensor:
    """(h, c) of shape (layers, B, H) each -> (B, 2 * layers * H): h of every layer, then c."""
    h, c = state
    both = torch.cat([h, c], dim=0)  # (2L, B, H)
    return both.transpose(0, 1).reshape(both.size(1), -1)


def unflatten_state(flat: torch.Tensor, layers: int, hidden: int) -> State:
    """Inverse of :func:`flatten_state`."""
    both = flat.reshape(flat.size(0), 2 * layers, hidden).transpose(0, 1)
    return both[:layers], both[layers:]


class ChunkNorm(nn.Module):
    """Normalise each of ``chunks`` equal slices of the last dim to zero mean, unit variance.

    The state is h and c of every layer; c is unbounded and can be orders of magnitude
    larger than h, so one LayerNorm over the whole vector would erase h. Each (layer,
    h-or-c) slice is normalised on its own and its log-norm is appended, so the
    synthesizer still sees how large (how saturated) each part is.
    """

    def __init__(self, chunks: int):
        super().__init__()
        self.chunks = chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.reshape(*x.shape[:-1], self.chunks, -1)
        normed = nn.functional.layer_norm(parts, parts.shape[-1:])
        scale = parts.norm(dim=-1).clamp_min(1e-6).log()
        return torch.cat([normed.flatten(-2), scale], dim=-1)


class Synthesizer(nn.Module):
    """MLP over the carried state of all layers (h and c) -> predicted dLoss_future/d(state).

    ``num_layers`` linear layers (ReLU between them) of width ``hidden_dim``; the last
    layer starts at zero, so a fresh synthesizer injects nothing. ``condition_dim`` > 0
    adds an input (e.g. the embedding of the next window's first token). With
    ``state_chunks`` > 0 the state's ``state_chunks`` equal slices (2 x layers: h and c
    of each layer) are normalised separately (:class:`ChunkNorm`) before the MLP, so the
    regression neither dies on a growing cell state nor loses h next to it.
    """

    def __init__(
        self,
        state_dim: int,
        hidden_dim: int = 0,
        num_layers: int = 2,
        condition_dim: int = 0,
        state_chunks: int = 0,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a synthesizer needs at least one layer, got {num_layers}")
        if state_chunks and state_dim % state_chunks:
            raise ValueError(f"state size {state_dim} does not split into {state_chunks} equal chunks")
        hidden_dim = hidden_dim or state_dim
        self.normalize = ChunkNorm(state_chunks) if state_chunks else nn.Identity()
        in_dim = state_dim + state_chunks + condition_dim
        dims: Sequence[int] = [in_dim] + [hidden_dim] * (num_layers - 1) + [state_dim]
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.condition_dim = condition_dim

    def forward(self, state_flat: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.normalize(state_flat)
        if condition is not None:
            x = torch.cat([x, condition], dim=-1)
        return self.net(x)


def synthetic_gradient_term(final_state_flat: torch.Tensor, synthetic_grad: torch.Tensor, scale: float) -> torch.Tensor:
    """Scalar whose gradient w.r.t. ``final_state_flat`` is ``scale * synthetic_grad``.

    Adding it to the window's loss injects the synthetic gradient at the window's end
    without a second backward call; the synthesizer is not trained through it (detached).
    Its value is not a loss: log the LM loss, not the sum.
    """
    return (final_state_flat * (scale * synthetic_grad).detach()).sum()


def bootstrapped_target(initial_state_grad_flat: torch.Tensor, loss_scale: float = 1.0) -> torch.Tensor:
    """The synthesizer's target from the gradient that reached the next window's initial state.

    ``loss_scale`` undoes fp16/AMP loss scaling (the target must be the unscaled gradient).
    """
    return initial_state_grad_flat.detach().float() / loss_scale


def synthesizer_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error, summed over state units, averaged over streams."""
    return (prediction.float() - target.float()).pow(2).sum(-1).mean()


def cosine_similarity(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over streams of cos(prediction, target): is the synthesizer any good?"""
    return nn.functional.cosine_similarity(prediction.float(), target.float(), dim=-1, eps=1e-12).mean()
