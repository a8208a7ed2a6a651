"""The DNI mathematics (fairseq_dni/dni.py) against autograd references, in float64."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_dni.carried_state import StateLayout
from fairseq_dni.dni import bootstrapped_target, synthetic_gradient_term
from fairseq_dni.synthesizers.mlp import MLPSynthesizer

LAYERS, HIDDEN, VOCAB, B, T = 2, 5, 11, 3, 4
flatten_state = StateLayout((HIDDEN,) * LAYERS).flatten


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 4)
        self.lstm = nn.LSTM(4, HIDDEN, LAYERS, batch_first=True)
        self.out = nn.Linear(HIDDEN, VOCAB)

    def window(self, x, y, state):
        h, state = self.lstm(self.embed(x), state)
        return F.cross_entropy(self.out(h).reshape(-1, VOCAB), y.reshape(-1), reduction="sum"), state


def data(windows=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (B, T * windows), generator=g)
    y = torch.randint(0, VOCAB, (B, T * windows), generator=g)
    return [(x[:, i * T:(i + 1) * T], y[:, i * T:(i + 1) * T]) for i in range(windows)]


def zero_state():
    return tuple(torch.zeros(LAYERS, B, HIDDEN, dtype=torch.float64) for _ in range(2))


def grads(model, scalar):
    return torch.autograd.grad(scalar, list(model.parameters()), allow_unused=False)


def rel_err(a, b):
    num = torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b)))
    den = torch.sqrt(sum((y ** 2).sum() for y in b))
    return (num / den).item()


def leaf(state):
    return tuple(s.detach().clone().requires_grad_(True) for s in state)


def test_flatten_layout():
    h, c = torch.randn(LAYERS, B, HIDDEN), torch.randn(LAYERS, B, HIDDEN)
    flat = flatten_state((h, c))
    assert flat.shape == (B, 2 * LAYERS * HIDDEN)
    torch.testing.assert_close(flat[1, :HIDDEN], h[0, 1])  # stream 1, layer 0's h first
    # h of every layer, then c of every layer, per stream
    assert torch.equal(flat, torch.cat([h[0], h[1], c[0], c[1]], dim=-1))


def test_oracle_synthetic_gradient_makes_window_one_equal_full_bptt():
    model = TinyLM().double()
    (x1, y1), (x2, y2) = data(2)
    # full BPTT over both windows
    l1, s1 = model.window(x1, y1, zero_state())
    l2, _ = model.window(x2, y2, s1)
    full = grads(model, l1 + l2)
    # the exact future gradient at the end of window 1, by unrolling window 2
    s1_leaf = leaf(s1)
    l2_again, _ = model.window(x2, y2, s1_leaf)
    oracle = flatten_state(torch.autograd.grad(l2_again, s1_leaf))
    # window 1 with the oracle injected (scale 1) + window 2 with no gradient into the past
    l1, s1 = model.window(x1, y1, zero_state())
    window1 = grads(model, l1 + synthetic_gradient_term(flatten_state(s1), oracle, scale=1.0))
    l2, _ = model.window(x2, y2, tuple(s.detach() for s in s1))
    window2 = grads(model, l2)
    assert rel_err([a + b for a, b in zip(window1, window2)], full) < 1e-8
    # and without the injection (plain TBPTT) the two differ clearly
    l1, _ = model.window(x1, y1, zero_state())
    assert rel_err([a + b for a, b in zip(grads(model, l1), window2)], full) > 1e-3


def test_bootstrapped_target_equals_an_independent_autograd_reference():
    model = TinyLM().double()
    synth = MLPSynthesizer(2 * LAYERS * HIDDEN, 7).double()
    nn.init.normal_(synth.net[-1].weight, std=0.1)  # a non-trivial synthesizer
    (x1, y1), (x2, y2) = data(2)
    _, s1 = model.window(x1, y1, zero_state())
    s1 = leaf(s1)
    scale = 0.1
    # what the method computes: backward of window 2's loss + its own injected synthetic gradient
    l2, s2 = model.window(x2, y2, s1)
    pred2, _ = synth(flatten_state(s2).detach())
    (l2 + synthetic_gradient_term(flatten_state(s2), pred2, scale)).backward()
    target = bootstrapped_target(flatten_state(tuple(s.grad for s in s1)))
    # reference: d/ds1 of [L2(s1) + scale * <s2(s1), M(s2(s1)) held constant>]
    s1_ref = leaf(s1)
    l2r, s2r = model.window(x2, y2, s1_ref)
    m = synth(flatten_state(s2r))[0].detach()
    ref = torch.autograd.grad(l2r + scale * (flatten_state(s2r) * m).sum(), s1_ref)
    torch.testing.assert_close(target, flatten_state(ref).float(), rtol=1e-6, atol=1e-7)
    # the bootstrap term matters: without it the target differs
    s1_plain = leaf(s1)
    plain = flatten_state(torch.autograd.grad(model.window(x2, y2, s1_plain)[0], s1_plain))
    assert not torch.allclose(plain.float(), target, atol=1e-6)


def test_fresh_synthesizer_injects_nothing():
    model = TinyLM().double()
    synth = MLPSynthesizer(2 * LAYERS * HIDDEN, 7).double()
    (x1, y1), = data(1)
    l1, s1 = model.window(x1, y1, zero_state())
    pred, _ = synth(flatten_state(s1).detach())
    assert torch.count_nonzero(pred) == 0
    synthetic = grads(model, l1 + synthetic_gradient_term(flatten_state(s1), pred, scale=0.1))
    l1, s1 = model.window(x1, y1, zero_state())
    real = grads(model, l1)
    for a, b in zip(synthetic, real):
        assert torch.equal(a, b)


@pytest.mark.parametrize("loss_scale", [1.0, 128.0, 2.0 ** 15])
def test_target_is_the_unscaled_gradient_under_loss_scaling(loss_scale):
    """fp16/AMP multiply the loss by a scale before backward; the target must not see it."""
    model = TinyLM().double()
    (x1, y1), (x2, y2) = data(2)
    _, s1 = model.window(x1, y1, zero_state())
    unscaled, scaled = leaf(s1), leaf(s1)
    model.window(x2, y2, unscaled)[0].backward()
    (loss_scale * model.window(x2, y2, scaled)[0]).backward()
    a = bootstrapped_target(flatten_state(tuple(s.grad for s in unscaled)))
    b = bootstrapped_target(flatten_state(tuple(s.grad for s in scaled)), loss_scale=loss_scale)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_bf16_autocast_target_close_to_float32():
    """Under CPU bf16 autocast the unscaled target still points the same way as float32's."""
    model = TinyLM().float()
    (x1, y1), (x2, y2) = data(2)
    _, s1 = model.window(x1, y1, tuple(s.float() for s in zero_state()))
    ref, low = leaf(s1), leaf(s1)
    model.window(x2, y2, ref)[0].backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.window(x2, y2, low)[0]
    (1024.0 * loss.float()).backward()
    a = bootstrapped_target(flatten_state(tuple(s.grad for s in ref)))
    b = bootstrapped_target(flatten_state(tuple(s.grad for s in low)), loss_scale=1024.0)
    assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    assert (b.norm() / a.norm() - 1).abs() < 0.05


def test_target_has_zero_mean_when_the_data_follow_the_model():
    """Why an unconditioned synthesizer cannot reach a high cosine on a well-trained LM: if the
    next window's tokens are drawn from the model itself, the expected true gradient at the
    window's start is exactly zero (score-function identity: E_x[grad log p(x|s)] = 0); its
    conditional mean is only the model's miscalibration. Knowing the next window's first token
    (--dni-condition-on-next-target) leaves a non-zero conditional mean to learn.
    Exhaustive over every 2-token window of a 4-word vocabulary, float64."""
    torch.manual_seed(0)
    vocab, hidden = 4, 3
    embed, lstm, out = nn.Embedding(vocab, hidden).double(), nn.LSTM(hidden, hidden).double(), nn.Linear(hidden, vocab).double()
    s = (torch.randn(1, 1, hidden, dtype=torch.float64), torch.randn(1, 1, hidden, dtype=torch.float64))
    first_input = torch.tensor([2])

    def window(x1, x2):
        """-log p(x1, x2 | s) and its gradient with respect to the start state (h and c)."""
        start = tuple(t.clone().requires_grad_(True) for t in s)
        y, _ = lstm(embed(torch.stack([first_input, torch.tensor([x1])])), start)
        logp = torch.log_softmax(out(y[:, 0]), -1)
        nll = -(logp[0, x1] + logp[1, x2])
        grads = torch.autograd.grad(nll, start)
        return nll.detach(), torch.cat([g.flatten() for g in grads])

    expected = torch.zeros(2 * hidden, dtype=torch.float64)
    given_first = {}
    for x1 in range(vocab):
        for x2 in range(vocab):
            nll, grad = window(x1, x2)
            expected += torch.exp(-nll) * grad
            given_first[x1] = given_first.get(x1, 0) + torch.exp(-nll) * grad
    assert expected.abs().max() < 1e-14
    # conditioned on the first target, the mean is not zero (the part a cDNI synthesizer can learn)
    assert max(float(g.norm()) for g in given_first.values()) > 1e-2
