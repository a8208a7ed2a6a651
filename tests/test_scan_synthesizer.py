"""The forget-mult scan (fairseq_dni/modules/forget_mult.py) and the scan synthesizer
(fairseq_dni/synthesizers/scan.py, ``--dni-synthesizer scan``) against sequential references
written here, as torchqrnn's ``CPUForgetMult`` loop and the paper's ``RNNSynthesizer`` compute them."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from helpers import USER_DIR, assert_same_weights, build_dni, fairseq, run_window, train_args, train_inner
from fairseq_dni.carried_state import StateLayout
from fairseq_dni.data.stream_windows import StreamWindows
from fairseq_dni.modules.forget_mult import forget_mult, forget_mult_autograd, linear_scan
from fairseq_dni.synthesizers import build_synthesizer
from fairseq_dni.synthesizers import scan as scan_module
from fairseq_dni.synthesizers.scan import ScanSynthesizer, keep_threshold

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (3, 2)          # a 2-layer LSTM of widths 3 and 2: D = 10
D = 2 * sum(SIZES)


# ---- forget-mult ---------------------------------------------------------------------------------
def loop_forget_mult(f, z, c0):
    """c_t = f_t z_t + (1 - f_t) c_{t-1}, one step at a time."""
    c, out = c0, []
    for t in range(f.size(0)):
        c = f[t] * z[t] + (1 - f[t]) * c
        out.append(c)
    return torch.stack(out)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 8, 33])
@pytest.mark.parametrize("fn", [forget_mult, forget_mult_autograd])
@pytest.mark.parametrize("given_c0", [True, False])
def test_forget_mult_values_and_gradients_equal_a_loop(steps, fn, given_c0):
    g = torch.Generator().manual_seed(steps)
    f = torch.rand(steps, 2, 3, generator=g, dtype=torch.float64).requires_grad_()
    z = torch.randn(steps, 2, 3, generator=g, dtype=torch.float64).requires_grad_()
    c0 = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_() if given_c0 else None
    weights = torch.randn(steps, 2, 3, generator=g, dtype=torch.float64)
    inputs = (f, z) + ((c0,) if given_c0 else ())
    ref = loop_forget_mult(f, z, c0 if given_c0 else torch.zeros(2, 3, dtype=torch.float64))
    out = fn(f, z, c0)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad((out * weights).sum(), inputs),
                    torch.autograd.grad((ref * weights).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_into_a_buffer_and_in_reverse_equals_a_loop(reverse):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(13, 4, generator=g, dtype=torch.float64), torch.randn(13, 4, generator=g, dtype=torch.float64)
    c0 = torch.randn(4, generator=g, dtype=torch.float64)
    c, ref = c0, torch.empty_like(b)
    for t in (reversed(range(13)) if reverse else range(13)):
        c = a[t] * c + b[t]
        ref[t] = c
    torch.testing.assert_close(linear_scan(a, b, c0, reverse=reverse), ref, rtol=1e-12, atol=1e-12)
    out = torch.full((13, 2, 4), float("nan"), dtype=torch.float64)[:, 1]   # a strided view
    linear_scan(a, b, c0, reverse=reverse, out=out)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_keep_threshold_keeps_one_minus_zoneout_of_the_int32_range():
    for zoneout in (0.0, 0.1, 0.25, 0.5):
        threshold = keep_threshold(zoneout)
        assert abs((2 ** 31 - threshold) / 2 ** 32 - (1 - zoneout)) <= 2 ** -32
        values = torch.tensor([threshold - 1, threshold, 2 ** 31 - 1], dtype=torch.int64).clamp(-2 ** 31, 2 ** 31 - 1)
        kept = (values.to(torch.int32) >= threshold).tolist()
        assert kept == [zoneout == 0.0, True, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forget_mult_is_finite_with_gates_at_exactly_zero_and_one(dtype):
    """No division anywhere: f = 1 (a = 0: the state is reset) and f = 0 (kept) are exact."""
    f = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0] * 40, dtype=dtype).view(-1, 1)
    z = torch.arange(200, dtype=dtype).view(-1, 1)
    out = forget_mult(f.requires_grad_(), z.requires_grad_(), torch.full((1,), 5.0, dtype=dtype))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(f.grad).all() and torch.isfinite(z.grad).all()
    ref = loop_forget_mult(f.detach().double(), z.detach().double(), torch.full((1,), 5.0, dtype=torch.float64))
    assert torch.equal(out.detach().double(), ref)   # each value is one of the z's: exact in any dtype


def test_forget_mult_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        forget_mult(torch.rand(4, 2), torch.rand(4, 3))
    with pytest.raises(ValueError, match="does not match one step"):
        forget_mult(torch.rand(4, 2), torch.rand(4, 2), torch.zeros(3))


# ---- the scan synthesizer against the paper's computation, one scalar at a time ------------------
def paper_synthesizer(synth, state, own, masks, training):
    """RNNSynthesizer.forward with torchqrnn's QRNNLayer, written out one position at a time:
    join_hidden's order (h_0, c_0, h_1, c_1, ...) per stream, streams one after another (or one
    sequence per stream), x = encoder(s), layer 0 sees [x_t, x_{t-1}], zoneout on f, the cell
    carried. Returns (prediction in our flat order, cells, last input)."""
    h_part, c_part = state[:, :D // 2].split(SIZES, dim=1), state[:, D // 2:].split(SIZES, dim=1)
    joined = torch.cat([t for pair in zip(h_part, c_part) for t in pair], dim=1)     # (B, D) the paper's order
    sequences = [row for row in joined] if synth.per_stream else [joined.reshape(-1)]
    cells, previous, _ = own
    outputs, new_cells, new_previous = [], [], []
    for s, seq in enumerate(sequences):
        c = [cells[layer, s] for layer in range(synth.layers)]
        x_before = previous[s]
        out = []
        for t in range(seq.numel()):
            x = synth.encoder(seq[t].view(1))
            inp = x
            for layer, rnn in enumerate(synth.rnns):
                source = torch.cat([inp, x_before]) if layer == 0 else inp
                z, f, o = rnn.linear(source).chunk(3)
                z, f = torch.tanh(z), torch.sigmoid(f)
                if training and synth.zoneout > 0:
                    f = f * masks[layer][t, s]
                elif synth.zoneout > 0:
                    f = f * (1 - synth.zoneout)
                c[layer] = f * z + (1 - f) * c[layer]
                inp = torch.sigmoid(o) * c[layer]
            x_before = x
            out.append(synth.decoder(inp))
        outputs.append(torch.cat(out))
        new_cells.append(torch.stack(c))
        new_previous.append(x_before)
    paper = torch.stack(outputs) if synth.per_stream else outputs[0].view_as(joined)
    # back to our order: h of every layer, then c of every layer
    pieces = paper.split([size for size in SIZES for _ in range(2)], dim=1)
    ours = torch.cat(list(pieces[0::2]) + list(pieces[1::2]), dim=1)
    return ours, torch.stack(new_cells, dim=1), torch.stack(new_previous)


@pytest.fixture(params=["cpu kernel", "torch"])
def backend(request, monkeypatch):
    """The one-layer scan on a CPU runs scan_cpu.cpp; without it (CUDA, no compiler) torch's ops."""
    if request.param == "torch":
        monkeypatch.setattr(scan_module, "cpu_kernels", lambda: None)
    else:
        assert scan_module.cpu_kernels() is not None, "scan_cpu.cpp did not build here"
    return request.param


def random_synth(layers=1, zoneout=0.1, per_stream=False, hidden=4, seed=0):
    torch.manual_seed(seed)
    synth = ScanSynthesizer(StateLayout(SIZES).join_order, hidden=hidden, layers=layers, input_noise=0.0, zoneout=zoneout,
                            init="paper", per_stream=per_stream).double()
    for p in synth.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return synth


@pytest.mark.parametrize("per_stream", [False, True])
@pytest.mark.parametrize("zoneout", [0.0, 0.1])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_scan_synthesizer_equals_the_papers_sequential_computation(layers, zoneout, per_stream, training, backend):
    """Two consecutive calls (the second from the first's own state), values and gradients."""
    synth = random_synth(layers, zoneout, per_stream).train(training)
    batch = 3
    own = synth.initial_own_state(torch.zeros(batch, D, dtype=torch.float64))
    ref_own = own
    for call in range(2):
        state = torch.randn(batch, D, dtype=torch.float64, requires_grad=True)
        masks = None
        if training and zoneout > 0:
            sequences = batch if per_stream else 1
            masks, _ = synth.zoneout_masks(own[2], (D * batch // sequences, sequences, synth.hidden), state)
            assert 0 < sum(float((m == 0).sum()) for m in masks) < 0.5 * sum(m.numel() for m in masks)
        prediction, new_own = synth(state, None, own)
        ref, ref_cells, ref_previous = paper_synthesizer(synth, state, ref_own, masks, training)
        torch.testing.assert_close(prediction, ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(new_own[0], ref_cells, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(new_own[1], ref_previous, rtol=1e-10, atol=1e-10)
        weights = torch.randn_like(ref)
        inputs = [state] + list(synth.parameters())
        for a, b in zip(torch.autograd.grad((prediction * weights).sum(), inputs),
                        torch.autograd.grad((ref * weights).sum(), inputs)):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        own = new_own
        ref_own = (ref_cells.detach(), ref_previous.detach(), new_own[2])


def jacobian(synth, state, own):
    return torch.autograd.functional.jacobian(lambda s: synth(s, None, own)[0].reshape(-1), state).reshape(
        state.numel(), state.numel())


def test_each_output_depends_on_exactly_the_scalars_before_it_across_streams(backend):
    """Eval mode, random weights, hidden 8, 1 layer: in the paper's order, output k depends on inputs
    0..k exactly (so the B*D outputs depend on 1, 2, ..., B*D inputs), across h, c, layers and streams;
    and the previous call's input changes the next call's output."""
    torch.manual_seed(0)
    synth = build_synthesizer("scan", StateLayout(SIZES), hidden=8, layers=1, input_noise=0.0).double().eval()
    for p in synth.parameters():
        torch.nn.init.normal_(p, std=0.5)
    batch = 3
    state = torch.randn(batch, D, dtype=torch.float64)
    own = synth.initial_own_state(state)
    jac = jacobian(synth, state, own)
    counts = sorted((jac != 0).sum(dim=1).tolist())
    assert counts == list(range(1, batch * D + 1))
    position = synth.order.repeat(batch) + torch.arange(batch).repeat_interleave(D) * D   # paper position -> ours
    ordered = jac[position][:, position]
    assert torch.equal(ordered != 0, torch.ones_like(ordered, dtype=torch.bool).tril())
    # the next call sees this call's last scalar (layer 0's window 2) and last cell state
    _, after = synth(state, None, own)
    last = torch.zeros_like(state)
    last[-1, synth.order[-1]] = 1.0                       # the sequence's last scalar: the last stream's last c
    _, after_other = synth(state + last, None, own)
    following = torch.randn(batch, D, dtype=torch.float64)
    assert not torch.equal(synth(following, None, after)[0], synth(following, None, after_other)[0])
    zero_previous = (after[0], torch.zeros_like(after[1]), after[2])
    assert not torch.equal(synth(following, None, after)[0], synth(following, None, zero_previous)[0])


def test_per_stream_scan_keeps_each_stream_to_itself(backend):
    synth = random_synth(per_stream=True).eval()
    batch = 3
    state = torch.randn(batch, D, dtype=torch.float64)
    jac = jacobian(synth, state, synth.initial_own_state(state)).reshape(batch, D, batch, D)
    for b in range(batch):
        for other in range(batch):
            assert bool(jac[b, :, other].any()) == (b == other)
    assert sorted((jac[0, :, 0] != 0).sum(dim=1).tolist()) == list(range(1, D + 1))


def test_the_cpu_kernel_in_float32_equals_torchs_ops_in_float64_at_2000_positions():
    """The paper's size per stream, float32 through scan_cpu.cpp against the same synthesizer in float64
    on torch's ops: values and every gradient to float32's rounding (the kernel sums 2,000 rows)."""
    layout = StateLayout((250, 250))
    torch.manual_seed(0)
    synth = build_synthesizer("scan", layout, init="paper").train()
    for p in synth.parameters():
        torch.nn.init.normal_(p, std=0.3)
    reference = copy.deepcopy(synth).double()
    state = torch.randn(2, layout.dim)
    own = synth.initial_own_state(state)
    assert scan_module.cpu_kernels() is not None
    out, new_own = synth(state, None, own)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), list(synth.parameters()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scan_module, "cpu_kernels", lambda: None)
        ref, ref_own = reference(state.double(), None, tuple(t.double() for t in own))
        ref_grads = torch.autograd.grad((ref * weights.double()).sum(), list(reference.parameters()))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new_own[0].double(), ref_own[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_without_a_cpu_kernel_the_scan_runs_on_torch_and_says_so_once(monkeypatch, caplog):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'fairseq_dni_scan_cpu': [1/2] c++ -MMD -c scan_cpu.cpp -o "
                           "scan_cpu.o\nFAILED: [code=127] scan_cpu.o\nc++ -MMD -c scan_cpu.cpp -o scan_cpu.o\n"
                           "/bin/sh: 1: c++: not found\nninja: build stopped: subcommand failed.\n")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(scan_module, "_KERNELS", {})
    synth = random_synth()
    state = torch.randn(2, D, dtype=torch.float64)
    own = synth.initial_own_state(state)
    with caplog.at_level("WARNING", logger=scan_module.logger.name):
        first, _ = synth(state, None, own)
        second, _ = synth(state, None, own)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "(Error building extension 'fairseq_dni_scan_cpu': /bin/sh: 1: c++: not found)" in warnings[0]
    assert torch.equal(first, second) and scan_module._KERNELS == {"module": None}


def test_zoneout_masks_replay_from_the_own_state_and_move_on():
    synth = random_synth(zoneout=0.1).train()
    state = torch.randn(2, D, dtype=torch.float64)
    own = synth.initial_own_state(state)
    first, new_own = synth(state, None, own)
    again, new_again = synth(state, None, own)
    assert torch.equal(first, again) and all(torch.equal(a, b) for a, b in zip(new_own, new_again))
    assert not torch.equal(new_own[2], own[2])          # the next call draws other masks
    synth.work.recent.clear()                           # the masks follow from the seed alone
    drawn_again, new_drawn_again = synth(state, None, own)
    assert torch.equal(drawn_again, first) and torch.equal(new_drawn_again[2], new_own[2])
    assert not torch.equal(synth(state, None, (own[0], own[1], new_own[2]))[0], first)


def test_zoneout_keeps_a_forget_gate_with_probability_0_9():
    synth = ScanSynthesizer(StateLayout(SIZES).join_order, layers=2, zoneout=0.1)
    seed = torch.tensor([1.0, 2.0, 3.0])
    masks, _ = synth.zoneout_masks(seed, (2000, 1, 50), torch.zeros(1))
    for mask in masks:   # 100,000 draws each: the standard error of the mean is 0.001
        assert set(mask.unique().tolist()) == {0.0, 1.0} and abs(float(mask.mean()) - 0.9) < 0.004
    assert not torch.equal(masks[0], masks[1])


def test_fresh_scan_synthesizer_predicts_zero_and_the_papers_init_does_not():
    state = torch.randn(4, D) * 10
    zero = build_synthesizer("scan", StateLayout(SIZES)).train()
    paper = build_synthesizer("scan", StateLayout(SIZES), init="paper").train()
    assert torch.count_nonzero(zero(zero.perturb(state), None, zero.initial_own_state(state))[0]) == 0
    assert torch.count_nonzero(paper(paper.perturb(state), None, paper.initial_own_state(state))[0]) == state.numel()
    bound = paper.decoder.weight.abs().max()
    assert 0 < bound <= 0.1 and paper.encoder.weight.abs().max() <= 0.1 and not paper.decoder.bias.any()


@pytest.mark.parametrize("kind,kwargs,message", [
    ("mlp", dict(init="paper"), "--dni-synthesizer-init applies to --dni-synthesizer scan only"),
    ("coordinatewise", dict(per_stream=True), "--dni-scan-per-stream applies to --dni-synthesizer scan only"),
    ("scan", dict(cell="qrnn"), "--dni-synthesizer-cell applies to --dni-synthesizer coordinatewise only"),
    ("scan", dict(condition_dim=4), "takes no condition"),
    ("scan", dict(init="uniform"), "unknown --dni-synthesizer-init"),
    ("scan", dict(hidden=0), "--dni-synthesizer-hidden must be >= 1"),
])
def test_settings_that_do_not_apply_are_refused(kind, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_synthesizer(kind, StateLayout(SIZES), **kwargs)


def test_a_second_forward_before_the_first_backward_is_refused_not_silently_wrong():
    """The one-layer path keeps its saved tensors in reused buffers: autograd's version check must
    catch a second forward that overwrote them before the first's backward."""
    synth = build_synthesizer("scan", StateLayout(SIZES), init="paper").train()
    state = torch.randn(2, D)
    own = synth.initial_own_state(state)
    first, _ = synth(state, None, own)
    synth(state * 2, None, own)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.sum().backward()


def test_a_state_of_another_width_is_refused():
    synth = build_synthesizer("scan", StateLayout(SIZES))
    with pytest.raises(ValueError, match="states of width 10"):
        synth(torch.zeros(2, 12))


# ---- through dni_cross_entropy ----------------------------------------------------------------------
B, T, HIDDEN = 3, 5, 6


def criterion_setup(scale=0.1, **dni):
    from fairseq.data import Dictionary
    dictionary = Dictionary()
    for i in range(20):
        dictionary.add_symbol(f"w{i}")
    torch.manual_seed(0)
    _, model, criterion = build_dni(
        dictionary, dict(decoder_embed_dim=4, decoder_hidden_size=HIDDEN, decoder_layers=2, dropout=0.0),
        dict(dni_scale=scale, sentence_avg=False, dni_synthesizer="scan", **dni))
    model.train()
    criterion.train()
    tokens = torch.randint(4, len(dictionary), (200,), generator=torch.Generator().manual_seed(1)).numpy()
    windows = StreamWindows(tokens, B, T, dictionary.pad(), dictionary.eos(), state_key="train")
    return model, criterion, [windows.collater([windows[i]]) for i in range(len(windows))]


def step(model, criterion, sample, mode="synthetic"):
    for p in list(model.parameters()) + list(criterion.parameters()):
        p.grad = None
    run_window(model, criterion, sample, mode)
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("per_stream", [False, True])
def test_the_regression_re_evaluates_exactly_the_injected_call(per_stream):
    """Input noise and zoneout on: the prediction regressed at window t+2 is bitwise the one injected
    at window t's end; the own state runs on from call to call and restarts with a new pass."""
    model, criterion, samples = criterion_setup(dni_synthesizer_init="paper", dni_scan_per_stream=per_stream)
    calls = []
    synthesize = criterion.synthesize
    criterion.synthesize = lambda x, c, own: calls.append((x, own, synthesize(x, c, own))) or calls[-1][2]
    for w in range(4):
        step(model, criterion, samples[w])
    for made, regressed in ((calls[0], calls[2]), (calls[1], calls[4])):
        assert torch.equal(regressed[0], made[0])
        assert torch.equal(regressed[2][0], made[2][0])
        assert regressed[2][0].requires_grad and not made[2][0].requires_grad
    for before, after in ((calls[0], calls[1]), (calls[1], calls[3]), (calls[3], calls[5])):
        assert all(torch.equal(a, b) for a, b in zip(before[2][1], after[1]))
    assert calls[0][1][0].shape == (1, B if per_stream else 1, 50)
    step(model, criterion, samples[0])     # a new pass: cells and previous input restart from zeros
    assert not calls[-1][1][0].any() and not calls[-1][1][1].any()


def test_oracle_injection_through_the_criterion_equals_full_bptt():
    """With --dni-synthesizer scan built, a synthesizer returning the true future gradient makes two
    windows' gradient equal full BPTT's (the criterion's maths does not depend on the synthesizer)."""
    model, criterion, samples = criterion_setup(scale=1.0)
    flatten = StateLayout((HIDDEN, HIDDEN)).flatten

    def lm_window(sample, state):
        out, extra = model(sample["net_input"]["src_tokens"], start_state=state)
        lp = model.get_normalized_probs((out, extra), log_probs=True)
        return torch.nn.functional.nll_loss(lp.view(-1, lp.size(-1)), sample["target"].view(-1), ignore_index=1,
                                            reduction="sum"), extra["final_state"]

    l1, s1 = lm_window(samples[0], model.decoder.zero_state(B))
    l2, _ = lm_window(samples[1], s1)
    full = torch.autograd.grad(l1 + l2, list(model.parameters()))
    s1_leaf = tuple(s.detach().requires_grad_(True) for s in s1)
    oracle = flatten(torch.autograd.grad(lm_window(samples[1], s1_leaf)[0], s1_leaf))
    assert isinstance(criterion.synthesizer, ScanSynthesizer)
    criterion.synthesize = lambda state, condition, own_state: (oracle, None)
    g1 = step(model, criterion, samples[0])
    g2 = step(model, criterion, samples[1], mode="real")
    num = sum(((a + b - f) ** 2).sum() for a, b, f in zip(g1, g2, full)).sqrt()
    assert (num / sum((f ** 2).sum() for f in full).sqrt()).item() < 1e-8


def test_fairseq_train_with_the_scan_synthesizer_resumes_bitwise_and_eval_lm_scores_it(tiny_data, tmp_path):
    """Stock fairseq-train with --dni-synthesizer scan (noise and zoneout on, the paper's init); stopped
    at update 6 and restarted with the same command it ends bitwise where one run of 12 updates ends
    (the scan's carried cells, previous input and zoneout seed travel in the checkpoint); eval-lm
    scores the checkpoint."""
    scan = ["--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--dni-lr", "0.01",
            "--dni-synthesizer", "scan", "--dni-synthesizer-init", "paper"]
    whole = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "whole", "--max-update", "12", *scan))
    logs = train_inner(whole)
    assert float(logs[-1]["dni_synthetic"]) == 1 and float(logs[-1]["dni_nonfinite"]) == 0
    assert "dni_cos" in logs[-1]
    fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "split", "--max-update", "6", *scan))
    resumed = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "split", "--max-update", "12", *scan))
    assert "Loaded checkpoint" in resumed
    by_update = {int(r["num_updates"]): r for r in logs}
    for row in train_inner(resumed):
        for key in ("loss", "dni_loss", "dni_cos"):
            assert row.get(key) == by_update[int(row["num_updates"])].get(key), (row["num_updates"], key)
    assert_same_weights(tmp_path / "whole" / "checkpoint_last.pt", tmp_path / "split" / "checkpoint_last.pt",
                        parts=("model", "criterion"))
    checkpoint = torch.load(tmp_path / "whole" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert "synthesizer.rnns.0.linear.weight" in checkpoint["criterion"]
    scored = fairseq("fairseq-eval-lm", tiny_data, "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                     "--path", tmp_path / "whole" / "checkpoint_last.pt", "--batch-size", "2",
                     "--tokens-per-sample", "9", "--cpu", "--num-workers", "0")
    assert "Evaluated 257 tokens" in scored


def test_the_scan_synthesizer_imports_and_runs_with_torch_alone():
    code = (
        "import sys; sys.modules['fairseq'] = None\n"
        "import torch\n"
        "from fairseq_dni.synthesizers import build_synthesizer\n"
        "from fairseq_dni.carried_state import StateLayout\n"
        "s = build_synthesizer('scan', StateLayout((4, 4)), init='paper').train()\n"
        "p, own = s(s.perturb(torch.randn(3, 16)))\n"
        "p.sum().backward()\n"
        "assert p.shape == (3, 16) and own[0].shape == (1, 1, 50)\n"
        "assert not any(m.startswith('fairseq.') for m in sys.modules)\n"
        "print('torch-only ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch-only ok" in out.stdout
