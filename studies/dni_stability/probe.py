"""How predictable is the true gradient at a window boundary from the carried state?

The synthesizer regresses, per stream, the gradient that reaches the start of the next
window. If that gradient is mostly noise (it depends on which tokens come next, which the
state does not know), no synthesizer can reach a high cosine with it. This probe measures
the ceiling: it trains the 2x200 PTB LSTM in real mode (the criterion's own code, Adam 1e-3,
20 streams x 35 tokens) for ``--windows`` windows, collects (state, target) pairs from the
last ``--collect`` windows, and fits ridge regressions on a random 80% of them; the held-out
mean cosine is the best a *linear* synthesizer could do there. Training-set cosines are shown
too: the gap is overfitting to noise.

    python -m studies.dni_stability.probe --data-bin runs/ptb-bin --out studies/dni_stability/probe.md
"""

import argparse
import os

import numpy as np
import torch
from fairseq.data import Dictionary, data_utils
from omegaconf import OmegaConf

from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyConfig, DNICrossEntropyCriterion
from fairseq_dni.data.stream_windows import StreamWindows
from fairseq_dni.data.token_stream import flat_tokens
from fairseq_dni.models.dni_lstm_lm import DNILSTMLMConfig
from fairseq_dni.step import Backward, train_window
from fairseq_dni.synthesizers.mlp import SliceNorm
from fairseq_dni.tasks.dni_language_modeling import DNILanguageModelingConfig, DNILanguageModelingTask
from studies.common import REPO

HERE = os.path.dirname(os.path.abspath(__file__))


def ridge_cos(features, targets, lam, train, test):
    f = np.concatenate([features, np.ones((len(features), 1))], 1)
    w = np.linalg.solve(f[train].T @ f[train] + lam * np.eye(f.shape[1]), f[train].T @ targets[train])

    def cos(idx):
        p, t = f[idx] @ w, targets[idx]
        return float(((p * t).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1) + 1e-12)).mean())

    return cos(train), cos(test)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-bin", default=os.path.join(REPO, "runs", "ptb-bin"))
    parser.add_argument("--windows", type=int, default=600)
    parser.add_argument("--collect", type=int, default=250)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(HERE, "probe.md"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    dictionary = Dictionary.load(os.path.join(args.data_bin, "dict.txt"))
    indexed = data_utils.load_indexed_dataset(os.path.join(args.data_bin, "train"), dictionary)
    tokens = flat_tokens(indexed)  # a view into indexed's memory map: keep indexed alive
    task = DNILanguageModelingTask(DNILanguageModelingConfig(), dictionary)
    model = task.build_model(OmegaConf.structured(DNILSTMLMConfig(  # the task learns the model's spec
        _name="dni_lstm_lm", decoder_embed_dim=200, decoder_hidden_size=200, decoder_layers=2, dropout=0.0))).train()
    normed = SliceNorm(task.model_spec.layout.slices)  # the MLP synthesizer's own input normalisation
    criterion = DNICrossEntropyCriterion(task, DNICrossEntropyConfig(
        sentence_avg=False, dni_condition_on_next_input=True)).train()
    optimizer = torch.optim.Adam(list(model.parameters()) + list(criterion.parameters()), lr=1e-3)
    windows = StreamWindows(tokens, 20, 35, dictionary.pad(), dictionary.eos(), state_key="train")

    states, targets, conditions, labels, losses = [], [], [], [], []
    for i in range(args.windows):
        sample = windows.collater([windows[i]])
        optimizer.zero_grad()
        loss, sample_size, _ = train_window(model, criterion, sample, Backward(), mode="real")
        for p in list(model.parameters()) + list(criterion.parameters()):
            if p.grad is not None:
                p.grad /= sample_size  # what fairseq's trainer does
        optimizer.step()
        pending = criterion.pending()
        if i >= args.windows - args.collect and pending is not None:
            states.append(normed(pending.call.inputs).numpy().copy())
            targets.append(pending.target.numpy().copy())
            conditions.append(pending.call.condition.numpy().copy())
            # the first target of this window (the label cDNI-style conditioning would add):
            # its row of the LM's output layer, the direction the first step's loss pushes h in
            labels.append(model.decoder.output_projection.weight[sample["target"][:, 0]].detach().numpy().copy())
            losses.append(float(loss.detach()) / sample_size / np.log(2))

    x, y, c, l = (np.concatenate(a) for a in (states, targets, conditions, labels))
    order = np.random.RandomState(0).permutation(len(x))
    train, test = order[: int(0.8 * len(x))], order[int(0.8 * len(x)):]
    mean_dir = y[train].mean(0)
    mean_cos = float(((y[test] @ mean_dir) / (np.linalg.norm(y[test], axis=1) * np.linalg.norm(mean_dir))).mean())
    rows = []
    for lam in (1.0, 10.0, 100.0):
        rows.append((f"state, ridge {lam:g}", *ridge_cos(x, y, lam, train, test)))
        rows.append((f"state + next input, ridge {lam:g}",
                     *ridge_cos(np.concatenate([x, c], 1), y, lam, train, test)))
        rows.append((f"state + next input + next target's output row, ridge {lam:g}",
                     *ridge_cos(np.concatenate([x, c, l], 1), y, lam, train, test)))
    lines = [
        f"Probe (`python -m studies.dni_stability.probe`): 2x200 LSTM trained {args.windows} windows in real mode "
        f"(train loss {np.mean(losses):.2f} bits over the collected windows), {len(x)} (state, target) pairs "
        f"from the last {args.collect} windows, random 80/20 split; mean target norm "
        f"{np.linalg.norm(y, axis=1).mean():.3f}.",
        "",
        "| predictor | train cos | held-out cos |",
        "|---|---|---|",
        f"| constant (mean target) | - | {mean_cos:.4f} |",
    ]
    lines += [f"| {name} | {tr:.4f} | {te:.4f} |" for name, tr, te in rows]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
