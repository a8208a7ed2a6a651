"""Synthetic-gradient training throughput against plain TBPTT, measured in one run.

Arms (stock fairseq-train, same model, data, optimizer, updates; every arm uses
``--optimizer alternating --base-optimizer adam``, which ``dni_cross_entropy`` needs; see
throughput.py for how tokens/s are read from fairseq's own wps meter):

  real-tbptt                --criterion cross_entropy                        plain TBPTT, no synthesizer
  real                      --criterion dni_cross_entropy --dni-mode real     MLP synthesizer still learning
  synthetic                 --criterion dni_cross_entropy --dni-mode synthetic
  synthetic-coordinatewise  ... --dni-synthesizer coordinatewise              the seed paper's synthesizer, GRU cell
  synthetic-coordinatewise-qrnn  ... --dni-synthesizer-cell qrnn             with the paper's own cell (QRNN)
  synthetic-scan            ... --dni-synthesizer scan                        the paper's --sgtype QRNN, one scan
                                                                             across the B x D state scalars

(``--arms`` runs a subset; real-tbptt is always in it)

and, timed in the same loop, each coordinate-wise cell's own per-window work alone, without the LM
(``synthesizer_window``; ``--compiled`` adds the QRNN cell under torch.compile): the ratio that work
alone would leave, t_tbptt / (t_tbptt + t_cell), an estimate (not a strict bound: the in-criterion arm
can come out a little above it) of where the coordinate-wise arms must land if the criterion adds nothing.

The arms step in one process, interleaved update by update (``per_update_ratios``: CPU time per
update through fairseq's own ``Trainer``), which a loaded machine disturbs far less than separate runs;
``--repeats N`` also runs each arm N times as a separate fairseq-train (rotating order, medians).
Writes the ratios to plain TBPTT to OUT.md and OUT.csv (OUT a path prefix), and the memory the
coordinate-wise synthesizer carries across windows for ``dni_lstm_lm_wikitext103`` at 32 streams
(measured on the criterion's carried values after a few windows). As in benchmarks/results/README.md:

    python -m benchmarks.dni_throughput --data-bin runs/ptb-bin --repeats 0 --interleaved-updates 80 --compiled
    python -m benchmarks.dni_throughput --data-bin runs/ptb-bin --hidden 650 --embed-dim 650 --repeats 0 \
        --interleaved-updates 40 --out benchmarks/results/dni_throughput_650
    python -m benchmarks.dni_throughput --data-bin runs/ptb-bin --repeats 0 --interleaved-updates 120 \
        --arms synthetic synthetic-coordinatewise-qrnn synthetic-scan --out benchmarks/results/dni_throughput_scan

(``runs/ptb-bin``: PTB binarized by ``python -m studies.paper_grid``, or any fairseq-preprocess'ed corpus.)
"""

import os
import platform
import statistics
import time

import torch

from benchmarks.throughput import HERE, REPO, benchmark_parser, fairseq_wps, parse_benchmark_args, write_results


def carried_memory(streams=32, hidden=1024, layers=2, embed=512, cell="gru"):
    """Bytes the coordinate-wise synthesizer carries across windows (its own state, its last call, the
    pending pair) for an LSTM of ``layers`` x ``hidden`` at ``streams`` streams, after three windows
    through the real criterion (a small vocabulary: the carried values do not depend on it)."""
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf

    from fairseq_dni.carried_state import tree_leaves
    from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyConfig, DNICrossEntropyCriterion
    from fairseq_dni.data.stream_windows import StreamWindows
    from fairseq_dni.models.dni_lstm_lm import DNILSTMLMConfig
    from fairseq_dni.step import Backward, train_window
    from fairseq_dni.tasks.dni_language_modeling import DNILanguageModelingConfig, DNILanguageModelingTask

    dictionary = Dictionary()
    for i in range(50):
        dictionary.add_symbol(f"w{i}")
    task = DNILanguageModelingTask(DNILanguageModelingConfig(), dictionary)
    model = task.build_model(OmegaConf.structured(DNILSTMLMConfig(
        _name="dni_lstm_lm", decoder_embed_dim=embed, decoder_hidden_size=hidden, decoder_layers=layers,
        dropout=0.0)))
    criterion = DNICrossEntropyCriterion(task, DNICrossEntropyConfig(
        dni_synthesizer="coordinatewise", dni_synthesizer_cell=cell, sentence_avg=False))
    tokens = torch.randint(4, len(dictionary), (streams * 8 * 3,)).numpy()
    windows = StreamWindows(tokens, streams, 8, dictionary.pad(), dictionary.eos(), state_key="train")
    for i in range(3):
        train_window(model, criterion, windows.collater([windows[i]]), Backward(), mode="synthetic")
    carry = criterion.carried.peek("train")
    total = sum(t.numel() * t.element_size() for t in tree_leaves(carry))
    own = sum(t.numel() * t.element_size() for t in tree_leaves(carry.own_state))
    return total, own


def synthesizer_window(cell, streams, dim, compiled=False):
    """One window's synthesizer work, alone: the call at the window's end (noisy input, no autograd, new own
    state), the regression's re-evaluation of the previous call with autograd, its backward and the
    synthesizer's own (fused) Adam step; as ``dni_cross_entropy`` does it, without the LM. Returns a
    callable; timed against an LM update it estimates the ratio this cell's work alone leaves,
    t_LM / (t_LM + t_synthesizer)."""
    from fairseq_dni.synthesizers.coordinatewise import CoordinatewiseSynthesizer

    synth = CoordinatewiseSynthesizer(cell=cell).train()
    torch.nn.init.normal_(synth.decoder.weight, std=0.1)   # a trained-like last layer (zero-init at the start)
    adam = torch.optim.Adam(synth.parameters(), lr=1e-3, fused=True)
    forward = torch.compile(synth, dynamic=False) if compiled else synth
    state = {"own": synth.initial_own_state(torch.zeros(streams, dim)), "previous": None}

    def window():
        inputs = synth.perturb(torch.randn(streams, dim))
        with torch.no_grad():
            _, new_own = forward(inputs, None, state["own"])
        if state["previous"] is not None:
            prev_inputs, prev_own = state["previous"]
            prediction, _ = forward(prev_inputs, None, prev_own)
            (prediction - torch.randn_like(prediction)).pow(2).sum(-1).mean().backward()
            adam.step()
            adam.zero_grad()
        state["previous"], state["own"] = (inputs, state["own"]), new_own

    return window


def training_argv(args, flags, optimizer=()):
    """The fairseq-train arguments (after the program's name) of an arm of :func:`per_update_ratios`: the data,
    the arm's ``flags``, the benchmark's sizes, windows, Adam and clip, then ``optimizer`` (flags overriding)."""
    argv = [args.data_bin, *flags, "--decoder-embed-dim", args.embed_dim, "--decoder-hidden-size", args.hidden,
            "--decoder-layers", args.layers, "--batch-size", args.batch_size, "--tokens-per-sample", args.window,
            "--optimizer", "adam", "--lr", args.lr, "--clip-norm", args.clip, "--seed", args.seed, "--cpu",
            "--num-workers", "0", *optimizer]
    return [str(a) for a in argv]


def per_update_ratios(args, arms, optimizer, updates=120, warmup=10, alone=None):
    """CPU seconds per update of each arm, the arms' updates interleaved one by one in one process.

    Each arm is built by fairseq's own parser and ``Trainer`` from the same flags as its
    fairseq-train run, and steps with ``trainer.train_step`` (what fairseq-train calls; its
    per-interval logging is left out). Interleaving update by update exposes every arm to the same
    load, which on a shared machine moves the per-run medians by more than the differences measured.
    ``alone`` ({name: callable}) is timed in the same loop (e.g. :func:`synthesizer_window`).
    Returns {arm or name: CPU seconds per update}."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    trainers, batches = {}, {}
    for name, (_, flags) in arms.items():
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(),
                                                                         training_argv(args, flags, optimizer)))
        torch.manual_seed(args.seed)
        task = tasks.setup_task(cfg.task)
        task.load_dataset("train")
        trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
        epoch = task.get_batch_iterator(task.dataset("train"), max_sentences=args.batch_size).next_epoch_itr(shuffle=False)
        trainers[name], batches[name] = trainer, [next(epoch) for _ in range(warmup + updates)]
    steps = {name: (lambda i, t=trainer, name=name: t.train_step([batches[name][i]])) for name, trainer in trainers.items()}
    steps.update({name: (lambda i, fn=fn: fn()) for name, fn in (alone or {}).items()})
    seconds = {name: 0.0 for name in steps}
    for i in range(warmup + updates):
        for name, step in steps.items():
            start = time.process_time()
            step(i)
            if i >= warmup:
                seconds[name] += time.process_time() - start
    return {name: s / updates for name, s in seconds.items()}


def main():
    parser = benchmark_parser("dni_throughput", os.path.join(REPO, "runs", "quickstart", "data-bin"), extra=[
        (["--repeats"], dict(type=int, default=3, help="separate fairseq-train runs per arm (0: none, only the "
                             "one-process comparison, which a loaded machine disturbs far less)")),
        (["--interleaved-updates"], dict(type=int, default=120, help="timed updates of each arm in the "
                                         "one-process, update-by-update comparison")),
        (["--compiled"], dict(action="store_true", help="also time the QRNN synthesizer alone under torch.compile "
                              "(inductor; needs a C++ compiler, about a minute to compile)")),
        (["--arms"], dict(nargs="+", default=None, help="run only these arms (and real-tbptt); default: all"))])
    args = parse_benchmark_args(parser)

    base = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling",
            "--arch", "dni_lstm_lm", "--dropout", "0"]
    dni = base + ["--criterion", "dni_cross_entropy"]
    arms = {
        "real-tbptt": ("cross_entropy (no synthesizer)", base + ["--criterion", "cross_entropy"]),
        "real": ("dni_cross_entropy --dni-mode real (MLP)", dni + ["--dni-mode", "real"]),
        "synthetic": ("dni_cross_entropy --dni-mode synthetic (MLP)", dni + ["--dni-mode", "synthetic"]),
        "synthetic-coordinatewise": ("... --dni-synthesizer coordinatewise (GRU, 50 units)",
                                     dni + ["--dni-mode", "synthetic", "--dni-synthesizer", "coordinatewise"]),
        "synthetic-coordinatewise-qrnn": ("... --dni-synthesizer-cell qrnn (the paper's cell, 50 units)",
                                          dni + ["--dni-mode", "synthetic", "--dni-synthesizer", "coordinatewise",
                                                 "--dni-synthesizer-cell", "qrnn"]),
        "synthetic-scan": ("... --dni-synthesizer scan (the paper's --sgtype QRNN: one scan across the state, 50 units)",
                           dni + ["--dni-mode", "synthetic", "--dni-synthesizer", "scan"]),
    }
    if args.arms is not None:
        unknown = sorted(set(args.arms) - set(arms))
        if unknown:
            parser.exit(2, f"{parser.prog}: error: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(arms)}\n")
        arms = {name: arm for name, arm in arms.items() if name == "real-tbptt" or name in args.arms}
    optimizer = ["--optimizer", "alternating", "--base-optimizer", "adam", "--dni-lr", "1e-4"]
    names = list(arms)
    measured = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            measured[name].append(fairseq_wps(args, arms[name][1], name, after=optimizer))
    median = {name: statistics.median(v) for name, v in measured.items() if v}
    tbptt = median.get("real-tbptt")
    rows = [(name, arms[name][0], median[name],
             f"{median[name] / tbptt:.3f}x; " + " / ".join(f"{x:.0f}" for x in measured[name]))
            for name in names if name in median]
    dim = 2 * args.layers * args.hidden   # h and c of every layer
    alone = {f"{cell} synthesizer alone{' (torch.compile)' if compiled else ''}":
             synthesizer_window(cell, args.batch_size, dim, compiled)
             for cell, compiled in [("gru", False), ("qrnn", False)] + [("qrnn", True)] * args.compiled
             if f"synthetic-coordinatewise{'-qrnn' if cell == 'qrnn' else ''}" in arms}
    per_update = per_update_ratios(args, arms, optimizer, updates=args.interleaved_updates, alone=alone)
    rows += [(f"{name} (per update)", "same flags, updates interleaved one by one in one process",
              args.batch_size * args.window / per_update[name],
              f"{per_update['real-tbptt'] / per_update[name]:.3f}x; tokens per CPU second") for name in names]
    t_lm = per_update["real-tbptt"]
    ceilings = {name: t_lm / (t_lm + per_update[name]) for name in alone}
    rows += [(name, f"its per-window work on {args.batch_size} x {dim} coordinates, {per_update[name] * 1000:.1f} ms "
                    f"(real-tbptt's update: {t_lm * 1000:.1f} ms)", float("nan"),
              f"{ceilings[name]:.3f}x = t_tbptt / (t_tbptt + this), its own work alone") for name in alone]
    memory = {cell: carried_memory(cell=cell) for cell in ("gru", "qrnn")
              if f"synthetic-coordinatewise{'-qrnn' if cell == 'qrnn' else ''}" in arms}
    setting = (f"{args.layers}x{args.hidden} LSTM, embed {args.embed_dim}, B={args.batch_size}, T={args.window}, "
               f"Adam (--optimizer alternating), clip {args.clip}, "
               + (f"{args.repeats} interleaved repeats of {args.updates} timed updates after {args.warmup} (separate "
                  f"fairseq-train runs), " if args.repeats else "") +
               f"one process: {args.interleaved_updates} timed updates after 10; torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, {platform.machine()}")
    verdict = ", ".join(f"**{name}/real-tbptt = {median[name] / tbptt:.3f}**" for name in names[1:] if name in median)
    verdict += ("; " if median else "") + ("interleaved update by update in one process: " +
                ", ".join(f"**{name} {per_update['real-tbptt'] / per_update[name]:.3f}**" for name in names[1:]))
    verdict += ("" if not ceilings else "; what each cell's own work alone leaves (t_tbptt / (t_tbptt + t_cell)): " +
                ", ".join(f"{name} {c:.3f}" for name, c in ceilings.items()))
    verdict += ("" if not memory else ". Coordinate-wise synthesizer's carried values for dni_lstm_lm_wikitext103 (2x1024) at 32 streams: " +
                "; ".join(f"{cell.upper()} cell {total / 2 ** 20:.1f} MiB ({own / 2 ** 20:.1f} MiB its own state, the rest "
                          "its last call's input and state and the pending pair)" for cell, (total, own) in memory.items()))
    write_results(args.out, rows, setting, verdict,
                  tokens_header="tokens/s (median of repeats; per update: per CPU second)" if args.repeats else
                  "tokens per CPU second", note_header="ratio to real-tbptt" + ("; each repeat" if args.repeats else ""))


if __name__ == "__main__":
    main()
