"""AWD-LSTM's regularisers (Merity, Keskar & Socher 2018, arXiv 1708.02182), one small file each, and
the QRNN's pieces.

torch only (no fairseq import):

* :mod:`~fairseq_dni.modules.locked_dropout`: variational dropout, one mask per sequence and stream;
* :mod:`~fairseq_dni.modules.weight_drop`: DropConnect on an LSTM's hidden-to-hidden weights, run as
  one fused ``torch.lstm`` call per window;
* :mod:`~fairseq_dni.modules.embed_dropout`: dropout of whole word types from the embedding matrix;
* :mod:`~fairseq_dni.modules.forget_mult`: the QRNN's forget-mult recurrence as a scan;
* :mod:`~fairseq_dni.modules.qrnn`: a QRNN layer (one matmul per window for its gates, then the scan).

Every mask is drawn from torch's global generator, which fairseq's trainer reseeds at every update
(``seed + num_updates``), so a resumed run draws the same masks.
"""
from fairseq_dni.modules.embed_dropout import embedding_dropout
from fairseq_dni.modules.locked_dropout import LockedDropout, check_rate
from fairseq_dni.modules.qrnn import QRNNLayer
from fairseq_dni.modules.weight_drop import WeightDropLSTM, weight_dropout

__all__ = ["LockedDropout", "QRNNLayer", "WeightDropLSTM", "check_rate", "embedding_dropout", "weight_dropout"]
