"""A plain PyTorch LSTM LM that reads a fairseq-dni checkpoint's weights.

Independent of the plugin's model and task code: it rebuilds the network from
torch.nn parts, maps raw text through dict.txt itself, and scores the text as
one stream (the input at each position is the previous token; the first is
</s>), which is what fairseq-eval-lm must report with --batch-size 1.

It reads both weight layouts the plugin writes: one stacked LSTM (``lstm.weight_ih_l{k}``, ...)
or one single-layer LSTM per layer, of any widths (``lstms.{k}.weight_ih_l0``, ...: AWD-LSTM),
plus the optional projection ``project_out.weight`` before the output layer.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's Dictionary puts these first


def read_dict(path):
    symbols = list(SPECIALS)
    with open(path) as f:
        for line in f:
            symbols.append(line.rsplit(" ", 1)[0])
    return {s: i for i, s in enumerate(symbols)}


def encode(text_path, index):
    ids = []
    with open(text_path) as f:
        for line in f:
            ids.extend(index.get(w, index["<unk>"]) for w in line.split())
            ids.append(index["</s>"])
    return torch.tensor(ids)


def lstm_layers(w):
    """torch.nn.LSTMs holding the checkpoint's LSTM weights, to be run one after the other."""
    if "lstm.weight_ih_l0" in w:  # one stacked LSTM, equal widths
        layers = sum(1 for k in w if k.startswith("lstm.weight_ih_l"))
        hidden, embed_dim = w["lstm.weight_hh_l0"].shape[1], w["lstm.weight_ih_l0"].shape[1]
        lstm = nn.LSTM(embed_dim, hidden, num_layers=layers).double()
        lstm.load_state_dict({k[len("lstm."):]: v for k, v in w.items() if k.startswith("lstm.")})
        return [lstm]
    stack = []
    while f"lstms.{len(stack)}.weight_ih_l0" in w:  # one LSTM per layer, each its own width
        prefix = f"lstms.{len(stack)}."
        hidden, inputs = w[prefix + "weight_hh_l0"].shape[1], w[prefix + "weight_ih_l0"].shape[1]
        lstm = nn.LSTM(inputs, hidden).double()
        lstm.load_state_dict({k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)})
        stack.append(lstm)
    return stack


@torch.no_grad()
def perplexity(checkpoint_path, dict_path, text_path):
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    w = {k[len("decoder."):]: v.double() for k, v in state["model"].items() if torch.is_tensor(v)}
    tokens = encode(text_path, read_dict(dict_path))
    inputs = torch.cat([tokens.new_tensor([2]), tokens[:-1]])
    x = F.embedding(inputs, w["embed_tokens.weight"]).unsqueeze(1)  # (T, 1, E)
    for lstm in lstm_layers(w):
        x, _ = lstm(x)
    out = x.squeeze(1)
    if "project_out.weight" in w:
        out = F.linear(out, w["project_out.weight"])
    logits = F.linear(out, w["output_projection.weight"], w["output_projection.bias"])
    nll = F.cross_entropy(logits, tokens, reduction="sum").item()
    loss_base2 = nll / len(tokens) / math.log(2)
    return len(tokens), loss_base2, 2 ** loss_base2
