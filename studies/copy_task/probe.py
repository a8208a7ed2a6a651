"""How much of the copy task's boundary gradient can a synthesizer predict from what it sees?

At a window boundary of the copy task (copy length 2, window 2, the runner's LSTM at its
initialisation, where training starts at chance), collect per stream the carried state ``s``
(h and c, D = 128) and the true gradient ``g`` that arrives at it from the next window's scored
loss (the regression target without its bootstrapped term, which is zero while the synthesizer
predicts zero). Then fit, on half the streams, and score on the other half, as
``dni_rel_loss`` = sum (g - prediction)^2 / sum g^2 (1: no better than predicting zero):

* ``full-state linear``: a ridge regression of g on the whole s (what an MLP can at least do);
* ``symbol held (oracle)``: the mean g given the symbol to copy (what the state holds);
* ``coordinate-wise, shared``: g_j as one function of s_j alone, the same for every coordinate j
  (50 quantile bins, pooled over j): what the coordinate-wise synthesizer can do without using its
  own history; ``... with input noise``: the same fed s_j times N(1, 0.5), as it is in training;
* ``coordinate-wise, one function per coordinate``: an upper bound for a synthesizer that could
  tell the coordinates apart (the coordinate-wise one could only through its own history);
* ``causal scan, linear``: g_k as a ridge regression on s_0..s_k, the state's coordinates up to k in
  the seed paper's order (h, then c): the best linear function of what a causal scan over one
  stream's state has read when it predicts coordinate k (the scan synthesizer also reads the
  previous streams, which hold nothing about this one);
* ``mlp synthesizer`` / ``coordinatewise synthesizer`` / ``scan synthesizer``: the synthesizers
  themselves (``fairseq_dni.synthesizers``, their defaults; the scan one with the paper's
  initialisation, as the copy task's ``dni-scan`` arm), trained on these fixed pairs with Adam for
  2,000 steps of 32 streams (input noise as in training; the coordinate-wise and scan ones from a
  fresh own state at every step and at scoring).

    python -m studies.copy_task.probe [--streams 4096] [--seeds 1,2,3]
"""
import argparse
import os

import numpy as np
import torch



def build(seed, symbols=8, hidden=64):
    from fairseq.data import Dictionary

    from fairseq_dni.models.dni_lstm_lm import DNILSTMLanguageModel, DNILSTMLMConfig
    from fairseq_dni.tasks.dni_language_modeling import DNILanguageModelingConfig, DNILanguageModelingTask

    dictionary = Dictionary()
    for name in [f"x{k}" for k in range(symbols)] + ["go"] + [f"y{k}" for k in range(symbols)]:
        dictionary.add_symbol(name)
    torch.manual_seed(seed)
    task = DNILanguageModelingTask(DNILanguageModelingConfig(), dictionary)
    model = DNILSTMLanguageModel.build_model(DNILSTMLMConfig(
        decoder_embed_dim=hidden, decoder_hidden_size=hidden, decoder_out_embed_dim=hidden, decoder_layers=1,
        dropout=0.0), task)
    return model, dictionary


def boundary_pairs(model, dictionary, streams, rng, length=2, symbols=8, before=3):
    """(s, g, held symbol) at the boundary after the first window of a sequence (it has just read x0),
    window 2, after ``before`` whole sequences read with the state carried."""
    from studies.copy_task import run as copy_task

    seq = copy_task.sequence_length(length)
    lines = [[copy_task.sequences(1, length, symbols, seed=int(rng.integers(1 << 30)))[0].split() + ["</s>"]
              for _ in range(before + 1)] for _ in range(streams)]
    tokens = torch.tensor([[dictionary.index(w) if w != "</s>" else dictionary.eos() for line in ls for w in line]
                           for ls in lines])
    prev = torch.cat([torch.full((streams, 1), dictionary.eos()), tokens[:, :-1]], dim=1)
    cut = before * seq + 2  # the first window of the last sequence ends here
    layout = model.decoder.model_spec().layout
    with torch.no_grad():
        _, extra = model(prev[:, :cut])
    from fairseq_dni.carried_state import tree_map

    start = tree_map(lambda t: t.detach().requires_grad_(True), extra["final_state"])
    out, _ = model(prev[:, cut:cut + 2], start_state=start)
    y0 = tokens[:, cut + 1]  # the window's targets: go (unscored), y0 (scored)
    loss = -torch.log_softmax(out[:, 1], -1).gather(-1, y0[:, None]).sum()
    from fairseq_dni.carried_state import tree_leaves, tree_replace_leaves

    grads = tree_replace_leaves(start, torch.autograd.grad(loss, tree_leaves(start)))
    held = np.array([int(dictionary[t][1:]) for t in tokens[:, cut - 2].tolist()])  # x0
    return (layout.flatten(tree_map(lambda t: t.detach(), start)).numpy().astype(np.float64),
            layout.flatten(grads).numpy().astype(np.float64), held)


def rel(pred, g):
    return float(((g - pred) ** 2).sum() / (g ** 2).sum())


def binned(x_fit, y_fit, x_eval, bins=50):
    edges = np.quantile(x_fit, np.linspace(0, 1, bins + 1)[1:-1])
    fit_idx, eval_idx = np.searchsorted(edges, x_fit), np.searchsorted(edges, x_eval)
    sums, counts = np.bincount(fit_idx, y_fit, bins), np.bincount(fit_idx, minlength=bins)
    return (sums / np.maximum(counts, 1))[eval_idx]


def probe(seed, streams):
    model, dictionary = build(seed)
    rng = np.random.default_rng(seed)
    s, g, held = boundary_pairs(model, dictionary, streams, rng)
    half = streams // 2
    (s_a, s_b), (g_a, g_b), (k_a, k_b) = (s[:half], s[half:]), (g[:half], g[half:]), (held[:half], held[half:])
    out = {}
    xa, xb = np.c_[s_a, np.ones(half)], np.c_[s_b, np.ones(streams - half)]
    w = np.linalg.solve(xa.T @ xa + 1e-3 * np.eye(xa.shape[1]), xa.T @ g_a)
    out["full-state linear"] = rel(xb @ w, g_b)
    means = np.stack([g_a[k_a == k].mean(0) for k in range(8)])
    out["symbol held (oracle)"] = rel(means[k_b], g_b)
    out["coordinate-wise, shared"] = rel(binned(s_a.ravel(), g_a.ravel(), s_b.ravel()).reshape(g_b.shape), g_b)
    noise = lambda x: x * rng.normal(1.0, 0.5, size=x.shape)  # noqa: E731
    out["coordinate-wise, shared, with input noise"] = rel(
        binned(noise(s_a).ravel(), g_a.ravel(), noise(s_b).ravel()).reshape(g_b.shape), g_b)
    per = np.stack([binned(s_a[:, j], g_a[:, j], s_b[:, j], bins=20) for j in range(s.shape[1])], axis=1)
    out["coordinate-wise, one function per coordinate"] = rel(per, g_b)
    layout = model.decoder.model_spec().layout
    from fairseq_dni.synthesizers.scan import paper_order

    order = paper_order(layout.layer_sizes).numpy()
    causal = np.zeros_like(g_b)
    for k in range(s.shape[1]):  # coordinate k (paper's order) from coordinates 0..k of its own stream
        seen = order[:k + 1]
        xa_k, xb_k = np.c_[s_a[:, seen], np.ones(half)], np.c_[s_b[:, seen], np.ones(streams - half)]
        w_k = np.linalg.solve(xa_k.T @ xa_k + 1e-3 * np.eye(xa_k.shape[1]), xa_k.T @ g_a[:, order[k]])
        causal[:, order[k]] = xb_k @ w_k
    out["causal scan, linear (g_k on s_0..s_k, paper's order)"] = rel(causal, g_b)
    for kind, lr, init in (("mlp", 1e-4, None), ("coordinatewise", 1e-3, None), ("scan", 1e-3, "paper")):
        out[f"{kind} synthesizer, Adam {lr:g}, 2000 steps"] = fit_synthesizer(kind, lr, layout, s_a, g_a, s_b, g_b,
                                                                               init=init)
    return out


def fit_synthesizer(kind, lr, layout, s_a, g_a, s_b, g_b, steps=2000, batch=32, init=None):
    from fairseq_dni.synthesizers import build_synthesizer

    torch.manual_seed(0)
    synthesizer = build_synthesizer(kind, layout, init=init)
    optimizer = torch.optim.Adam(synthesizer.parameters(), lr=lr)
    s_a, g_a = torch.tensor(s_a, dtype=torch.float32), torch.tensor(g_a, dtype=torch.float32)
    for _ in range(steps):
        idx = torch.randint(0, len(s_a), (batch,))
        prediction, _ = synthesizer(synthesizer.perturb(s_a[idx]), None, None)
        loss = (prediction - g_a[idx]).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        prediction, _ = synthesizer.eval()(torch.tensor(s_b, dtype=torch.float32), None, None)
    return rel(prediction.double().numpy(), g_b)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=4096)
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(x) for x in args.seeds.split(",")]
    results = [probe(seed, args.streams) for seed in seeds]
    print(f"| predictor (fit on {args.streams // 2} streams, scored on the rest) | "
          + " | ".join(f"rel, seed {s}" for s in seeds) + " |")
    print("|---|" + "---|" * len(seeds))
    for name in results[0]:
        print(f"| {name} | " + " | ".join(f"{r[name]:.3f}" for r in results) + " |")


if __name__ == "__main__":
    main()
