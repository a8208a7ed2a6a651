"""AWD-LSTM's regularisers (Merity, Keskar & Socher 2018, arXiv 1708.02182), one small file each.

torch only (no fairseq import):

* :mod:`~fairseq_dni.modules.locked_dropout`: variational dropout, one mask per sequence and stream;
* :mod:`~fairseq_dni.modules.weight_drop`: DropConnect on an LSTM's hidden-to-hidden weights, run as
  one fused ``torch.lstm`` call per window;
* :mod:`~fairseq_dni.modules.embed_dropout`: dropout of whole word types from the embedding matrix.

Every mask is drawn from torch's global generator, which fairseq's trainer reseeds at every update
(``seed + num_updates``), so a resumed run draws the same masks.
"""
from fairseq_dni.modules.embed_dropout import embedding_dropout
from fairseq_dni.modules.locked_dropout import LockedDropout, check_rate
from fairseq_dni.modules.weight_drop import WeightDropLSTM

__all__ = ["LockedDropout", "WeightDropLSTM", "check_rate", "embedding_dropout"]
