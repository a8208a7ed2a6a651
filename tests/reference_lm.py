"""A plain PyTorch LSTM LM that reads a fairseq-dni checkpoint's weights.

Independent of the plugin's model and task code: it rebuilds the network from
torch.nn parts, maps raw text through dict.txt itself, and scores the text as
one stream (the input at each position is the previous token; the first is
</s>), which is what fairseq-eval-lm must report with --batch-size 1.
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


@torch.no_grad()
def perplexity(checkpoint_path, dict_path, text_path):
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    w = {k[len("decoder."):]: v.double() for k, v in state["model"].items() if torch.is_tensor(v)}
    layers = sum(1 for k in w if k.startswith("lstm.weight_ih_l"))
    vocab, embed_dim = w["embed_tokens.weight"].shape
    hidden = w["lstm.weight_hh_l0"].shape[1]
    lstm = nn.LSTM(embed_dim, hidden, num_layers=layers).double()
    lstm.load_state_dict({k[len("lstm."):]: v for k, v in w.items() if k.startswith("lstm.")})
    tokens = encode(text_path, read_dict(dict_path))
    inputs = torch.cat([tokens.new_tensor([2]), tokens[:-1]])
    x = F.embedding(inputs, w["embed_tokens.weight"]).unsqueeze(1)  # (T, 1, E)
    out, _ = lstm(x)
    logits = F.linear(out.squeeze(1), w["output_projection.weight"], w["output_projection.bias"])
    nll = F.cross_entropy(logits, tokens, reduction="sum").item()
    loss_base2 = nll / len(tokens) / math.log(2)
    return len(tokens), loss_base2, 2 ** loss_base2
