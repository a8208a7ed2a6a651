"""Embedding dropout: whole word types dropped from the embedding matrix for one window.

Gal & Ghahramani (2016), sec. 4; AWD-LSTM's ``embedded_dropout`` (``salesforce/awd-lstm-lm``,
``embed_regularize.py``). A dropped type's embedding is zero at every position it occurs in the
window; the kept rows are scaled by 1 / (1 - p).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def embedding_dropout(embed: nn.Embedding, tokens: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """tokens (B, T) -> embeddings (B, T, E), with each of the V rows of ``embed.weight`` kept with
    probability 1 - p (one mask (V, 1) per call) in training; ``embed(tokens)`` otherwise."""
    weight = embed.weight
    if training and p > 0:
        keep = weight.new_empty((weight.size(0), 1)).bernoulli_(1 - p)
        weight = weight * keep / (1 - p)
    return F.embedding(tokens, weight, embed.padding_idx)
