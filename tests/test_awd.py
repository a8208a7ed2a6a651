"""AWD-LSTM: weight drop, locked dropout, AR/TAR, layers of unequal widths, against hand-written references.

Every reference is plain torch written here (a per-time-step LSTM loop, explicit loops for AR/TAR), so
that a wrong mask, a wrong mean or a wrong unit in the plugin shows up as a number that differs.
"""
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import AWD_VOCAB as VOCAB
from helpers import USER_DIR, awd_config, awd_train_args, fairseq, run_window
from helpers import awd_windows as windows
from helpers import build_awd as build
from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyConfig, DNICrossEntropyCriterion
from fairseq_dni.criterions.lm_cross_entropy import LMCrossEntropyConfig, LMCrossEntropyCriterion
from fairseq_dni.errors import DNIUserError
from fairseq_dni.models.dni_lstm_lm import DNILSTMLMConfig
from fairseq_dni.modules import LockedDropout, WeightDropLSTM
from reference_lm import perplexity


def reference_lstm(x, state, layers, masks=None):
    """A per-time-step LSTM over x (B, T, E) from ``state`` [(h, c) per layer, each (B, H_l)];
    ``layers`` [(w_ih, w_hh, b_ih, b_hh)], ``masks`` an optional multiplier of each w_hh, the same at
    every time step. Returns (outputs (B, T, H_last), final [(h, c)])."""
    state = [tuple(s) for s in state]
    for l, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers):
        w_hh = w_hh if masks is None else w_hh * masks[l]
        h, c = state[l]
        outputs = []
        for t in range(x.size(1)):
            i, f, g, o = (x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        x, state[l] = torch.stack(outputs, 1), (h, c)
    return x, state


# ---- weight drop ------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers", [1, 2])
def test_weight_drop_one_mask_per_window_the_same_at_every_step_none_in_eval(num_layers):
    torch.manual_seed(0)
    lstm = WeightDropLSTM(4, 6, num_layers=num_layers, batch_first=True, weight_drop=0.5).double().train()
    x = torch.randn(3, 7, 4, dtype=torch.double)
    zeros = torch.zeros(num_layers, 3, 6, dtype=torch.double)
    layers = [tuple(w.detach() for w in ws) for ws in lstm.all_weights]

    torch.manual_seed(11)
    first, (h1, c1) = lstm(x, (zeros, zeros))
    second, _ = lstm(x, (zeros, zeros))          # the next window: fresh masks
    # reference: the same generator state, one mask per w_hh drawn as F.dropout draws it, then a
    # per-time-step loop that uses that one mask at every step
    torch.manual_seed(11)
    masks = [[F.dropout(torch.ones_like(w_hh), 0.5) for _, w_hh, _, _ in layers] for _ in range(2)]
    start = [(zeros[l], zeros[l]) for l in range(num_layers)]
    for out, window_masks in ((first, masks[0]), (second, masks[1])):
        expected, final = reference_lstm(x, start, layers, window_masks)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(h1[-1], reference_lstm(x, start, layers, masks[0])[1][-1][0], rtol=0, atol=1e-12)
    assert not torch.allclose(first, second)                                   # a new mask per window
    assert all(0.35 < float((m == 0).double().mean()) < 0.65 for m in masks[0])  # rate 0.5
    # backward reaches the raw weight through the mask
    first.sum().backward()
    assert lstm.weight_hh_l0.grad is not None and lstm.weight_hh_l0.grad.abs().sum() > 0

    lstm.eval()
    rng = torch.get_rng_state()
    out, _ = lstm(x, (zeros, zeros))
    torch.testing.assert_close(out, reference_lstm(x, start, layers)[0], rtol=0, atol=1e-12)
    assert torch.equal(torch.get_rng_state(), rng)  # eval draws nothing


def test_weight_drop_runs_one_fused_lstm_op_per_layer_and_window():
    """The dropped weights go to the same fused op nn.LSTM calls: one aten::lstm per layer and window,
    no per-time-step cell ops (``aten::lstm_cell`` / ``_thnn_fused_lstm_cell``)."""
    from torch.profiler import profile

    _, model = build(awd_config(weight_drop=0.5, locked_dropout=True, dropout=0.3))
    model.train()
    sample = windows(length=9)[0]
    with profile() as prof:
        model(sample["net_input"]["src_tokens"], state_key="train", reset_state=True)
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get("aten::lstm") == 3  # 3 layers, one window
    assert not any("cell" in key for key in counts)


def test_regularisers_import_with_torch_alone():
    code = ("import sys; sys.modules['fairseq'] = None\n"  # any 'import fairseq' now raises ImportError
            "import torch\n"
            "from fairseq_dni.modules import LockedDropout, WeightDropLSTM, embedding_dropout\n"
            "lstm = WeightDropLSTM(3, 4, batch_first=True, weight_drop=0.5)\n"
            "out, _ = lstm(LockedDropout(0.5)(torch.randn(2, 5, 3)), (torch.zeros(1, 2, 4),) * 2)\n"
            "assert out.shape == (2, 5, 4) and not any(m.startswith('fairseq.') for m in sys.modules)\n"
            "print('torch-only ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(USER_DIR), capture_output=True, text=True)
    assert "torch-only ok" in out.stdout, out.stderr


# ---- locked dropout ---------------------------------------------------------------------------------
def test_locked_dropout_one_mask_per_stream_constant_over_time():
    drop = LockedDropout(0.5).train()
    ones = torch.ones(16, 9, 32, dtype=torch.double)
    a, b = drop(ones), drop(ones)
    assert set(a.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(a, a[:, :1].expand_as(a))                # every time step: the stream's mask
    assert len({tuple(row.tolist()) for row in a[:, 0]}) == 16  # streams: each its own mask
    assert not torch.equal(a, b)                                # windows: fresh masks
    assert torch.equal(drop.eval()(ones), ones)


def test_model_locked_dropouts_hold_over_the_window_on_inputs_between_layers_and_outputs():
    """With --locked-dropout the input, between-layer and output masks are (B, 1, D): the zeros of the
    dropped output are the same at every time step, and the model equals a reference that applies
    masks drawn in the model's order (input, layer 1's input, layer 2's input, output)."""
    _, model = build(awd_config(locked_dropout=True, dropout=0.5))
    model.train()
    tokens = windows(length=8)[0]["net_input"]["src_tokens"]
    torch.manual_seed(3)
    _, extra = model(tokens, state_key="train", reset_state=True)
    raw, dropped = extra["raw_output"], extra["dropped_output"]
    zeros = dropped.eq(0)
    assert zeros.any() and torch.equal(zeros, zeros[:, :1].expand_as(zeros))
    torch.testing.assert_close(dropped, raw * (~zeros) * 2.0, rtol=0, atol=0)

    decoder = model.decoder
    torch.manual_seed(3)
    x = decoder.embed_tokens(tokens)
    masks = {}
    for name, width in (("in", 4), ("h1", 6), ("h2", 6), ("out", 4)):
        masks[name] = torch.empty(3, 1, width, dtype=torch.double).bernoulli_(0.5) * 2.0
    layers = [tuple(w.detach() for w in lstm.all_weights[0]) for lstm in decoder.lstms]
    x = x * masks["in"]
    start = [(torch.zeros(3, w, dtype=torch.double),) * 2 for w in (6, 6, 4)]
    state = []
    for l, (name, layer) in enumerate(zip(("in", "h1", "h2"), layers)):
        x = x if l == 0 else x * masks[name]
        x, final = reference_lstm(x, start[l:l + 1], [layer])
        state += final
    torch.testing.assert_close(raw, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(dropped, x * masks["out"], rtol=0, atol=1e-12)


# ---- AR / TAR ---------------------------------------------------------------------------------------
def record_outputs(model):
    seen = []
    forward = model.forward
    model.forward = lambda *a, **k: seen.append(forward(*a, **k)) or seen[-1]
    return seen


def hand_ar_tar(raw, dropped, target, pad=1):
    """AR / TAR means by explicit loops over streams, positions and units (padding skipped)."""
    raw, dropped = raw.detach(), dropped.detach()
    B, T, D = raw.shape
    ar_sum = ar_n = tar_sum = tar_n = 0.0
    for b in range(B):
        for t in range(T):
            if target[b, t] == pad:
                continue
            ar_sum += sum(float(dropped[b, t, d]) ** 2 for d in range(D))
            ar_n += D
            if t > 0 and target[b, t - 1] != pad:
                tar_sum += sum((float(raw[b, t, d]) - float(raw[b, t - 1, d])) ** 2 for d in range(D))
                tar_n += D
    return ar_sum / ar_n, tar_sum / tar_n


@pytest.mark.parametrize("criterion_name", ["lm_cross_entropy", "dni_cross_entropy"])
def test_ar_and_tar_equal_a_hand_computation_in_the_loss_units_with_padding(criterion_name):
    task, model = build(awd_config(locked_dropout=True, dropout=0.4, weight_drop=0.3))
    model.train()
    samples = windows(bsz=3, length=7, tokens=100)
    sample = samples[-1]                                   # the last window: streams of unequal length
    assert sample["target"].eq(1).any() and sample["target"].ne(1).any()
    if criterion_name == "lm_cross_entropy":
        criterion = LMCrossEntropyCriterion(task, LMCrossEntropyConfig(alpha=2.0, beta=1.0, sentence_avg=False))
    else:
        criterion = DNICrossEntropyCriterion(task, DNICrossEntropyConfig(alpha=2.0, beta=1.0,
                                                                         sentence_avg=False)).double()
    criterion.train()
    seen = record_outputs(model)
    total, sample_size, log = run_window(model, criterion, sample, mode="real")
    net_output = seen[-1]
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    lm = F.nll_loss(lprobs.view(-1, VOCAB + 4), sample["target"].view(-1), ignore_index=1, reduction="sum")
    ar, tar = hand_ar_tar(net_output[1]["raw_output"], net_output[1]["dropped_output"], sample["target"])
    assert sample_size == sample["ntokens"] == int(sample["target"].ne(1).sum())
    # the criterion's loss: LM loss summed over tokens + sample_size * (alpha AR + beta TAR); logged apart
    torch.testing.assert_close(log["loss"], lm.detach(), rtol=1e-6, atol=0)  # fairseq's log-softmax: float32
    torch.testing.assert_close(total - log["loss"].double(), sample_size * (2.0 * ar + 1.0 * tar) * torch.ones((), dtype=torch.double),
                               rtol=1e-10, atol=0)
    assert float(log["ar"]) == pytest.approx(sample_size * 2.0 * ar, rel=1e-10)
    assert float(log["tar"]) == pytest.approx(sample_size * 1.0 * tar, rel=1e-10)
    assert ar > 0 and tar > 0


def test_after_fairseqs_division_the_objective_is_awds():
    """No padding: loss / sample_size == AWD-LSTM main.py's raw_loss + alpha AR + beta TAR (means over all
    elements), and validation returns the LM loss alone."""
    task, model = build(awd_config(locked_dropout=True, dropout=0.4))
    model.train()
    sample = windows(bsz=3, length=7, tokens=100)[1]
    assert sample["target"].ne(1).all()
    criterion = LMCrossEntropyCriterion(task, LMCrossEntropyConfig(alpha=2.0, beta=1.0, sentence_avg=False)).train()
    seen = record_outputs(model)
    total, sample_size, log = criterion(model, sample)
    logits, extra = seen[-1]
    raw, dropped = extra["raw_output"], extra["dropped_output"]
    cross_entropy = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), sample["target"].view(-1))
    awd = cross_entropy.double() + 2.0 * dropped.pow(2).mean() + 1.0 * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    torch.testing.assert_close(total / sample_size, awd, rtol=1e-6, atol=0)
    model.eval()
    criterion.eval()
    loss, _, log = criterion(model, sample)
    assert "ar" not in log and torch.equal(loss.detach(), log["loss"])


# ---- the DNI oracle with unequal widths -------------------------------------------------------------


# ---- shapes, state, incremental decoding ------------------------------------------------------------
def test_awd_shape_state_layout_and_incremental_decoding():
    _, model = build(awd_config())
    model.eval()
    decoder = model.decoder
    assert decoder.project_out is None and decoder.output_projection.weight is decoder.embed_tokens.weight
    assert [lstm.hidden_size for lstm in decoder.lstms] == [6, 6, 4]
    assert decoder.model_spec().layout.dim == 2 * (6 + 6 + 4)
    tokens = windows(length=6)[0]["net_input"]["src_tokens"]
    whole = model(tokens)[0]
    cache, steps = {}, []
    for t in range(tokens.size(1)):
        steps.append(model(tokens[:, : t + 1], incremental_state=cache)[0])
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=0, atol=1e-12)


def test_plain_model_keeps_one_stacked_lstm_and_its_parameter_names():
    _, model = build(DNILSTMLMConfig(decoder_embed_dim=4, decoder_hidden_size=6, decoder_layers=2, weight_drop=0.2))
    names = [n for n, _ in model.named_parameters()]
    assert "decoder.lstm.weight_hh_l1" in names and not any("lstms" in n for n in names)
    assert model.decoder.state_layout.stacked


# ---- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    ({"weight_drop": 1.0}, "--weight-drop must be in [0, 1), got 1.0"),
    ({"dropout": -0.1}, "--dropout must be in [0, 1), got -0.1"),
    ({"decoder_embed_dropout": 1.5}, "--decoder-embed-dropout must be in [0, 1), got 1.5"),
    ({"decoder_hidden_dropout": 1.0, "locked_dropout": True}, "--decoder-hidden-dropout must be in [0, 1)"),
])
def test_rates_outside_zero_one_are_refused(overrides, message):
    with pytest.raises(DNIUserError, match=re.escape(message)):
        build(awd_config(**overrides))


@pytest.mark.parametrize("alpha,beta,message", [(-1.0, 0.0, "--alpha (the weight of AR) must be >= 0, got -1.0"),
                                                (0.0, -0.5, "--beta (the weight of TAR) must be >= 0, got -0.5")])
def test_negative_ar_tar_weights_are_refused(alpha, beta, message):
    task, _ = build(awd_config())
    with pytest.raises(DNIUserError, match=re.escape(message)):
        LMCrossEntropyCriterion(task, LMCrossEntropyConfig(alpha=alpha, beta=beta, sentence_avg=False))


# ---- end to end: fairseq-train, fairseq-eval-lm, the independent reference ---------------------------


def test_awd_model_trains_with_ar_tar_and_eval_lm_equals_a_plain_pytorch_loop(tiny_data, tmp_path):
    out = fairseq("fairseq-train", *awd_train_args(tiny_data, tmp_path, "--max-epoch", "2"))
    assert re.search(r'"train_ar": "[\d.]+"', out) and re.search(r'"train_tar": "[\d.]+"', out)
    assert '"valid_ar"' not in out
    checkpoint = tmp_path / "checkpoint_last.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    assert state["decoder.lstms.2.weight_hh_l0"].shape == (4 * 8, 8)  # the last layer: the embedding's width
    eval_out = fairseq("fairseq-eval-lm", tiny_data, "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                       "--path", checkpoint, "--cpu", "--num-workers", "0", "--batch-size", "1",
                       "--tokens-per-sample", "6")
    loss = float(re.search(r"Loss \(base 2\): ([\d.]+)", eval_out).group(1))
    text = os.path.join(os.path.dirname(tiny_data), "text", "test.txt")
    count, reference_loss, _ = perplexity(checkpoint, os.path.join(tiny_data, "dict.txt"), text)
    assert count == 257
    assert loss == pytest.approx(reference_loss, abs=6e-5)  # eval-lm prints 4 decimals
