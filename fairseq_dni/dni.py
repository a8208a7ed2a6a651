"""Decoupled Neural Interfaces for a recurrent state carried across TBPTT windows.

torch only (no fairseq import): the mathematics of synthetic gradients in the RNN
setting of Jaderberg et al. 2016 ("Decoupled Neural Interfaces using Synthetic
Gradients", section 3.1), small enough to read in one sitting.

A window ``t`` starts from the carried state ``s_{t-1}`` and ends in ``s_t``
(``s = (h, c)`` of every layer, flattened per stream to (B, D) by
``fairseq_dni.carried_state.StateLayout.flatten``).
Plain TBPTT drops ``dL_future / ds_t``. DNI estimates it with a synthesizer
``M(s_t) ~ dL_future/ds_t`` (any module of ``fairseq_dni/synthesizers/``) and injects
``scale * M(s_t)`` into the backward pass at ``s_t``: we add the scalar :func:`synthetic_gradient_term` to the window's loss,
whose gradient with respect to ``s_t`` is exactly that vector. The synthesizer is
trained by regression (:func:`synthesizer_loss`) onto the gradient that actually
arrives at the start of the next window, ``d(L_{t+1} + injected_{t+1}) / ds_t`` —
a bootstrapped target, since it contains window ``t+1``'s own synthetic gradient.
A synthesizer's last layer starts at zero, so training starts as TBPTT.

Units: the target, hence the prediction, is per stream the gradient of the *summed* loss of
that stream's future tokens (the loss a fairseq criterion returns), so the injected term needs
no rescaling: fairseq divides the whole loss by the sample size, as full BPTT would divide the
future tokens' loss.

Gradients flow like this (one window, synthetic mode)::

      s_{t-1} (leaf, requires grad)                       s_t
         |  --LSTM over tokens of window t-->  loss_t      |
         |                                                 +-- scale * M(s_t).detach()  injected
      grad at s_{t-1} = regression target for M(s_{t-1})   |
                                                           +-- detached copy carried to window t+1
"""

import torch
import torch.nn as nn


def synthetic_gradient_term(final_state_flat: torch.Tensor, synthetic_grad: torch.Tensor, scale: float) -> torch.Tensor:
    """Scalar whose gradient w.r.t. ``final_state_flat`` is ``scale * synthetic_grad``.

    Adding it to the window's loss injects the synthetic gradient at the window's end
    without a second backward call; the synthesizer is not trained through it (detached).
    Its value is not a loss: log the LM loss, not the sum.
    """
    return (final_state_flat * (scale * synthetic_grad).detach()).sum()


def bootstrapped_target(start_state_grad_flat: torch.Tensor, loss_scale: float = 1.0) -> torch.Tensor:
    """The synthesizer's target from the gradient that reached the next window's initial state.

    ``loss_scale`` undoes fp16/AMP loss scaling (the target must be the unscaled gradient).
    """
    return start_state_grad_flat.detach().float() / loss_scale


def synthesizer_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error, summed over state units, averaged over streams."""
    return (prediction.float() - target.float()).pow(2).sum(-1).mean()


def cosine_similarity(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over streams of cos(prediction, target): is the synthesizer any good?"""
    return nn.functional.cosine_similarity(prediction.float(), target.float(), dim=-1, eps=1e-12).mean()
