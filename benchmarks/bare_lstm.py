"""The hand-written baseline of the throughput benchmarks: a bare PyTorch truncated-BPTT loop.

What a researcher would write without fairseq (PyTorch's word_language_model style,
batch-first): ``nn.Embedding`` -> dropout -> one ``nn.LSTM`` call per window (cuDNN on a
GPU) -> dropout -> optional projection -> a full softmax (``nn.Linear`` +
``F.cross_entropy``, optionally tied to the embedding) or ``nn.AdaptiveLogSoftmaxWithLoss``
(the same head and tail sizes as fairseq's ``AdaptiveSoftmax`` with the same cutoffs and
factor) -> Adam or SGD with gradient-norm clipping. Layers of unequal widths (AWD-LSTM's
1150/1150/400) are a stack of single-layer ``nn.LSTM`` calls, dropout between them.
The carried state is detached between windows; the corpus is cut into ``batch_size``
contiguous streams and read window by window.

Used by ``throughput.py`` (CPU, PTB, small model).
"""

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BareSizes:
    """Sizes of the bare model (fairseq's flag names in comments)."""

    vocab: int                                # len(dictionary), padding included
    embed: int                                # --decoder-embed-dim
    hidden: int                               # --decoder-hidden-size
    layers: int                               # --decoder-layers
    out: Optional[int] = None                 # --decoder-out-embed-dim (None or == hidden: no projection)
    cutoffs: Optional[Sequence[int]] = None   # --adaptive-softmax-cutoff (None: full softmax)
    adaptive_factor: float = 4.0              # --adaptive-softmax-factor (torch's div_value)
    dropout_in: float = 0.0                   # --decoder-dropout-in
    dropout_hidden: float = 0.0               # --decoder-hidden-dropout (between LSTM layers)
    dropout_out: float = 0.0                  # --decoder-dropout-out
    widths: Optional[Sequence[int]] = None    # each layer's width (None: ``layers`` x ``hidden``); AWD-LSTM's last
                                              # layer is the embedding's width (--decoder-last-layer-out-dim)
    tied: bool = False                        # --share-decoder-input-output-embed (full softmax only)

    def layer_widths(self):
        widths = list(self.widths) if self.widths else [self.hidden] * self.layers
        if len(widths) != self.layers:
            raise ValueError(f"{len(widths)} widths for {self.layers} layers")
        return widths


class BareLM(nn.Module):
    def __init__(self, s: BareSizes):
        super().__init__()
        self.embed = nn.Embedding(s.vocab, s.embed)
        self.drop_in = nn.Dropout(s.dropout_in)
        widths = s.layer_widths()
        if len(set(widths)) == 1:   # one stacked nn.LSTM call (cuDNN runs the layers in one kernel launch)
            self.lstm = nn.LSTM(s.embed, widths[0], s.layers, batch_first=True,
                                dropout=s.dropout_hidden if s.layers > 1 else 0.0)
            self.lstms = None
        else:                       # one single-layer nn.LSTM per width, dropout between them
            self.lstm = None
            self.lstms = nn.ModuleList(nn.LSTM(s.embed if l == 0 else widths[l - 1], w, batch_first=True)
                                       for l, w in enumerate(widths))
            self.drop_hidden = nn.Dropout(s.dropout_hidden)
        self.drop_out = nn.Dropout(s.dropout_out)
        out = s.out or widths[-1]
        self.project = nn.Linear(widths[-1], out, bias=False) if out != widths[-1] else None
        if s.cutoffs:
            if s.tied:
                raise ValueError("a tied embedding needs a full softmax")
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(out, s.vocab, list(s.cutoffs), div_value=s.adaptive_factor)
            self.out = None
        else:
            self.adaptive = None
            self.out = nn.Linear(out, s.vocab)
            if s.tied:
                if out != s.embed:
                    raise ValueError(f"a tied embedding needs the output width ({out}) == the embedding's ({s.embed})")
                self.out.weight = self.embed.weight

    def run_lstm(self, x, state):
        if self.lstm is not None:
            return self.lstm(x, state)
        final = []
        for l, lstm in enumerate(self.lstms):
            if l > 0:
                x = self.drop_hidden(x)
            x, layer_state = lstm(x, None if state is None else state[l])
            final.append(layer_state)
        return x, tuple(final)

    def loss(self, src, tgt, state):
        """Mean cross-entropy over the window (nats) and the final (h, c)."""
        y, state = self.run_lstm(self.drop_in(self.embed(src)), state)
        y = self.drop_out(y)
        if self.project is not None:
            y = self.project(y)
        if self.adaptive is not None:
            return self.adaptive(y.reshape(-1, y.size(-1)), tgt.reshape(-1)).loss, state
        logits = self.out(y)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1)), state


def detached(state):
    """The carried (h, c), or one (h, c) per layer, cut from the graph."""
    return tuple(detached(s) if isinstance(s, tuple) else s.detach() for s in state)


def tbptt_tokens_per_s(tokens: np.ndarray, sizes: BareSizes, batch_size: int, window: int, *, optimizer="adam",
                       lr=1e-3, clip=0.25, warmup=20, updates=200, seed=1, device="cpu"):
    """Train ``warmup + updates`` windows; return (tokens/s over the last ``updates``, last loss).

    ``tokens``: the training split as one flat id array (``</s>`` after every line, as fairseq
    binarizes it). Tokens/s counts ``batch_size * window`` tokens per update; on a GPU the
    clock is read after ``torch.cuda.synchronize()``. Raises ValueError when the split holds
    fewer than ``window + 1`` tokens per stream.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    model = BareLM(sizes).to(device)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        raise ValueError(f"optimizer must be adam or sgd, not {optimizer!r}")
    stream_len = (len(tokens) - 1) // batch_size
    if stream_len <= window:
        raise ValueError(f"{len(tokens)} tokens are too few for {batch_size} streams of windows of {window}")
    data = torch.from_numpy(np.asarray(tokens[: stream_len * batch_size + 1], dtype=np.int64))
    src_all = data[:-1].view(batch_size, stream_len).to(device)
    tgt_all = data[1:].view(batch_size, stream_len).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    state = None
    t0 = None
    for step in range(warmup + updates):
        if step == warmup:
            sync()
            t0 = time.perf_counter()
        i = (step * window) % (stream_len - window)
        src, tgt = src_all[:, i : i + window], tgt_all[:, i : i + window]
        loss, state = model.loss(src, tgt, state)
        state = detached(state)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    sync()
    elapsed = time.perf_counter() - t0
    return updates * batch_size * window / elapsed, loss.item()
