"""Read fairseq logs back (shared by the scripts in examples/).

``records(path)``: the json records fairseq-train prints with ``--log-format json``, in order:
one per log interval (``train_inner``), per validation (``valid``) and per epoch (``train``).
Values are as fairseq writes them (numbers as strings, e.g. ``"num_updates": "250"``).
``eval_perplexity(path)``: the perplexity fairseq-eval-lm prints.
"""
import json
import re

RECORD = re.compile(r"\| (train_inner|valid|train) \| (\{.*\})")


def records(path):
    """{'train_inner': [...], 'valid': [...], 'train': [...]}: the json records of a fairseq-train log."""
    found = {"train_inner": [], "valid": [], "train": []}
    with open(path) as f:
        for line in f:
            m = RECORD.search(line)
            if m:
                found[m.group(1)].append(json.loads(m.group(2)))
    return found


def eval_perplexity(path):
    """The test perplexity of a fairseq-eval-lm log (its 'Loss (base 2): ..., Perplexity: ...' line)."""
    with open(path) as f:
        m = re.search(r"Loss \(base 2\): [0-9.]+, Perplexity: ([0-9.]+)", f.read())
    if not m:
        raise ValueError(f"{path}: no 'Perplexity:' line (did fairseq-eval-lm finish?)")
    return float(m.group(1))
