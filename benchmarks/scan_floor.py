"""How close the scan synthesizer can come to plain TBPTT: its per-window work, and a floor, against an LM update.

``--dni-synthesizer scan`` (fairseq_dni/synthesizers/scan.py) at ``dni_throughput.py``'s size (2x200 LSTM,
B = 20: one scan over 16,000 positions, 50 units). Timed in one process, interleaved update by update
with plain TBPTT (``dni_throughput.per_update_ratios``: fairseq's ``Trainer.train_step``, CPU time):

* ``scan synthesizer window``: what ``dni_cross_entropy`` asks of it per window, without the LM: the
  call at the window's end (input noise, zoneout, no autograd), the regression's re-evaluation of
  the call two windows back (autograd), its backward and an Adam step on its parameters;
* ``floor``: only the work the paper's function cannot do without, on preallocated buffers: three
  gate activations over the B D x 50 values for each of the two calls (six sigmoids: tanh as a
  sigmoid), one forward scan for the injection, one forward and one reverse (adjoint) scan for the
  regression (``chunk_scan``, the synthesizer's own), nothing else (no gate products, no zoneout
  draw, no gradients of the gates, no optimizer step);
* ``floor + gate products``: the floor and the three gate products per call (``(N, 4) @ (4, H)``)
  and the three gradient products of the regression's backward.

Each row's ratio is ``t_tbptt / (t_tbptt + t_row)``: where ``synthetic-scan`` would land if the
criterion added nothing else (it adds its own work too, so the arm lands a little lower). If the
floor's ratio is below 0.9, no implementation of this design reaches 0.9x; above it, the gap
between the floor and the window is what an implementation can still win::

    python -m benchmarks.scan_floor --data-bin runs/ptb-bin --updates 60 --out /tmp/scan_floor
"""
import os
import platform

import torch

from benchmarks.dni_throughput import per_update_ratios
from benchmarks.throughput import REPO, benchmark_parser, write_results


def scan_window(layer_sizes, streams, device=torch.device("cpu")):
    """One window of the scan synthesizer's own work (see the module docstring), as a callable: the call
    at the window's end, then the regression of the call two windows back (re-evaluation, backward, Adam).
    ``benchmarks/scan_synthesizer.py`` times the same callable."""
    from fairseq_dni.carried_state import StateLayout
    from fairseq_dni.synthesizers import build_synthesizer

    layout = StateLayout(layer_sizes)
    synth = build_synthesizer("scan", layout, init="paper").train().to(device)
    adam = torch.optim.Adam(synth.parameters(), lr=1e-3)
    state = {"own": synth.initial_own_state(torch.zeros(streams, layout.dim, device=device)), "calls": []}

    def window():
        inputs = synth.perturb(torch.randn(streams, layout.dim, device=device))
        with torch.no_grad():
            _, new_own = synth(inputs, None, state["own"])
        state["calls"].append((inputs, state["own"]))
        if len(state["calls"]) == 3:   # the call two windows back, regressed now
            prev_inputs, prev_own = state["calls"].pop(0)
            prediction, _ = synth(prev_inputs, None, prev_own)
            (prediction - torch.randn_like(prediction)).pow(2).sum(-1).mean().backward()
            adam.step()
            adam.zero_grad()
        state["own"] = new_own

    return window


def floor_window(positions, hidden=50, products=False):
    """The floor's work for ``positions`` scalars (see the module docstring), as a callable."""
    from fairseq_dni.modules.forget_mult import chunk_scan
    from fairseq_dni.synthesizers.scan import chunk_length

    chunk = chunk_length(positions)
    chunks = -(-positions // chunk)
    slabs = (chunk, chunks, 1, hidden)
    rows = chunk * chunks
    gates = [torch.randn(rows, hidden) for _ in range(3)]
    a, b = torch.rand(rows, hidden), torch.randn(rows, hidden)
    cells, adjoint, c0 = torch.empty(rows, hidden), torch.empty(rows, hidden), torch.zeros(1, hidden)
    columns, kernel = torch.randn(rows, 4), torch.randn(4, hidden)

    def window():
        for _ in range(2):                       # the injection's call and the regression's re-evaluation
            for gate in gates:
                if products:
                    torch.mm(columns, kernel, out=gate)
                gate.sigmoid_()
            chunk_scan(a.view(slabs), b.view(slabs), c0, out=cells.view(slabs))
        chunk_scan(a.view(slabs), b.view(slabs), adjoint=True, out=adjoint.view(slabs))   # the regression's backward
        if products:
            for gate in gates:
                columns.t().mm(gate)

    return window


def main():
    parser = benchmark_parser("scan_floor", os.path.join(REPO, "runs", "ptb-bin"), updates=60)
    args = parser.parse_args()
    base = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling",
            "--arch", "dni_lstm_lm", "--dropout", "0", "--criterion", "cross_entropy"]
    arms = {"real-tbptt": ("cross_entropy (no synthesizer)", base)}
    optimizer = ["--optimizer", "alternating", "--base-optimizer", "adam", "--dni-lr", "1e-4"]
    layer_sizes = (args.hidden,) * args.layers
    positions = args.batch_size * 2 * sum(layer_sizes)
    alone = {"scan synthesizer window": scan_window(layer_sizes, args.batch_size),
             "floor": floor_window(positions),
             "floor + gate products": floor_window(positions, products=True)}
    per_update = per_update_ratios(args, arms, optimizer, updates=args.updates, alone=alone)
    t_lm = per_update["real-tbptt"]
    rows = [("real-tbptt (per update)", "fairseq Trainer.train_step, interleaved", args.batch_size * args.window / t_lm,
             f"{t_lm * 1000:.1f} ms per update")]
    rows += [(name, f"{positions:,} x 50 values, {per_update[name] * 1000:.2f} ms", float("nan"),
              f"{t_lm / (t_lm + per_update[name]):.3f}x = t_tbptt / (t_tbptt + this)") for name in alone]
    setting = (f"{args.layers}x{args.hidden} LSTM, embed {args.embed_dim}, B={args.batch_size}, T={args.window}, "
               f"one process: {args.updates} timed updates after 10, interleaved; torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, {platform.machine()}")
    verdict = "; ".join(f"**{name} {t_lm / (t_lm + per_update[name]):.3f}**" for name in alone)
    write_results(args.out, rows, setting, verdict, tokens_header="tokens per CPU second",
                  note_header="time; ratio to real-tbptt")


if __name__ == "__main__":
    main()
