"""How alike two checkpoints' hidden states are, layer by layer: linear CKA and SVCCA.

``python -m fairseq_dni.representations DATA_BIN A.pt B.pt [--user-dir fairseq_dni]`` reads one split
(``--gen-subset``, default valid) as ``--batch-size`` streams with the LSTM state carried across the
whole split, exactly as fairseq-eval-lm does, through both checkpoints, and prints one line per layer::

    layer 0 cka 0.9731 svcca 0.8120

What is compared: layer ``l``'s hidden state ``h_l`` after every token, the layer's output at that
time step (for the last layer, before output dropout and projection). It is read as the final state
of windows of one token (``--tokens-per-sample 1``), through the model's own forward and the task's
own stream windows, so nothing about the model's internals is re-implemented here and layers run
stacked (one ``torch.nn.LSTM``) or apart alike. The cell state ``c`` is not compared: it is the
layer's memory, not what the next layer or the output reads. Positions past a stream's end
(padding) are dropped; both checkpoints see the same tokens, so row ``i`` of A's matrix and row
``i`` of B's are the same time step of the same stream.

The measures, over ``n`` time steps (rows) and each layer's units (columns; the two checkpoints may
have layers of different widths):

* linear CKA (Kornblith et al. 2019, "Similarity of neural network representations revisited",
  eq. 5 with a linear kernel): with column-centred X (n x p), Y (n x q),
  ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, in [0, 1]; 1 for X against itself; unchanged
  by an orthogonal transform and an isotropic scaling of either side.
* SVCCA (Raghu et al. 2017, "SVCCA: Singular Vector Canonical Correlation Analysis..."): each side's
  column-centred matrix reduced to its top singular directions that keep ``keep`` (0.99) of its
  variance, then the mean of the canonical correlations between the two reduced subspaces, i.e. of
  the singular values of ``U_X^T U_Y`` (the reduced left singular vectors); in [0, 1], with the same
  invariances and 1 when one subspace contains the other.

Both are computed in float64.
"""
import argparse
import logging
import os
import sys
from typing import List, Sequence

import torch

from fairseq_dni.errors import DNIUserError

logger = logging.getLogger(__name__)


def _centred(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2 or x.size(0) < 2:
        raise DNIUserError(f"a representation is an (n >= 2 samples) x (units) matrix, got shape {tuple(x.shape)}")
    x = x.to(torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def _check_pair(x: torch.Tensor, y: torch.Tensor):
    if x.dim() != 2 or y.dim() != 2 or x.size(0) != y.size(0):
        raise DNIUserError(f"the two representations must have the same samples (rows): got {tuple(x.shape)} "
                           f"and {tuple(y.shape)}")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of X (n, p) and Y (n, q), rows the same samples (Kornblith et al. 2019, eq. 5 with a
    linear kernel, computed in feature space): ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on
    column-centred X, Y. In [0, 1]. A side with no variance is a DNIUserError."""
    _check_pair(x, y)
    x, y = _centred(x), _centred(y)
    xx, yy = torch.linalg.matrix_norm(x.T @ x), torch.linalg.matrix_norm(y.T @ y)
    if xx == 0 or yy == 0:
        raise DNIUserError("CKA is undefined for a representation with no variance (a constant matrix)")
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / (xx * yy))


def top_directions(x: torch.Tensor, keep: float = 0.99) -> torch.Tensor:
    """An orthonormal basis (n, k) of the top singular directions of column-centred X (n, p), the fewest
    that keep ``keep`` of its variance (sum of squared singular values); SVCCA's first step."""
    if not 0 < keep <= 1:
        raise DNIUserError(f"the variance kept must be in (0, 1], got {keep}")
    u, s, _ = torch.linalg.svd(_centred(x), full_matrices=False)
    variance = s ** 2
    if variance.sum() == 0:
        raise DNIUserError("SVCCA is undefined for a representation with no variance (a constant matrix)")
    kept = torch.cumsum(variance, 0) / variance.sum()
    k = int(torch.searchsorted(kept, torch.tensor(keep, dtype=kept.dtype) - 1e-12)) + 1
    return u[:, :min(k, len(s))]


def canonical_correlations(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99) -> torch.Tensor:
    """The canonical correlations (descending, min(k_X, k_Y) of them) between the SVD-reduced
    subspaces of X (n, p) and Y (n, q): the singular values of ``U_X^T U_Y`` (Bjorck & Golub 1973:
    the cosines of the principal angles between the two column spaces are the canonical correlations)."""
    _check_pair(x, y)
    return torch.linalg.svdvals(top_directions(x, keep).T @ top_directions(y, keep)).clamp(max=1.0)


def svcca(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99) -> float:
    """SVCCA similarity of X (n, p) and Y (n, q) (Raghu et al. 2017): the mean canonical correlation
    between their top singular subspaces (``keep`` of the variance each). In [0, 1]."""
    return float(canonical_correlations(x, y, keep).mean())


# ---- the hidden states of a checkpoint ---------------------------------------------------------------
def hidden_states(model, task, split: str, streams: int, max_steps: int = 0) -> List[torch.Tensor]:
    """Layer ``l``'s hidden state after every scored token of ``split``: a list over layers of (n, width_l)
    tensors, rows in (time step, stream) order. The split is read as ``streams`` streams of one-token
    windows, state carried from the first token on (as fairseq-eval-lm reads it); ``max_steps`` > 0
    stops after that many time steps per stream."""
    decoder = model.decoder
    saved = task.cfg.tokens_per_sample
    task.cfg.tokens_per_sample = 1
    try:
        batches = task.get_batch_iterator(task.dataset(split), max_sentences=streams).next_epoch_itr(shuffle=False)
    finally:
        task.cfg.tokens_per_sample = saved
    layers: List[List[torch.Tensor]] = [[] for _ in decoder.state_layout.layer_sizes]
    model.eval()
    with torch.no_grad():
        for step, sample in enumerate(batches):
            if max_steps and step >= max_steps:
                break
            _, extra = model(**sample["net_input"])
            scored = sample["target"][:, 0].ne(task.dictionary.pad())
            hs = decoder.state_layout.hiddens(extra["final_state"])
            for rows, h in zip(layers, hs):
                rows.append(h[scored].to(torch.float64))
    return [torch.cat(rows) for rows in layers]


def compare(paths: Sequence[str], data: str, split: str = "valid", streams: int = 10, max_steps: int = 0,
            keep: float = 0.99):
    """[(layer, CKA, SVCCA)] between the two checkpoints ``paths`` over ``split`` of ``data``."""
    from fairseq import checkpoint_utils

    if len(paths) != 2:
        raise DNIUserError(f"give two checkpoints, got {len(paths)}")
    for path in paths:
        if not os.path.isfile(path):
            raise DNIUserError(f"no checkpoint at {path}")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(list(paths), arg_overrides={"data": data})
    task.load_dataset(split)
    states = [hidden_states(model, task, split, streams, max_steps) for model in models]
    if len(states[0]) != len(states[1]):
        raise DNIUserError(f"{paths[0]} has {len(states[0])} layers, {paths[1]} has {len(states[1])}: "
                           "layers are compared one to one")
    return [(l, linear_cka(a, b), svcca(a, b, keep)) for l, (a, b) in enumerate(zip(*states))]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_dni.representations",
        description="Linear CKA and SVCCA between two checkpoints' per-layer hidden states over the same text, "
                    "state carried; one line per layer: 'layer L cka X svcca Y'.")
    parser.add_argument("data", help="binarized data folder (fairseq-preprocess --only-source output)")
    parser.add_argument("checkpoints", nargs=2, metavar="CHECKPOINT", help="the two checkpoints (.pt)")
    parser.add_argument("--user-dir", default=None, help="the plugin folder, as for fairseq (default: this package)")
    parser.add_argument("--gen-subset", default="valid", help="split to read (default: valid)")
    parser.add_argument("--batch-size", type=int, default=10, help="streams the split is cut into (default: 10)")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="time steps per stream to read, 0 for the whole split (default: 0)")
    parser.add_argument("--svcca-keep", type=float, default=0.99,
                        help="fraction of each side's variance its SVCCA subspace keeps (default: 0.99)")
    args = parser.parse_args(argv)
    if args.user_dir:
        from fairseq import utils

        utils.import_user_module(args)
    if args.batch_size < 1 or args.max_steps < 0:
        raise DNIUserError("--batch-size must be >= 1 and --max-steps >= 0")
    for layer, cka, similarity in compare(args.checkpoints, args.data, args.gen_subset, args.batch_size,
                                          args.max_steps, args.svcca_keep):
        print(f"layer {layer} cka {cka:.4f} svcca {similarity:.4f}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main()
