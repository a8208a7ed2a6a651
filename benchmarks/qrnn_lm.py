"""The QRNN language model's training throughput (issue 22, "Speed"), in one process, on the same data:

  bare   a bare PyTorch QRNN truncated-BPTT loop written here (:class:`BareQRNNLM`, what a researcher
         would write by hand without fairseq): embedding -> QRNN layers (one ``nn.Linear`` over the
         whole window for each layer's gates; window 2 on the first layer with the previous window's
         last input carried, window 1 above; output gate) -> tied softmax -> ``torch.optim.Adam`` +
         gradient-norm clipping, the cell states and the previous input carried detached;
  qrnn   stock fairseq-train ``--arch dni_qrnn_lm`` (this plugin), through fairseq's own ``Trainer``;
  lstm   stock fairseq-train ``--arch dni_lstm_lm`` at the same sizes, likewise.

The bare loop runs its recurrence with this plugin's scan, ``fairseq_dni.modules.forget_mult.forget_mult``
(the one ``dni_qrnn_lm`` uses), so qrnn/bare measures what the plugin and fairseq add around the same
arithmetic, not the scan. qrnn/lstm is the architecture's speed-up inside fairseq-train.

Every arm: the same binarized corpus, B streams x T tokens per update (T = 200 by default, the seed
paper's window), the same embedding/hidden/layers (the last layer as wide as the embedding, tied to the
output layer: ``--share-decoder-input-output-embed --decoder-last-layer-out-dim``), Adam with the same
learning rate, the same clip, no dropout, weight drop or AR/TAR; plain TBPTT (``--criterion
cross_entropy``, ``--optimizer adam``). The arms step in one process, their updates interleaved one
by one (``dni_throughput.per_update_ratios``: CPU seconds per update, ``time.process_time``), which a
loaded machine disturbs far less than separate runs; the first ``--warmup`` updates of each are not
timed. Tokens per CPU second count B x T per update; the ratios are what to read. Writes OUT.md and
OUT.csv (OUT a path prefix; benchmarks/results/qrnn_lm by default)::

    OMP_NUM_THREADS=1 python -m benchmarks.qrnn_lm --data-bin runs/ptb-bin

(``runs/ptb-bin``: PTB binarized by ``python -m studies.paper_grid``, or any fairseq-preprocess'ed
corpus.) Goals (issue 22): qrnn >= 1.5x lstm at window 200, qrnn >= 0.95x bare.
"""

import os
import platform
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.dni_throughput import per_update_ratios
from benchmarks.throughput import REPO, benchmark_parser, load_tokens, vocab_size, write_results
from fairseq_dni.modules.forget_mult import forget_mult

# the carried state of the bare loop: every layer's last cell state (B, width_l), and the first layer's
# last input (B, embed), the start of its window-2 convolution in the next window
BareState = Tuple[Tuple[torch.Tensor, ...], torch.Tensor]


class BareQRNNLayer(nn.Module):
    """One QRNN layer (Bradbury, Merity, Xiong & Socher 2017, arXiv 1611.01576, eq. 1-3 with an output
    gate, "fo-pooling"), as ``salesforce/pytorch-qrnn``'s ``QRNNLayer`` computes it with
    ``save_prev_x=True``: the gates of all T steps from one ``nn.Linear`` over the window's inputs
    (window 2: each step's input concatenated with the step before it, ``[x_t, x_{t-1}]``), then
    ``z = tanh``, ``f = sigmoid``, ``o = sigmoid``, ``c_t = f_t z_t + (1 - f_t) c_{t-1}``, ``h_t = o_t c_t``."""

    def __init__(self, input_size: int, hidden: int, window: int):
        super().__init__()
        if window not in (1, 2):
            raise ValueError(f"window must be 1 or 2, not {window}")
        self.window = window
        self.linear = nn.Linear(window * input_size, 3 * hidden)

    def forward(self, x: torch.Tensor, c0: torch.Tensor, prev_x: Optional[torch.Tensor]):
        """x (T, B, in), time-major; c0 (B, H) the cell state before step 0; prev_x (B, in) the input
        before step 0 (window 2 only; None with window 1). Returns h (T, B, H), the last cell state
        (B, H) and the last input (B, in)."""
        source = x
        if self.window == 2:
            source = torch.cat([x, torch.cat([prev_x.unsqueeze(0), x[:-1]])], dim=2)
        z, f, o = self.linear(source).chunk(3, dim=2)
        c = forget_mult(torch.sigmoid(f), torch.tanh(z), c0)
        return torch.sigmoid(o) * c, c[-1], x[-1]


class BareQRNNLM(nn.Module):
    """Embedding -> ``layers`` QRNN layers (widths ``hidden``, ..., ``hidden``, ``embed``: the last one feeds
    the tied output layer; window 2 on the first, 1 above, as the seed paper's AWD-QRNN) -> a full softmax
    whose weight is the embedding's (``nn.Linear`` with a bias). No dropout."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, not {layers}")
        self.widths = [hidden] * (layers - 1) + [embed]
        self.embed = nn.Embedding(vocab, embed)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.layers = nn.ModuleList(BareQRNNLayer(embed if l == 0 else self.widths[l - 1], width, 2 if l == 0 else 1)
                                    for l, width in enumerate(self.widths))
        self.out = nn.Linear(embed, vocab)
        nn.init.zeros_(self.out.bias)
        self.out.weight = self.embed.weight

    def zero_state(self, batch_size: int) -> BareState:
        weight = self.embed.weight
        return tuple(weight.new_zeros(batch_size, w) for w in self.widths), weight.new_zeros(batch_size, weight.size(1))

    def logits(self, src: torch.Tensor, state: BareState):
        """src (B, T) token ids -> logits (T, B, V), time-major, and the window's final state (not detached)."""
        cells, prev_x = state
        x = self.embed(src.t())
        final = []
        for l, layer in enumerate(self.layers):
            x, c, last = layer(x, cells[l], prev_x if layer.window == 2 else None)
            final.append(c)
            if l == 0:
                last_input = last
        return self.out(x), (tuple(final), last_input)

    def loss(self, src: torch.Tensor, tgt: torch.Tensor, state: BareState):
        """Mean cross-entropy over the window (nats) and the final state; src, tgt (B, T)."""
        logits, state = self.logits(src, state)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), tgt.t().reshape(-1)), state


def detached(state: BareState) -> BareState:
    cells, prev_x = state
    return tuple(c.detach() for c in cells), prev_x.detach()


def bare_updates(tokens: np.ndarray, model: BareQRNNLM, batch_size: int, window: int, lr: float, clip: float):
    """A callable doing one TBPTT update of ``model`` per call (window after window of ``batch_size``
    contiguous streams cut from ``tokens``, the state carried detached, Adam, clip) and returning the
    window's mean loss tensor. Raises ValueError when ``tokens`` holds fewer than ``window + 1`` per stream."""
    stream_len = (len(tokens) - 1) // batch_size
    if stream_len <= window:
        raise ValueError(f"{len(tokens)} tokens are too few for {batch_size} streams of windows of {window}")
    data = torch.from_numpy(np.asarray(tokens[: stream_len * batch_size + 1], dtype=np.int64))
    src_all, tgt_all = data[:-1].view(batch_size, stream_len), data[1:].view(batch_size, stream_len)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    carried = {"state": model.zero_state(batch_size), "step": 0}

    def update():
        i = (carried["step"] * window) % (stream_len - window)
        loss, state = model.loss(src_all[:, i:i + window], tgt_all[:, i:i + window], carried["state"])
        carried["state"], carried["step"] = detached(state), carried["step"] + 1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss.detach()

    return update


def softmax_alone(tokens: np.ndarray, model: BareQRNNLM, batch_size: int, window: int):
    """A callable doing the output side of one update alone: ``model``'s embedding looked up and its tied
    output layer and cross-entropy over one window's (B * T) positions, forward and backward (no QRNN, no
    optimizer step). Timed beside the arms it estimates how much of every arm's update is the softmax, which
    does not depend on the recurrent layers: the recurrent parts' ratio is about (t_lstm - t) / (t_qrnn - t)."""
    data = torch.from_numpy(np.asarray(tokens[: batch_size * window + 1], dtype=np.int64))
    src, tgt = data[:-1].view(batch_size, window), data[1:].view(batch_size, window)

    def update():
        model.zero_grad(set_to_none=True)
        logits = model.out(model.embed(src.t()))
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.t().reshape(-1)).backward()

    return update


def fairseq_arms(args) -> dict:
    """{arm: (what, fairseq-train flags)}: the two fairseq arms, plain TBPTT, no dropout, tied output."""
    base = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling",
            "--criterion", "cross_entropy", "--dropout", "0", "--weight-drop", "0", "--decoder-embed-dropout", "0",
            "--share-decoder-input-output-embed", "--decoder-last-layer-out-dim"]
    return {"qrnn": ("fairseq-train --arch dni_qrnn_lm", base + ["--arch", "dni_qrnn_lm"]),
            "lstm": ("fairseq-train --arch dni_lstm_lm", base + ["--arch", "dni_lstm_lm"])}


def main():
    parser = benchmark_parser("qrnn_lm", os.path.join(REPO, "runs", "ptb-bin"), embed_dim=256, hidden=256, layers=3,
                              updates=60, window=200, warmup=5, extra=[
                                  (["--threads"], dict(type=int, default=1, help="torch's intra-op threads "
                                                       "(CPU time per update sums them)"))])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    tokens, vocab = load_tokens(args.data_bin), vocab_size(args.data_bin)
    torch.manual_seed(args.seed)
    model = BareQRNNLM(vocab, args.embed_dim, args.hidden, args.layers)
    alone = {"bare": bare_updates(tokens, model, args.batch_size, args.window, args.lr, args.clip),
             "softmax alone": softmax_alone(tokens, BareQRNNLM(vocab, args.embed_dim, args.hidden, 1),
                                            args.batch_size, args.window)}
    arms = fairseq_arms(args)
    seconds = per_update_ratios(args, arms, optimizer=[], updates=args.updates, warmup=args.warmup, alone=alone)
    tokens_per_s = {name: args.batch_size * args.window / s for name, s in seconds.items()}
    what = {"bare": "bare PyTorch QRNN TBPTT loop (this file; fairseq_dni's forget_mult scan)",
            **{name: w for name, (w, _) in arms.items()}}
    rows = [(name, what[name], tokens_per_s[name],
             f"{seconds[name] * 1000:.0f} ms/update; qrnn/this {tokens_per_s['qrnn'] / tokens_per_s[name]:.3f}")
            for name in ("bare", "qrnn", "lstm")]
    t_softmax = seconds["softmax alone"]
    rows.append(("softmax alone", f"embedding, tied output layer and cross-entropy over {args.batch_size} x "
                 f"{args.window} positions, forward and backward, no recurrent layer or optimizer", float("nan"),
                 f"{t_softmax * 1000:.0f} ms/update: {t_softmax / seconds['qrnn']:.0%} of qrnn's, "
                 f"{t_softmax / seconds['lstm']:.0%} of lstm's"))
    widths = "/".join(str(w) for w in [args.hidden] * (args.layers - 1) + [args.embed_dim])
    setting = (f"{args.layers} layers {widths}, tied {args.embed_dim}-d embedding (QRNN: window 2 on the first "
               f"layer, output gate), vocab {vocab}, B={args.batch_size}, T={args.window}, Adam {args.lr}, clip "
               f"{args.clip}, no dropout; one process, updates interleaved one by one, {args.updates} timed after "
               f"{args.warmup}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load_before:.1f} "
               f"at the start, {os.getloadavg()[0]:.1f} at the end")
    qrnn_lstm, qrnn_bare = tokens_per_s["qrnn"] / tokens_per_s["lstm"], tokens_per_s["qrnn"] / tokens_per_s["bare"]
    verdict = (f"**qrnn/lstm = {qrnn_lstm:.3f}** (goal >= 1.5: {'met' if qrnn_lstm >= 1.5 else 'not met'}), "
               f"**qrnn/bare = {qrnn_bare:.3f}** (goal >= 0.95: {'met' if qrnn_bare >= 0.95 else 'not met'}); "
               f"tokens per CPU second of each arm's own updates. Without the softmax's share (an estimate: "
               f"(t_lstm - t_softmax) / (t_qrnn - t_softmax)), the rest of the update runs "
               f"{(seconds['lstm'] - t_softmax) / (seconds['qrnn'] - t_softmax):.2f}x faster with the QRNN")
    write_results(args.out, rows, setting, verdict, tokens_header="tokens per CPU second", note_header="note")


if __name__ == "__main__":
    main()
