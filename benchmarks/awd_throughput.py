"""What AWD-LSTM's regularisers cost in training throughput, measured in one run.

Arms (stock fairseq-train, --arch dni_awd_lstm_lm_small, --criterion lm_cross_entropy, same data,
Adam, clip and updates; tokens/s read from fairseq's own wps meter, see throughput.py):

  awd     the architecture's regularisers: weight drop 0.25, locked dropouts 0.2 / 0.125 / 0.2,
          embedding dropout 0.05, and --alpha 2 --beta 1 (AR, TAR)
  plain   the same model with every rate and weight 0 (``OFF``; the AWD study's "off" arm, studies/awd_regularizers)

Both arms run the layers apart (one single-layer LSTM per layer, as locked dropout between layers
needs), so the difference is the options alone. This machine's throughput drifts between identical
runs, so the arms run interleaved ``--repeats`` times (rotating order) and each arm's median is used.

Then the fused-kernel check: one training window (forward and backward) of dni_awd_lstm_lm_small with
weight drop on, under torch.profiler: the number of ``aten::lstm`` calls (one per layer if weight drop
keeps the fused op), of oneDNN ``aten::mkldnn_rnn_layer`` kernels, and of any per-time-step cell op
(``aten::lstm_cell``, ``_thnn_fused_lstm_cell``). Writes benchmarks/results/<out>.{md,csv}.

    python -m benchmarks.awd_throughput --data-bin runs/awd_regularizers/data-bin   # PTB binarized
"""

import os
import platform
import statistics

import torch

from benchmarks.throughput import HERE, REPO, benchmark_parser, fairseq_wps, parse_benchmark_args, write_results

# every regulariser's rate and weight set to 0 (the AWD study's "off" arm: studies/awd_regularizers/run.py)
OFF = ["--dropout", "0", "--decoder-dropout-in", "0", "--decoder-hidden-dropout", "0", "--decoder-dropout-out", "0",
       "--decoder-embed-dropout", "0", "--weight-drop", "0", "--alpha", "0", "--beta", "0"]


def fused_kernel_counts(window=35, streams=20, vocab=10000):
    """Op counts of one training window (forward + backward) of dni_awd_lstm_lm_small, weight drop on."""
    from argparse import Namespace

    from fairseq.data import Dictionary
    from torch.profiler import profile

    from fairseq_dni.models.dni_lstm_lm import DNILSTMLanguageModel, DNILSTMLMConfig, dni_awd_lstm_lm_small
    from fairseq_dni.tasks.dni_language_modeling import DNILanguageModelingConfig, DNILanguageModelingTask

    dictionary = Dictionary()
    for i in range(vocab - len(dictionary)):
        dictionary.add_symbol(f"w{i}")
    task = DNILanguageModelingTask(DNILanguageModelingConfig(), dictionary)
    args = Namespace(**{name: None for name in DNILSTMLMConfig.__dataclass_fields__})
    dni_awd_lstm_lm_small(args)
    cfg = DNILSTMLMConfig(**{k: v for k, v in vars(args).items() if v is not None and k != "_name"})
    model = DNILSTMLanguageModel.build_model(cfg, task).train()
    tokens = torch.randint(4, len(dictionary), (streams, window))
    with profile() as prof:
        logits, _ = model(tokens, state_key="train", reset_state=True)
        logits.float().logsumexp(-1).mean().backward()
    counts = {e.key: e.count for e in prof.key_averages()}
    cells = {k: v for k, v in counts.items() if "cell" in k}
    return {"weight_drop": cfg.weight_drop, "layers": cfg.decoder_layers, "aten::lstm": counts.get("aten::lstm", 0),
            "aten::mkldnn_rnn_layer": counts.get("aten::mkldnn_rnn_layer", 0), "cell ops": sum(cells.values())}


def main():
    parser = benchmark_parser("awd_throughput", os.path.join(REPO, "runs", "awd_regularizers", "data-bin"),
                              embed_dim=128, hidden=256, layers=3, updates=100,   # dni_awd_lstm_lm_small's
                              extra=[(["--repeats"], dict(type=int, default=3))])
    args = parse_benchmark_args(parser)

    base = ["--user-dir", os.path.join(REPO, "fairseq_dni"), "--task", "dni_language_modeling",
            "--arch", "dni_awd_lstm_lm_small", "--criterion", "lm_cross_entropy"]
    arms = {
        "awd": ("weight drop, locked + embedding dropout, AR/TAR (the arch's defaults, --alpha 2 --beta 1)",
                base + ["--alpha", "2", "--beta", "1"]),
        "plain": ("the same model, every rate and weight 0", base + OFF),
    }
    names = list(arms)
    measured = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            measured[name].append(fairseq_wps(args, arms[name][1], name))
    median = {name: statistics.median(v) for name, v in measured.items()}
    ratio = median["awd"] / median["plain"]
    rows = [(name, arms[name][0], median[name],
             f"{median[name] / median['plain']:.3f}x; " + " / ".join(f"{x:.0f}" for x in measured[name]))
            for name in names]
    fused = fused_kernel_counts(args.window, args.batch_size)
    setting = (f"dni_awd_lstm_lm_small ({args.layers} layers, {args.hidden}/{args.hidden}/{args.embed_dim}, tied "
               f"{args.embed_dim}-d embedding), B={args.batch_size}, T={args.window}, Adam {args.lr}, clip {args.clip}, "
               f"{args.repeats} interleaved repeats, {args.updates} timed updates after {args.warmup}; "
               f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    verdict = (f"**awd/plain = {ratio:.3f}** (the options cost {100 * (1 - ratio):.1f}% tokens/s; target: at most 15%). "
               f"Fused-kernel check (torch.profiler, one training window of {args.batch_size} x {args.window} tokens, "
               f"forward and backward, weight drop {fused['weight_drop']}, {fused['layers']} layers): "
               f"aten::lstm x {fused['aten::lstm']}, aten::mkldnn_rnn_layer x {fused['aten::mkldnn_rnn_layer']}, "
               f"per-time-step cell ops x {fused['cell ops']}.")
    write_results(args.out, rows, setting, verdict, tokens_header="tokens/s (median)",
                  note_header="ratio to plain; each repeat")


if __name__ == "__main__":
    main()
