"""dni_cross_entropy against autograd references, driven window by window as fairseq does.

Every training window goes through fairseq_dni.step.train_window (the task's train_step calls it):
forward from the carried state made a leaf, (scaled) backward, the criterion's end_window. These
tests run it in float64 on a tiny LSTM (no optimizer step unless stated).
"""
import os
import re
import types

import pytest
import torch
import torch.nn.functional as F
from fairseq.data import Dictionary

from helpers import (
    DNI,
    USER_DIR,
    awd_config,
    awd_windows,
    build_awd,
    build_dni,
    fairseq,
    params,
    run_window,
    same_lm,
    train_args,
    train_inner,
)
from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyConfig, DNICrossEntropyCriterion
from reference_lm import perplexity
from fairseq_dni.carried_state import StateLayout
from fairseq_dni.data.stream_windows import StreamWindows

B, T, LAYERS, HIDDEN, EMBED = 3, 5, 2, 6, 4
flatten_state = StateLayout((HIDDEN,) * LAYERS).flatten


def pending_target(criterion):
    return criterion.pending().target


def setup(scale=0.1, seed=0, **dni):
    dictionary = Dictionary()
    for i in range(20):
        dictionary.add_symbol(f"w{i}")
    torch.manual_seed(seed)
    _, model, criterion = build_dni(
        dictionary, dict(decoder_embed_dim=EMBED, decoder_hidden_size=HIDDEN, decoder_layers=LAYERS, dropout=0.0),
        dict(dni_scale=scale, sentence_avg=False, **dni))
    model.train()
    criterion.train()
    tokens = torch.randint(4, len(dictionary), (200,), generator=torch.Generator().manual_seed(1)).numpy()
    windows = StreamWindows(tokens, B, T, dictionary.pad(), dictionary.eos(), state_key="train")
    samples = [windows.collater([windows[i]]) for i in range(len(windows))]
    return model, criterion, samples


def step(model, criterion, sample, loss_scale=1.0, zero_grad=True, mode="synthetic"):
    """One fairseq micro-batch (train_window); returns LM param grads, unscaled, and the logging output."""
    if zero_grad:
        for p in list(model.parameters()) + list(criterion.parameters()):
            p.grad = None
    loss, sample_size, log = run_window(model, criterion, sample, mode, loss_scale)
    return [p.grad.clone() / loss_scale for p in model.parameters()], log


def lm_window(model, sample, state):
    """Reference: a window's summed LM loss from a given state, outside the criterion."""
    out, extra = model(sample["net_input"]["src_tokens"], start_state=state)
    lp = model.get_normalized_probs((out, extra), log_probs=True)
    loss = torch.nn.functional.nll_loss(lp.view(-1, lp.size(-1)), sample["target"].view(-1),
                                        ignore_index=1, reduction="sum")
    return loss, extra["final_state"]


def test_fresh_synthesizer_gives_real_mode_updates():
    synthetic = setup()
    real = setup()
    for w in range(4):
        g_syn, _ = step(*synthetic[:2], synthetic[2][w])
        g_real, _ = step(*real[:2], real[2][w], mode="real")
        for a, b in zip(g_syn, g_real):
            assert torch.equal(a, b)


@pytest.mark.parametrize("synthesizer", ["mlp", "coordinatewise"])
def test_oracle_injection_through_the_criterion_equals_full_bptt(synthesizer):
    model, criterion, samples = setup(scale=1.0, dni_synthesizer=synthesizer)
    s0 = model.decoder.zero_state(B)
    # reference: full BPTT over windows 1 and 2 (summed loss, as the criterion returns)
    l1, s1 = lm_window(model, samples[0], s0)
    l2, _ = lm_window(model, samples[1], s1)
    full = torch.autograd.grad(l1 + l2, list(model.parameters()))
    # the exact future gradient at s1, per stream, in the criterion's units
    s1_leaf = tuple(s.detach().requires_grad_(True) for s in s1)
    oracle = flatten_state(torch.autograd.grad(lm_window(model, samples[1], s1_leaf)[0], s1_leaf))
    criterion.synthesize = lambda state, condition, own_state: (oracle, None)
    g1, _ = step(model, criterion, samples[0])
    g2, _ = step(model, criterion, samples[1], mode="real")
    num = sum(((a + b - f) ** 2).sum() for a, b, f in zip(g1, g2, full)).sqrt()
    assert (num / sum((f ** 2).sum() for f in full).sqrt()).item() < 1e-8


def make_nontrivial(criterion):
    """Give the synthesizer a non-zero last layer, as after some training."""
    last = criterion.synthesizer.net[-1] if hasattr(criterion.synthesizer, "net") else criterion.synthesizer.decoder
    torch.nn.init.normal_(last.weight, std=0.3, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("synthesizer", ["mlp", "coordinatewise"])
@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])
def test_regression_target_equals_autograd_reference(loss_scale, synthesizer):
    model, criterion, samples = setup(scale=0.1, dni_synthesizer=synthesizer)
    make_nontrivial(criterion)
    step(model, criterion, samples[0], loss_scale)
    s1 = tuple(s.clone() for s in model.decoder.carried.peek("train"))
    step(model, criterion, samples[1], loss_scale)
    target = pending_target(criterion)
    # reference: d/ds1 [ L2_sum(s1) + 0.1 * <s2(s1), M(s2) held constant> ], M(s2) evaluated on exactly
    # the call made at s2 (its noisy input, its own recurrent state) and checked to be that state
    s1_leaf = tuple(s.detach().requires_grad_(True) for s in s1)
    l2, s2 = lm_window(model, samples[1], s1_leaf)
    call = criterion.carried.peek("train").last_call
    if synthesizer == "mlp":
        torch.testing.assert_close(call.inputs, flatten_state(s2).detach(), rtol=0, atol=0)
    else:  # multiplicative noise N(1, 0.5): the input is the state times a factor around 1
        assert 0.4 < float((call.inputs / flatten_state(s2).detach()).std()) < 0.6
    m = criterion.synthesizer(call.inputs, call.condition, call.own_state)[0].detach()
    ref = torch.autograd.grad(l2 + 0.1 * (flatten_state(s2) * m).sum(), s1_leaf)
    torch.testing.assert_close(target, flatten_state(ref).float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cell", ["gru", "lstm", "qrnn"])
def test_the_regression_re_evaluates_exactly_the_injected_call(cell):
    """Coordinate-wise synthesizer (input noise on): the prediction regressed at window t+2 is
    bitwise the one made at window t's end (same noisy input, same own recurrent state), and
    its own state runs on from window to window and restarts with a new pass."""
    model, criterion, samples = setup(dni_synthesizer="coordinatewise", dni_synthesizer_cell=cell)
    make_nontrivial(criterion)
    calls = []
    synthesize = criterion.synthesize
    criterion.synthesize = lambda x, c, own: calls.append((x, own, synthesize(x, c, own))) or calls[-1][2]
    for w in range(4):
        step(model, criterion, samples[w])
    # calls: end 0, end 1, [window 2: regression of end 0's call (its target: the gradient at window 1's
    # start), end 2], [window 3: regression of end 1's call, end 3]; no optimizer step in between
    for made, regressed in ((calls[0], calls[2]), (calls[1], calls[4])):
        torch.testing.assert_close(regressed[0], made[0], rtol=0, atol=0)
        torch.testing.assert_close(regressed[2][0], made[2][0], rtol=0, atol=0)
    # own state: each window's call starts from the state the previous call returned
    for before, after in ((calls[0], calls[1]), (calls[1], calls[3]), (calls[3], calls[5])):
        for a, b in zip(before[2][1], after[1]):
            torch.testing.assert_close(b, a, rtol=0, atol=0)
    # a new pass (reset_state) restarts it from zeros
    step(model, criterion, samples[0])
    assert all(not t.any() for t in calls[-1][1])


def test_targets_pair_windows_with_their_successors_under_gradient_accumulation():
    """--update-freq N accumulates parameter gradients over N windows; each target must still
    be the gradient at its own successor's start, unaffected by what accumulated before."""
    plain = setup()
    accum = setup()
    for net in (plain, accum):
        torch.nn.init.normal_(net[1].synthesizer.net[-1].weight, std=0.3, generator=torch.Generator().manual_seed(3))
    for w in range(4):
        step(*plain[:2], plain[2][w], zero_grad=True)
        step(*accum[:2], accum[2][w], zero_grad=(w == 0))
        if w >= 1:
            torch.testing.assert_close(pending_target(accum[1]), pending_target(plain[1]), rtol=0, atol=0)


def test_logs_synthesizer_quality_and_state_norm():
    model, criterion, samples = setup()
    logs = [step(model, criterion, s)[1] for s in samples[:4]]
    assert "dni_cos" not in logs[0] and "dni_cos" not in logs[1]  # nothing to regress yet
    assert all(k in logs[2] for k in ("dni_loss", "dni_cos", "dni_target_norm", "dni_pred_norm"))
    assert logs[2]["dni_loss"] > 0 and logs[3]["state_norm"] > 0


def test_bf16_autocast_with_loss_scaling_keeps_the_target():
    """CPU stand-in for fp16/AMP: bf16 autocast plus a 2**10 loss scale, target vs float32 reference."""
    ref_model, ref_crit, samples = setup()
    low_model, low_crit, _ = setup()
    for net in (ref_model, ref_crit, low_model, low_crit):
        net.float()
    for w in range(2):
        step(ref_model, ref_crit, samples[w])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            run_window(low_model, low_crit, samples[w], loss_scale=1024.0)
    a, b = pending_target(ref_crit), pending_target(low_crit)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.98
    assert abs(b.norm() / a.norm() - 1) < 0.05


def test_loss_scale_is_read_from_fairseq_optimizer_wrappers():
    from fairseq.optim.dynamic_loss_scaler import DynamicLossScaler

    from fairseq_dni.optim.alternating import current_loss_scale

    # FP16Optimizer keeps fairseq's DynamicLossScaler as .scaler (None under bf16)
    fp16 = types.SimpleNamespace(scaler=DynamicLossScaler(init_scale=128.0))
    assert current_loss_scale(fp16) == 128.0
    assert current_loss_scale(types.SimpleNamespace(scaler=None)) == 1.0
    # AMPOptimizer exposes torch's GradScaler as .scaler; disabled (no CUDA) it scales by 1
    amp = types.SimpleNamespace(scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    assert current_loss_scale(amp) == 2.0 ** 16
    off = types.SimpleNamespace(scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert current_loss_scale(off) == 1.0
    assert current_loss_scale(types.SimpleNamespace()) == 1.0


def finite(tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def test_nonfinite_synthetic_gradient_falls_back_to_a_real_update_and_is_counted():
    synthetic = setup()
    real = setup()
    for w in range(2):
        step(*synthetic[:2], synthetic[2][w])
        step(*real[:2], real[2][w], mode="real")
    synthetic[1].synthesize = lambda state, condition, own_state: (torch.full_like(state, float("nan")), None)
    g_syn, log = step(*synthetic[:2], synthetic[2][2])
    g_real, _ = step(*real[:2], real[2][2], mode="real")
    assert float(log["dni_nonfinite"]) == 1.0
    assert finite(g_syn)
    for a, b in zip(g_syn, g_real):
        assert torch.equal(a, b)


def test_nonfinite_target_skips_the_regression_and_is_counted():
    model, criterion, samples = setup()
    step(model, criterion, samples[0])
    step(model, criterion, samples[1], loss_scale=0.0)  # a broken loss scale: the target becomes inf/nan
    _, log = step(model, criterion, samples[2])
    assert log["dni_nonfinite_target"] == 1.0 and "dni_cos" not in log
    assert finite([p.grad for p in criterion.parameters()] + [p.grad for p in model.parameters()])


def test_diverged_synthesizer_parameters_do_not_stop_training():
    model, criterion, samples = setup()
    for w in range(2):
        step(model, criterion, samples[w])
    with torch.no_grad():
        for p in criterion.synthesizer.parameters():
            p.fill_(float("nan"))
    for w in range(2, 5):
        grads, log = step(model, criterion, samples[w])
        assert finite(grads) and finite([p.grad for p in criterion.parameters()])
        assert float(log["dni_nonfinite"]) == 1.0  # every window falls back to a real update


def test_adaptive_softmax_loss_equals_fairseq_adaptive_loss():
    from fairseq.criterions.adaptive_loss import AdaptiveLoss

    dictionary = Dictionary()
    for i in range(60):
        dictionary.add_symbol(f"w{i}")
    torch.manual_seed(0)
    task, model, ours = build_dni(
        dictionary, dict(decoder_embed_dim=EMBED, decoder_hidden_size=HIDDEN, decoder_layers=LAYERS, dropout=0.0,
                         adaptive_softmax_cutoff="20,40", adaptive_softmax_factor=2.0),
        dict(sentence_avg=False))
    model.eval()
    ours.eval()
    reference = AdaptiveLoss(task, sentence_avg=False)
    tokens = torch.randint(4, len(dictionary), (120,), generator=torch.Generator().manual_seed(2)).numpy()
    windows = StreamWindows(tokens, B, T, dictionary.pad(), dictionary.eos(), state_key="valid")
    sample = windows.collater([windows[0]])
    loss, _, _ = ours(model, sample)
    ref_sample = dict(sample, net_input=dict(sample["net_input"], reset_state=True))
    ref_loss, _, _ = reference(model, ref_sample)
    torch.testing.assert_close(loss, ref_loss.reshape(()), rtol=1e-10, atol=1e-10)


def test_condition_on_next_target_feeds_the_label_of_the_window_that_follows():
    """cDNI: the synthesizer at the end of window t sees the output-layer row of window t+1's first
    target; the regression pair stored for window t's start carries window t's own first target."""
    model, criterion, samples = setup(dni_condition_on_next_input=True, dni_condition_on_next_target=True)
    assert criterion.synthesizer.condition_dim == EMBED + HIDDEN
    seen = []
    synthesize = criterion.synthesize
    criterion.synthesize = lambda state, condition, own: seen.append(condition) or synthesize(state, condition, own)
    for w in range(3):
        step(model, criterion, samples[w])
    # calls: end of window 0, end of window 1, then in window 2 the regression of M(s_1's start pair)
    # (window 0 opens the pass: no leaf, no pair), then end of window 2
    assert len(seen) == 4
    rows = model.decoder.output_projection.weight.detach()
    emb = model.decoder.embed_tokens.weight.detach()
    # window 0's end: embedding of its last target (the next input) + label row of window 1's first target
    torch.testing.assert_close(seen[0], torch.cat([emb[samples[0]["target"][:, -1]],
                                                   rows[samples[1]["target"][:, 0]]], -1), rtol=0, atol=0)
    # the pair regressed in window 2 is window 1's start, whose condition is what window 0's end saw
    # (no optimizer step in between, so bitwise)
    torch.testing.assert_close(seen[2], seen[0], rtol=0, atol=0)


def test_relative_loss_is_the_error_over_the_zero_predictors_error():
    model, criterion, samples = setup()
    logs = [step(model, criterion, samples[w])[1] for w in range(3)]
    pending_free = logs[2]  # window 2 regressed window 1's start pair
    # a fresh synthesizer predicts exactly zero: its error is the zero predictor's
    assert pending_free["dni_mse"] == pytest.approx(float(pending_free["dni_zero_mse"]), rel=1e-12)
    assert pending_free["dni_zero_mse"] > 0


def test_dni_oracle_equals_full_bptt_with_unequal_widths_and_ar_tar():
    """Layers 6/6/4 (tied 4-d embedding), AR and TAR on: injecting the exact future gradient at the
    window's end through the criterion gives full BPTT's gradient over two windows."""
    task, model = build_awd(awd_config())
    model.train()
    criterion = DNICrossEntropyCriterion(task, DNICrossEntropyConfig(
        dni_scale=1.0, alpha=2.0, beta=1.0, sentence_avg=False)).double().train()
    layout = model.decoder.state_layout
    assert layout.layer_sizes == (6, 6, 4) and not layout.stacked and layout.dim == 32
    samples = awd_windows()

    def objective(sample, state):
        """One window's loss from ``state`` in the criterion's units, written out here."""
        logits, extra = model(sample["net_input"]["src_tokens"], start_state=state)
        raw, dropped = extra["raw_output"], extra["dropped_output"]
        n = sample["ntokens"]
        lprobs = model.get_normalized_probs((logits, extra), log_probs=True)  # as the criterion (float32)
        lm = F.nll_loss(lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1), reduction="sum")
        return lm + n * (2.0 * dropped.pow(2).mean() + 1.0 * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()), extra

    s0 = model.decoder.zero_state(3)
    l1, e1 = objective(samples[0], s0)
    l2, _ = objective(samples[1], e1["final_state"])
    params = list(model.parameters())
    full = torch.autograd.grad(l1 + l2, params)
    s1 = tuple(tuple(t.detach().requires_grad_(True) for t in pair) for pair in e1["final_state"])
    leaves = [t for pair in s1 for t in pair]
    oracle = layout.flatten(tuple(zip(*[iter(torch.autograd.grad(objective(samples[1], s1)[0], leaves))] * 2)))
    criterion.synthesize = lambda state, condition, own_state: (oracle, None)
    grads = []
    for w, mode in ((0, "synthetic"), (1, "real")):
        for p in params:
            p.grad = None
        run_window(model, criterion, samples[w], mode)
        grads.append([p.grad.clone() for p in params])
    error = sum(((g1 + g2 - f) ** 2).sum() for g1, g2, f in zip(*grads, full)).sqrt()
    assert (error / sum((f ** 2).sum() for f in full).sqrt()).item() < 1e-8


def test_fresh_synthesizer_trains_like_real_mode_until_it_has_learned(tiny_data, tmp_path):
    """The synthesizer's last layer starts at zero and first regresses at window 3, so the
    first 3 updates are the same in synthetic mode, real mode and plain cross_entropy."""
    runs = {}
    for name, extra in [("ce", ["--criterion", "cross_entropy", "--optimizer", "alternating"]),
                        ("real", DNI + ["--dni-mode", "real"]),
                        ("syn", DNI + ["--dni-mode", "synthetic"])]:
        for updates in (3, 30):
            save = tmp_path / f"{name}{updates}"
            fairseq("fairseq-train", *train_args(tiny_data, save, "--max-update", updates, *extra))
            runs[name, updates] = params(save / "checkpoint_last.pt")
    assert same_lm(runs["ce", 3], runs["real", 3]) and same_lm(runs["real", 3], runs["syn", 3])
    assert same_lm(runs["ce", 30], runs["real", 30])       # real mode never injects
    assert not same_lm(runs["real", 30], runs["syn", 30])  # synthetic mode does, once M has learned
    # the synthesizer is trained in both modes and lives in the criterion, not in the LM
    assert runs["real", 30]["criterion"]["synthesizer.net.2.weight"].abs().sum() > 0
    assert not any(k.startswith("synthesizer") for k in runs["syn", 30]["model"])


def test_real_mode_is_plain_tbptt_even_with_clipping(tiny_data, tmp_path):
    """dni_cross_entropy in real mode leaves the LM's update exactly as plain cross_entropy with the
    same optimizer: same logged gradient norm at every update, bitwise the same weights."""
    common = ["--optimizer", "alternating", "--base-optimizer", "adam", "--clip-norm", "0.05", "--max-update", "30"]
    ce = train_inner(fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "ce", *common,
                                                         "--criterion", "cross_entropy")))
    real = train_inner(fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "real", *common, *DNI,
                                                           "--dni-mode", "real", "--dni-lr", "0.01")))
    assert [r["gnorm"] for r in ce] == [r["gnorm"] for r in real]
    assert [r["loss"] for r in ce] == [r["loss"] for r in real] and len(real) == 30
    assert float(real[-1]["dni_loss"]) > 0  # the synthesizer did train meanwhile
    assert same_lm(params(tmp_path / "ce" / "checkpoint_last.pt"), params(tmp_path / "real" / "checkpoint_last.pt"))


def test_synthetic_run_logs_synthesizer_quality_and_scores_with_eval_lm(tiny_data, tmp_path):
    """A conditioned synthetic run through fairseq-train (--update-freq 2): every interval is logged as
    synthetic, finite, with a cosine in [-1, 1] and a regression error; its checkpoint stays a plain LSTM
    LM, which eval-lm scores exactly as a plain PyTorch loop does."""
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path, "--max-epoch", "2", "--update-freq", "2",
                                               "--log-interval", "10", *DNI, "--dni-condition-on-next-input", "--dni-condition-on-next-target"))
    logs = train_inner(out)
    assert len(logs) >= 3
    for row in logs:
        assert float(row["dni_synthetic"]) == 1 and float(row["dni_nonfinite"]) == 0
        assert -1 <= float(row["dni_cos"]) <= 1 and float(row["dni_loss"]) > 0 and float(row["state_norm"]) > 0
        assert float(row["dni_pred_norm"]) >= 0 and float(row["dni_target_norm"]) > 0 and float(row["dni_rel_loss"]) > 0
    checkpoint = tmp_path / "checkpoint_last.pt"
    scored = fairseq("fairseq-eval-lm", tiny_data, "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                     "--path", checkpoint, "--batch-size", "1", "--tokens-per-sample", "9",
                     "--cpu", "--num-workers", "0")
    assert "Evaluated 257 tokens" in scored
    loss = float(re.search(r"Loss \(base 2\): ([\d.]+)", scored).group(1))
    text = os.path.join(os.path.dirname(tiny_data), "text", "test.txt")
    count, reference_loss, _ = perplexity(checkpoint, os.path.join(tiny_data, "dict.txt"), text)
    assert count == 257 and loss == pytest.approx(reference_loss, abs=6e-5)  # eval-lm prints 4 decimals
