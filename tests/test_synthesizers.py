"""The synthesizers (fairseq_dni/synthesizers/), alone and through dni_cross_entropy, torch only where possible."""
import os
import subprocess
import sys

import pytest
import torch

from fairseq_dni.carried_state import StateLayout
from fairseq_dni.synthesizers import build_synthesizer
from fairseq_dni.synthesizers.coordinatewise import CoordinatewiseSynthesizer
from fairseq_dni.synthesizers.mlp import MLPSynthesizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELLS = ["gru", "lstm", "qrnn"]


def trained(cell, seed=0, **kw):
    """A coordinate-wise synthesizer with a non-zero last layer (as after some training), noise off."""
    torch.manual_seed(seed)
    synth = CoordinatewiseSynthesizer(hidden=7, cell=cell, input_noise=0.0, **kw).double()
    torch.nn.init.normal_(synth.decoder.weight, std=0.5)
    torch.nn.init.normal_(synth.decoder.bias, std=0.5)
    return synth


def test_dni_maths_and_synthesizers_import_with_torch_alone():
    """`import fairseq_dni.dni` (and the synthesizers, the carried state, the stream layout) must not
    need fairseq: run in a fresh interpreter where importing fairseq fails."""
    code = (
        "import sys; sys.modules['fairseq'] = None\n"  # any 'import fairseq' now raises ImportError
        "import torch\n"
        "import fairseq_dni.dni, fairseq_dni.carried_state, fairseq_dni.data.stream_windows\n"
        "from fairseq_dni.synthesizers import build_synthesizer\n"
        "from fairseq_dni.carried_state import StateLayout\n"
        "for kind in ('mlp', 'coordinatewise'):\n"
        "    s = build_synthesizer(kind, StateLayout((4, 4)))\n"
        "    p, _ = s(torch.randn(3, 16))\n"
        "    assert p.shape == (3, 16) and not p.any()\n"
        "assert sys.modules['fairseq'] is None and not any(m.startswith('fairseq.') for m in sys.modules)\n"
        "print('torch-only ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch-only ok" in out.stdout


@pytest.mark.parametrize("kind", ["mlp", "coordinatewise"])
def test_fresh_synthesizer_predicts_exactly_zero(kind):
    synth = build_synthesizer(kind, StateLayout((5, 5))).train()  # training mode: noise on for coordinatewise
    state = torch.randn(4, 20) * 100
    own = synth.initial_own_state(state)
    for _ in range(3):
        prediction, own = synth(synth.perturb(state), None, own)
        assert torch.count_nonzero(prediction) == 0


@pytest.mark.parametrize("cell", CELLS)
def test_coordinatewise_permuting_coordinates_permutes_the_prediction(cell):
    synth = trained(cell)
    state = torch.randn(3, 10, dtype=torch.float64)
    perm = torch.randperm(10)
    own = synth.initial_own_state(state)
    out, new_own = synth(state, None, own)
    out_p, new_own_p = synth(state[:, perm], None, own)
    # equal to float64 rounding: the rows of the GRU/LSTM's batched matrix products land in other
    # SIMD blocks when permuted (measured: 1e-17 apart on this CPU); any mixing of coordinates would
    # differ by the size of the values
    exact = dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out_p, out[:, perm], **exact)
    # and its own state is permuted with them (rows are (stream, coordinate) pairs)
    rows = (torch.arange(3)[:, None] * 10 + perm[None, :]).reshape(-1)
    for a, b in zip(new_own, new_own_p):
        torch.testing.assert_close(b, a[:, rows], **exact)


@pytest.mark.parametrize("cell", CELLS)
def test_coordinatewise_streams_do_not_see_each_other(cell):
    synth = trained(cell)
    state = torch.randn(3, 10, dtype=torch.float64)
    own = synth.initial_own_state(state)
    other = state.clone()
    other[1:] = torch.randn(2, 10, dtype=torch.float64) * 50
    a, _ = synth(state, None, own)
    b, _ = synth(other, None, own)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert not torch.allclose(a[1:], b[1:])


@pytest.mark.parametrize("cell", CELLS)
def test_coordinatewise_carries_its_own_state(cell):
    """The second call depends on the first through the returned state, exactly as one 2-step run
    of the same recurrent network over each coordinate's history."""
    synth = trained(cell)
    s1, s2 = torch.randn(2, 2, 6, dtype=torch.float64)
    p1, z1 = synth(s1, None, synth.initial_own_state(s1))
    p2, _ = synth(s2, None, z1)
    fresh, _ = synth(s2, None, synth.initial_own_state(s2))
    assert not torch.allclose(p2, fresh)
    if cell == "gru":  # independent reference: torch's GRU over the 2-step sequence of every coordinate
        x = synth.encoder(torch.stack([s1, s2], -1).reshape(-1, 2, 1))
        y, _ = synth.rnn(x)
        torch.testing.assert_close(synth.decoder(y[:, 1]).reshape(2, 6), p2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("has_previous", [True, False])
def test_qrnn_cell_equals_its_formula(has_previous):
    """c_t = f c_{t-1} + (1 - f) z, h_t = o c_t, gates from [x_t, x_{t-1}] with x = encoder(s) (Bradbury
    et al. 2017), written out unfolded here; the synthesizer folds the encoder into the first layer's
    gates. After a reset (flag 0) x_{t-1} is zero."""
    synth = trained("qrnn")
    state = torch.randn(2, 3, dtype=torch.float64)
    c0 = torch.randn(1, 6, 7, dtype=torch.float64)
    s_prev = torch.randn(6, dtype=torch.float64) * has_previous
    prev = torch.stack([s_prev, torch.full_like(s_prev, float(has_previous))], -1).unsqueeze(0)
    out, (c1, prev1) = synth(state, None, (c0, prev))
    x = synth.encoder(state.reshape(6, 1))
    x_prev = synth.encoder(s_prev.reshape(6, 1)) if has_previous else torch.zeros_like(x)
    gates = torch.cat([x, x_prev], -1) @ synth.rnn[0].gates.weight.T + synth.rnn[0].gates.bias
    z, f, o = torch.tanh(gates[:, :7]), torch.sigmoid(gates[:, 7:14]), torch.sigmoid(gates[:, 14:])
    c = f * c0[0] + (1 - f) * z
    torch.testing.assert_close(c1[0], c, rtol=0, atol=1e-14)
    torch.testing.assert_close(prev1[0], torch.stack([state.reshape(6), torch.ones(6, dtype=torch.float64)], -1),
                               rtol=0, atol=0)
    torch.testing.assert_close(out, synth.decoder(o * c).reshape(2, 3), rtol=0, atol=1e-14)
    # the gradient reaches every parameter as through the unfolded layer
    ref = synth.decoder(o * c).sum()
    folded_grads = torch.autograd.grad(out.sum(), list(synth.parameters()))
    ref_grads = torch.autograd.grad(ref, list(synth.parameters()))
    for a, b in zip(folded_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_input_noise_is_multiplicative_with_the_configured_spread_and_only_in_training():
    synth = CoordinatewiseSynthesizer(input_noise=0.5)
    state = torch.full((200, 500), 2.0)
    torch.manual_seed(0)
    noisy = synth.train().perturb(state)
    factor = noisy / state
    assert abs(float(factor.mean()) - 1.0) < 0.01 and abs(float(factor.std()) - 0.5) < 0.01
    assert torch.equal(synth.eval().perturb(state), state)
    assert torch.equal(MLPSynthesizer(500).train().perturb(state), state)  # the MLP: no noise by default


def test_parameter_count_does_not_grow_with_the_lm():
    small = build_synthesizer("coordinatewise", StateLayout((8, 8)))
    large = build_synthesizer("coordinatewise", StateLayout((1150, 1150, 400), stacked=False))
    count = sum(p.numel() for p in small.parameters())
    assert count == sum(p.numel() for p in large.parameters()) == 15451  # GRU, 50 units


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="coordinatewise", hidden=0), "--dni-synthesizer-hidden must be >= 1"),
    (dict(kind="mlp", hidden=-1), "--dni-synthesizer-hidden must be >= 1"),
    (dict(kind="coordinatewise", input_noise=-0.1), "--dni-input-noise must be >= 0"),
    (dict(kind="mlp", layers=0), "--dni-synthesizer-layers must be >= 1"),
    (dict(kind="coordinatewise", condition_dim=8), "takes no condition"),
    (dict(kind="coordinatewise", cell="rnn"), "unknown --dni-synthesizer-cell"),
    (dict(kind="mlp", cell="qrnn"), "--dni-synthesizer-cell applies to --dni-synthesizer coordinatewise only"),
])
def test_settings_that_do_not_apply_are_refused(kwargs, message):
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=message):
        build_synthesizer(kind, StateLayout((4, 4)), **kwargs)
