"""benchmarks/qrnn_lm.py compares like with like: its bare PyTorch QRNN loop, given the weights of the model
that its ``qrnn`` arm builds (fairseq's own parser, the benchmark's own flags, tiny sizes), computes the
same logits, window after window with the state carried, in training mode (so the arm has no dropout
left on). The parameter counts agree, so neither side has a part the other lacks (an untied output
layer, a projection)."""
import argparse

import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from benchmarks.dni_throughput import training_argv
from benchmarks.qrnn_lm import BareQRNNLM, fairseq_arms


def parameter_count(module):
    return sum(p.numel() for p in module.parameters())   # a tied weight counts once


def test_bare_loop_computes_the_fairseq_qrnn_arm(tmp_path):
    (tmp_path / "dict.txt").write_text("".join(f"w{i} {100 - i}\n" for i in range(40)))
    args = argparse.Namespace(data_bin=str(tmp_path), embed_dim=6, hidden=10, layers=3, batch_size=3, window=5,
                              lr=1e-3, clip=0.25, seed=1)
    argv = training_argv(args, fairseq_arms(args)["qrnn"][1])
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model).double().train()
    decoder = model.decoder
    bare = BareQRNNLM(len(task.dictionary), args.embed_dim, args.hidden, args.layers).double()
    assert parameter_count(bare) == parameter_count(model)
    assert [layer.window for layer in decoder.qrnns] == [layer.window for layer in bare.layers] == [2, 1, 1]
    with torch.no_grad():
        decoder.output_projection.bias.normal_()   # zeros at the start: make it count
        bare.embed.weight.copy_(decoder.embed_tokens.weight)
        bare.out.bias.copy_(decoder.output_projection.bias)
        for mine, theirs in zip(bare.layers, decoder.qrnns):
            mine.linear.weight.copy_(theirs.linear.weight)
            mine.linear.bias.copy_(theirs.linear.bias)

    tokens = torch.randint(4, len(task.dictionary), (args.batch_size, 3 * args.window))
    state = bare.zero_state(args.batch_size)
    for w, src in enumerate(tokens.split(args.window, dim=1)):   # the second and third windows start from the carry
        theirs, _ = model(src, state_key="train", reset_state=w == 0)
        mine, state = bare.logits(src, state)
        torch.testing.assert_close(mine.transpose(0, 1), theirs, rtol=0, atol=1e-12)
