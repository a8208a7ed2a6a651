"""Parameter counts of the AWD-shaped models for PTB's and WikiText-2's vocabularies (docs/usage.md).

    python tools/count_parameters.py

Each dictionary has the size of the corpus' binarized one, what fairseq-train builds the model over
and prints ("num. shared model params"): dict.txt's entries plus fairseq's 4 specials (<s>, <pad>,
</s>, <unk>), dict.txt padded by fairseq-preprocess to a multiple of 8 with madeupword entries (PTB:
9,998 types + 6 padding + 4 = 10,008; WikiText-2: 33,276 + 4 = 33,280; the corpora's own <unk> is
fairseq's). Tied weights are counted once. Builds each decoder as its named architecture sets it
(no data, no training).
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

CORPORA = (("PTB", 10008), ("WikiText-2", 33280))   # binarized dictionary sizes, specials included
MODELS = (("dni_awd_qrnn_lm", dni_awd_qrnn_lm, DNIQRNNLMConfig, DNIQRNNDecoder),
          ("dni_awd_qrnn_lm_small", dni_awd_qrnn_lm_small, DNIQRNNLMConfig, DNIQRNNDecoder),
          ("dni_awd_lstm_lm", dni_awd_lstm_lm, DNILSTMLMConfig, DNILSTMDecoder))


def count(arch, config, decoder, size):
    """(dictionary size, parameters) of ``arch`` over a dictionary of ``size`` entries, specials included."""
    dictionary = Dictionary()
    for i in range(size - len(dictionary)):
        dictionary.add_symbol(f"w{i}")
    args = argparse.Namespace(**{name: None for name in config.__dataclass_fields__})
    arch(args)
    cfg = config(**{k: v for k, v in vars(args).items() if v is not None and k != "_name"})
    return len(dictionary), sum(p.numel() for p in decoder(cfg, dictionary).parameters())


if __name__ == "__main__":
    for corpus, entries in CORPORA:
        for name, arch, config, decoder in MODELS:
            size, parameters = count(arch, config, decoder, entries)
            print(f"{corpus:10s} V={size:6d} {name:22s} {parameters:,} parameters")
