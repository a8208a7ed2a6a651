"""Locked (variational) dropout: one mask per stream, the same at every time step.

Gal & Ghahramani (2016); AWD-LSTM's ``LockedDropout`` (``salesforce/awd-lstm-lm``,
``locked_dropout.py``), here batch-first.
"""
import torch
import torch.nn as nn


def check_rate(name: str, p: float) -> float:
    """``p`` if it is a dropout rate in [0, 1), else ValueError naming the flag ``name``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return p


class LockedDropout(nn.Module):
    """x (B, T, D) -> x * m / (1 - p), with m (B, 1, D) ~ Bernoulli(1 - p): one mask per stream for
    the whole window, fresh at every call (window). Identity in eval mode or with p = 0 (no
    random number is drawn then)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = check_rate("locked dropout rate", p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.p)
        return x * mask / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
