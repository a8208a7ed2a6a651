"""Parameter counts of the AWD-shaped models for PTB's and WikiText-2's vocabularies (docs/usage.md).

    python tools/count_parameters.py

A dictionary of N corpus types plus fairseq's 4 specials (<s>, <pad>, </s>, <unk>); tied weights are
counted once. Builds each decoder as its named architecture sets it (no data, no training).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the plugin, from a clone

from fairseq.data import Dictionary  # noqa: E402

from fairseq_dni.models.dni_lstm_lm import DNILSTMDecoder, DNILSTMLMConfig, dni_awd_lstm_lm  # noqa: E402
from fairseq_dni.models.dni_qrnn_lm import (  # noqa: E402
    DNIQRNNDecoder,
    DNIQRNNLMConfig,
    dni_awd_qrnn_lm,
    dni_awd_qrnn_lm_small,
)

CORPORA = (("PTB", 10000), ("WikiText-2", 33278))
MODELS = (("dni_awd_qrnn_lm", dni_awd_qrnn_lm, DNIQRNNLMConfig, DNIQRNNDecoder),
          ("dni_awd_qrnn_lm_small", dni_awd_qrnn_lm_small, DNIQRNNLMConfig, DNIQRNNDecoder),
          ("dni_awd_lstm_lm", dni_awd_lstm_lm, DNILSTMLMConfig, DNILSTMDecoder))


def count(arch, config, decoder, types):
    """(dictionary size, parameters) of ``arch`` over ``types`` corpus types."""
    dictionary = Dictionary()
    for i in range(types):
        dictionary.add_symbol(f"w{i}")
    args = argparse.Namespace(**{name: None for name in config.__dataclass_fields__})
    arch(args)
    cfg = config(**{k: v for k, v in vars(args).items() if v is not None and k != "_name"})
    return len(dictionary), sum(p.numel() for p in decoder(cfg, dictionary).parameters())


if __name__ == "__main__":
    for corpus, types in CORPORA:
        for name, arch, config, decoder in MODELS:
            size, parameters = count(arch, config, decoder, types)
            print(f"{corpus:10s} V={size:6d} {name:22s} {parameters:,} parameters")
