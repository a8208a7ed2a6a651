"""The QRNN language model (``--arch dni_qrnn_lm``, fairseq_dni/modules/qrnn.py): the layer against a loop
over time steps written here, the whole state carried (two windows equal one; eval-lm's loss does not depend
on the window; the hub equals eval-lm), DNI on its cell states (the oracle equals full BPTT), stock
fairseq-train with every synthesizer and AWD's regularisers, and a stopped run resumed bitwise."""
import dataclasses
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers import (
    AWD_VOCAB,
    USER_DIR,
    assert_same_weights,
    awd_dictionary,
    awd_windows,
    fairseq,
    launch_ranks,
    run_window,
    train_inner,
)
from test_eval_lm import count_tokens, eval_lm
from fairseq_dni.carried_state import QRNNStateLayout
from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyConfig, DNICrossEntropyCriterion
from fairseq_dni.models.dni_qrnn_lm import DNIQRNNLMConfig
from fairseq_dni.modules.qrnn import QRNNLayer
from fairseq_dni.tasks.dni_language_modeling import DNILanguageModelingConfig, DNILanguageModelingTask


# ---- the layer against a sequential reference ---------------------------------------------------------
def reference_layer(x, weight, bias, c0, previous, window, zoneout_scale=1.0):
    """torchqrnn's QRNNLayer, one time step at a time: the gates of [x_t, x_{t-1}] (window 2) or x_t,
    z = tanh, f = sigmoid (times the eval zoneout scale), o = sigmoid, c_t = f z + (1 - f) c_{t-1}, h = o c."""
    hidden = c0.size(-1)
    c, hs = c0, []
    for t in range(x.size(0)):
        before = (previous if t == 0 else x[t - 1]) if window == 2 else None
        source = x[t] if window == 1 else torch.cat([x[t], before], dim=-1)
        gates = source @ weight.t() + bias
        z = torch.tanh(gates[:, :hidden])
        f = torch.sigmoid(gates[:, hidden:2 * hidden]) * zoneout_scale
        o = torch.sigmoid(gates[:, 2 * hidden:])
        c = f * z + (1 - f) * c
        hs.append(o * c)
    return torch.stack(hs), c


@pytest.mark.parametrize("window,zoneout", [(1, 0.0), (2, 0.0), (2, 0.25)])
def test_layer_equals_a_sequential_reference_values_and_gradients(window, zoneout):
    """float64, T = 7, B = 3, 5 -> 4 units; window 2 from a carried previous input. Gradients with respect
    to the input, the weights, the bias, c0 and the previous input. Zoneout in eval mode scales f."""
    torch.manual_seed(0)
    layer = QRNNLayer(5, 4, window=window, zoneout=zoneout).double().eval()
    x = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    previous = torch.randn(3, 5, dtype=torch.float64, requires_grad=True) if window == 2 else None
    h, c_last = layer(x, c0, previous)
    probe_h, probe_c = torch.randn_like(h), torch.randn_like(c_last)
    inputs = [x, c0, layer.linear.weight, layer.linear.bias] + ([previous] if window == 2 else [])
    got = torch.autograd.grad((h * probe_h).sum() + (c_last * probe_c).sum(), inputs)
    ref_h, ref_c = reference_layer(x, layer.linear.weight, layer.linear.bias, c0, previous, window, 1 - zoneout)
    want = torch.autograd.grad((ref_h * probe_h).sum() + (ref_c * probe_c).sum(), inputs)
    torch.testing.assert_close(h, ref_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_last, ref_c, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if window == 2:  # the carried previous input matters: zeros instead give another first step
        assert not torch.allclose(layer(x, c0, None)[0][0], h[0])


def test_weight_drop_drops_the_gate_matrix_once_per_window():
    """In training, weight drop 0.5 equals the reference run on F.dropout of the whole gate matrix, one mask
    drawn per call (the same at every time step); in eval, the plain matrix."""
    torch.manual_seed(0)
    layer = QRNNLayer(3, 2, window=2, weight_drop=0.5).double().train()
    x, c0 = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    torch.manual_seed(5)
    h, _ = layer(x, c0)
    torch.manual_seed(5)
    dropped = F.dropout(layer.linear.weight, 0.5, training=True)
    assert (dropped == 0).any()
    torch.testing.assert_close(h, reference_layer(x, dropped, layer.linear.bias, c0, torch.zeros(2, 3), 2)[0])
    layer.eval()
    torch.testing.assert_close(layer(x, c0)[0], reference_layer(x, layer.linear.weight, layer.linear.bias, c0,
                                                                torch.zeros(2, 3), 2)[0])


def test_bad_windows_and_inputs_are_refused():
    with pytest.raises(ValueError, match="window must be 1 or 2"):
        QRNNLayer(3, 2, window=3)
    with pytest.raises(ValueError, match="input size 3"):
        QRNNLayer(3, 2)(torch.zeros(4, 2, 5))


# ---- the model: the whole state carried ----------------------------------------------------------------
def build(seed=0, **overrides):
    """Our task and an AWD-shaped QRNN at toy size (3 layers 6/6/4, tied 4-d embedding, first layer window
    2), float64, every regulariser off unless overridden."""
    task = DNILanguageModelingTask(DNILanguageModelingConfig(), awd_dictionary())
    values = dict(decoder_embed_dim=4, decoder_hidden_size=6, decoder_layers=3, share_decoder_input_output_embed=True,
                  decoder_last_layer_out_dim=True, dropout=0.0)
    values.update(overrides)
    torch.manual_seed(seed)
    cfg = dataclasses.replace(DNIQRNNLMConfig(**values), _name="dni_qrnn_lm")
    return task, task.build_model(OmegaConf.structured(cfg)).double()


def test_two_windows_with_the_carried_state_equal_one_window():
    """Windows of 4 then 6 tokens, the model carrying its own state (cells and the first layer's previous
    input), give the logits and final state of one 10-token window; without the previous input they differ."""
    _, model = build()
    model.eval()
    decoder = model.decoder
    assert decoder.state_layout == QRNNStateLayout((6, 6, 4), previous_input_size=4)
    tokens = torch.randint(4, AWD_VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    whole, extra = model(tokens)
    first, _ = model(tokens[:, :4], state_key="train", reset_state=True)
    second, extra2 = model(tokens[:, 4:], state_key="train")
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=0, atol=1e-12)
    for a, b in zip(decoder.state_layout.cells(extra2["final_state"]), decoder.state_layout.cells(extra["final_state"])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(extra2["final_state"][1], extra["final_state"][1], rtol=0, atol=0)
    # the previous input is part of the carried state: dropped, the second window changes
    model(tokens[:, :4], state_key="train", reset_state=True)
    cells, previous = decoder.carried.peek("train")
    decoder.carried.set("train", 3, (cells, torch.zeros_like(previous)))
    assert not torch.allclose(model(tokens[:, 4:], state_key="train")[0], second)
    # and so is every cell state
    model(tokens[:, :4], state_key="train", reset_state=True)
    decoder.carried.set("train", 3, (tuple(torch.zeros_like(c) for c in cells), previous))
    assert not torch.allclose(model(tokens[:, 4:], state_key="train")[0], second)


def test_incremental_decoding_equals_the_whole_window():
    _, model = build()
    model.eval()
    tokens = torch.randint(4, AWD_VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    whole = model(tokens)[0]
    cache, steps = {}, []
    for t in range(tokens.size(1)):
        steps.append(model(tokens[:, : t + 1], incremental_state=cache)[0])
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=0, atol=1e-12)


# ---- DNI on the cell states: the oracle -----------------------------------------------------------------
@pytest.mark.parametrize("synthesizer", ["mlp", "scan"])
def test_dni_oracle_on_the_cells_equals_full_bptt(synthesizer):
    """Injecting the exact future gradient at the window's final cell states through the criterion (window
    1 synthetic, window 2 real; AR and TAR on) gives full BPTT's gradient over the two windows. Full BPTT
    here is computed with the first layer's previous input detached at the window boundary, as the model
    carries it (torchqrnn's prevX; docs/design.md): the cells are the whole recurrent path. The target the
    criterion then takes at window 2's start is that oracle gradient."""
    task, model = build()
    model.train()
    criterion = DNICrossEntropyCriterion(task, DNICrossEntropyConfig(
        dni_scale=1.0, alpha=2.0, beta=1.0, sentence_avg=False, dni_synthesizer=synthesizer)).double().train()
    layout = model.decoder.state_layout
    assert layout.dim == 16 and torch.equal(layout.join_order, torch.arange(16))
    samples = awd_windows()

    def objective(sample, state):
        """One window's loss from ``state`` in the criterion's units, written out here."""
        logits, extra = model(sample["net_input"]["src_tokens"], start_state=state)
        raw, dropped = extra["raw_output"], extra["dropped_output"]
        lprobs = model.get_normalized_probs((logits, extra), log_probs=True)
        lm = F.nll_loss(lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1), reduction="sum")
        return lm + sample["ntokens"] * (2.0 * dropped.pow(2).mean() + (raw[:, 1:] - raw[:, :-1]).pow(2).mean()), extra

    params = list(model.parameters())
    l1, e1 = objective(samples[0], model.decoder.zero_state(3))
    cells1, previous1 = e1["final_state"]
    l2, _ = objective(samples[1], (cells1, previous1.detach()))   # the previous input detached at the boundary
    full = torch.autograd.grad(l1 + l2, params)
    leaves = tuple(c.detach().requires_grad_(True) for c in cells1)
    oracle = torch.cat([g[0] for g in torch.autograd.grad(objective(samples[1], (leaves, previous1.detach()))[0],
                                                          leaves)], dim=-1)
    criterion.synthesize = lambda state, condition, own_state: (oracle, None)
    grads = []
    for w, mode in ((0, "synthetic"), (1, "real")):
        for p in params:
            p.grad = None
        run_window(model, criterion, samples[w], mode)
        grads.append([p.grad.clone() for p in params])
    error = sum(((g1 + g2 - f) ** 2).sum() for g1, g2, f in zip(*grads, full)).sqrt()
    assert (error / sum((f ** 2).sum() for f in full).sqrt()).item() < 1e-8
    # without the injection the two differ clearly (the test can fail)
    plain = sum(((g2 - f) ** 2).sum() for g2, f in zip(grads[1], full)).sqrt()
    assert (plain / sum((f ** 2).sum() for f in full).sqrt()).item() > 1e-3
    torch.testing.assert_close(criterion.pending().target, oracle.float(), rtol=1e-5, atol=1e-6)


# ---- stock fairseq-train and fairseq-eval-lm -------------------------------------------------------------
TINY_QRNN = ["--arch", "dni_awd_qrnn_lm", "--decoder-embed-dim", "8", "--decoder-hidden-size", "12"]
AWD = ["--alpha", "2", "--beta", "1", "--variable-window", "--tokens-per-sample", "12"]


def qrnn_args(data, save_dir, *extra):
    return [data, "--user-dir", USER_DIR, "--task", "dni_language_modeling", *TINY_QRNN, "--tokens-per-sample", "7",
            "--batch-size", "4", "--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--lr", "0.01",
            "--dni-lr", "0.003", "--lr-scheduler", "cosine_alternating", "--lr-period-updates", "6", "--t-mult", "2",
            "--save-dir", save_dir, "--cpu", "--num-workers", "0", "--seed", "1", "--log-format", "json",
            "--log-interval", "1", "--no-progress-bar", *extra]


SYNTHESIZERS = {"mlp": [], "coordinatewise": ["--dni-synthesizer-hidden", "8"],
                "scan": ["--dni-synthesizer-hidden", "8", "--dni-synthesizer-init", "paper"]}


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """fairseq-train on dni_awd_qrnn_lm at toy size, 18 updates (cycles of 6, 12: synthetic then real) with
    each synthesizer, AR/TAR and variable windows: {kind: (log, save dir)}."""
    runs = {}
    for kind, flags in SYNTHESIZERS.items():
        save = tmp_path_factory.mktemp(f"qrnn-{kind}")
        out = fairseq("fairseq-train", *qrnn_args(tiny_data, save, "--max-update", "18", "--dni-synthesizer", kind,
                                                  *flags, *AWD))
        runs[kind] = (out, save)
    return runs


@pytest.mark.parametrize("kind", sorted(SYNTHESIZERS))
def test_fairseq_train_runs_the_qrnn_with_each_synthesizer(trained, kind):
    out, save = trained[kind]
    rows = train_inner(out)
    assert [int(r["num_updates"]) for r in rows] == list(range(1, 19))
    assert {float(r["dni_synthetic"]) for r in rows[:6]} == {1.0} and {float(r["dni_synthetic"]) for r in rows[6:]} == {0.0}
    for r in rows:
        for key in ("loss", "gnorm", "state_norm", "ar"):
            assert math.isfinite(float(r[key])), (r["num_updates"], key)
        assert float(r["dni_nonfinite"]) == 0
    assert all(math.isfinite(float(r["dni_cos"])) for r in rows[3:])   # regressions from window 3 on
    assert len({r["wpb"] for r in rows}) > 2                           # variable windows
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    model = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]
    assert model["decoder.qrnns.0.linear.weight"].shape == (36, 16)     # window 2: [x_t, x_{t-1}] of 8-d inputs
    assert model["decoder.qrnns.3.linear.weight"].shape == (24, 12)     # the last of 4 layers: 8 units, tied
    assert "decoder.qrnns.4.linear.weight" not in model


def test_eval_lm_loss_does_not_depend_on_the_window(tiny_data, trained):
    """One stream, the whole state carried: 3-token windows score as 40-token windows, every test token once."""
    checkpoint = trained["scan"][1] / "checkpoint_last.pt"
    test_tokens = count_tokens(os.path.join(os.path.dirname(tiny_data), "text", "test.txt"))
    short = eval_lm(tiny_data, checkpoint, "--batch-size", 1, "--tokens-per-sample", 3)
    long = eval_lm(tiny_data, checkpoint, "--batch-size", 1, "--tokens-per-sample", 40)
    assert short[0] == long[0] == test_tokens
    assert short[1] == pytest.approx(long[1], abs=1e-3)
    streams = eval_lm(tiny_data, checkpoint, "--batch-size", 5, "--tokens-per-sample", 7)
    assert streams[0] == test_tokens


def test_the_hub_scores_the_test_set_as_eval_lm(tiny_data, trained):
    """The hub carries the state (cells and previous input) from sentence to sentence: its perplexity of the
    test sentences equals fairseq-eval-lm's with one stream."""
    from fairseq_dni.models.dni_qrnn_lm import DNIQRNNLanguageModel

    save = trained["mlp"][1]
    out = fairseq("fairseq-eval-lm", tiny_data, "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                  "--path", save / "checkpoint_last.pt", "--batch-size", "1", "--tokens-per-sample", "5", "--cpu",
                  "--num-workers", "0")
    eval_ppl = float(re.search(r"Perplexity: ([0-9.]+)", out).group(1))
    lm = DNIQRNNLanguageModel.from_pretrained(str(save), "checkpoint_last.pt", data_name_or_path=str(tiny_data),
                                              tokenizer=None, bpe=None)
    with open(os.path.join(os.path.dirname(tiny_data), "text", "test.txt")) as f:
        sentences = f.read().splitlines()
    assert lm.perplexity(sentences) == pytest.approx(eval_ppl, abs=0.006)


# ---- resume -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ranks", [1, 2])
def test_stopped_and_resumed_run_ends_bitwise_where_the_uninterrupted_run_ends(tiny_data, tmp_path, ranks):
    """Stopped at update 11 (a checkpoint mid-epoch, in real mode), resumed to 20: the same logged values and
    bitwise the same LM and synthesizer. The carried cells, the previous input, the scan synthesizer's own
    state and the pending regression pair all travel in the checkpoint; with two ranks, every rank's."""
    common = ["--save-interval-updates", "11", "--no-epoch-checkpoints", "--dni-synthesizer", "scan",
              *SYNTHESIZERS["scan"], *AWD]

    def run(save, updates):
        args = qrnn_args(tiny_data, save, "--max-update", updates, *common)
        if ranks == 1:
            return fairseq("fairseq-train", *args)
        return launch_ranks(args + ["--batch-size", "2"])

    whole = train_inner(run(tmp_path / "whole", 20))
    run(tmp_path / "split", 11)
    resumed = train_inner(run(tmp_path / "split", 20))
    assert [int(r["num_updates"]) for r in resumed] == list(range(12, 21))
    for a, b in zip(whole[11:], resumed):
        for key in ("loss", "lr", "dni_synthetic", "dni_loss", "gnorm", "ar", "wpb"):
            assert a.get(key) == b.get(key), (a["num_updates"], key, a.get(key), b.get(key))
    assert_same_weights(tmp_path / "whole" / "checkpoint_last.pt", tmp_path / "split" / "checkpoint_last.pt",
                        parts=("model", "criterion"))
