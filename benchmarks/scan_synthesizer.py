"""The scan synthesizer's own per-window cost, and the forget-mult scan's two gradients, at two sizes.

``--dni-synthesizer scan`` (fairseq_dni/synthesizers/scan.py) runs one scan across the B x D scalars
of the flattened LSTM state. Per window, as ``dni_cross_entropy`` uses it: the call at the window's
end (input noise, no autograd, new own state), the regression's re-evaluation of the call two
windows back (autograd), its backward and the synthesizer's Adam step. Timed here without the LM:

* ``2x200`` (B = 20: 16,000 positions), the size of ``dni_throughput.py``'s comparison;
* ``paper`` (the seed paper's 3-layer 1150/1150/400 LSTM, B = 20: 108,000 positions).

And ``forget_mult`` alone, forward + backward over (positions, 1, 50) (the synthesizer's layout),
with its hand-written reverse-scan backward (``ForgetMult``) and with autograd through every level of
the scan (``forget_mult_autograd``).

Each row runs in a fresh process; time is CPU time per window (``time.process_time``; on CUDA, wall
time after synchronising); memory is the peak resident set above what the process held before its
first window, inputs and model built (CPU: reused buffers, saved tensors, gradients and temporaries
included), or the peak allocated CUDA memory above the memory held then (CUDA). Writes
OUT.csv and OUT.md::

    python -m benchmarks.scan_synthesizer                       # CPU, results/scan_synthesizer.*
    python -m benchmarks.scan_synthesizer --device cuda --out benchmarks/results/scan_synthesizer_cuda
"""
import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SIZES = {"2x200": (200, 200), "paper": (1150, 1150, 400)}


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def scan_window(layer_sizes, streams, device="cpu"):
    """One window of the scan synthesizer's own work (see the module docstring), as a callable: the call
    at the window's end, then the regression of the call two windows back (re-evaluation, backward, Adam)."""
    import torch

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


def one(spec):
    """Time one row in this process; returns {ms, peak_mib}."""
    import torch

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if spec["what"] == "synthesizer":
        step = scan_window(SIZES[spec["size"]], spec["streams"], device)
    else:
        from fairseq_dni.modules.forget_mult import forget_mult, forget_mult_autograd

        fn = forget_mult if spec["what"] == "forget_mult" else forget_mult_autograd
        f = torch.rand(spec["positions"], 1, 50, device=device).requires_grad_()
        z = torch.randn(spec["positions"], 1, 50, device=device).requires_grad_()
        c0 = torch.randn(1, 50, device=device).requires_grad_()

        def step():
            out = fn(f, z, c0)
            out.backward(torch.ones_like(out))

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resident()
    for _ in range(spec["warmup"]):
        step()
    sync()
    start = time.perf_counter() if cuda else time.process_time()
    for _ in range(spec["repeats"]):
        step()
    sync()
    seconds = (time.perf_counter() if cuda else time.process_time()) - start
    peak = (torch.cuda.max_memory_allocated() if cuda else peak_resident()) - before
    return {"ms": 1000 * seconds / spec["repeats"], "peak_mib": max(peak, 0) / 2 ** 20,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10, help="timed windows (calls) per row")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "scan_synthesizer"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    rows = []
    for size, layer_sizes in SIZES.items():
        positions = args.streams * 2 * sum(layer_sizes)
        rows.append(dict(what="synthesizer", size=size, streams=args.streams, positions=positions))
    for positions in sorted({r["positions"] for r in rows}):
        for what in ("forget_mult", "forget_mult_autograd"):
            rows.append(dict(what=what, size="", streams="", positions=positions))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    results = []
    for row in rows:
        spec = dict(row, device=args.device, repeats=args.repeats, warmup=3)
        out = subprocess.run([sys.executable, "-m", "benchmarks.scan_synthesizer", "--one", json.dumps(spec)],
                             env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])
        results.append({**row, "device": args.device, **measured})
        print(results[-1], flush=True)
    fields = ["what", "size", "streams", "positions", "device", "ms", "peak_mib", "threads", "torch"]
    with open(args.out + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in results:
            writer.writerow({k: (round(r[k], 2) if isinstance(r[k], float) else r[k]) for k in fields})
    lines = [f"Setting: {args.device}, torch {results[0]['torch']}, {results[0]['threads']} threads, "
             f"{platform.machine()}; {args.repeats} timed windows (calls) per row after 3, each row in a fresh "
             "process; hidden 50, 1 QRNN layer (the paper's synthesizer); time: CPU time (CUDA: synchronised wall "
             "time)", "",
             "| what | LSTM | positions (B x D) | ms per window (call) | peak memory above the start (inputs "
             "built), MiB |",
             "|---|---|---|---|---|"]
    for r in results:
        what = {"synthesizer": "scan synthesizer: call + regression (forward, backward, Adam)",
                "forget_mult": "forget_mult forward + backward, hand-written reverse scan",
                "forget_mult_autograd": "forget_mult forward + backward, autograd through the scan"}[r["what"]]
        lines.append(f"| {what} | {r['size'] or '-'} | {r['positions']:,} x 50 | {r['ms']:.1f} | {r['peak_mib']:.0f} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
