"""Linear CKA and SVCCA (fairseq_dni/representations.py) and ``python -m fairseq_dni.representations``.

* values worked out by hand on small matrices (written out below), and the defining properties:
  1 for a matrix with itself, unchanged by an orthogonal transform and an isotropic scaling, the same
  when the two sides swap; bad shapes and constant matrices are one-line errors;
* the hidden states read through one-token windows are the LSTM's per-time-step outputs: the last
  layer's equal the model's own outputs over the whole text as one window;
* the command prints ``layer L cka 1.0000 svcca 1.0000`` for a checkpoint against itself, below 1 for
  two different checkpoints.
"""
import math
import re

import pytest
import torch

from fairseq_dni.errors import DNIUserError
from fairseq_dni.representations import canonical_correlations, hidden_states, linear_cka, main, svcca


def test_one_dimensional_values_by_hand():
    # x = 1, 2, 3, 4 -> centred -1.5, -0.5, 0.5, 1.5 (sum of squares 5)
    # y = 1, 4, 9, 16 -> mean 7.5, centred -6.5, -3.5, 1.5, 8.5 (sum of squares 129); x.y = 25
    # CKA = (x.y)^2 / (|x|^2 |y|^2) = 625 / 645; SVCCA with one unit each = |correlation| = 25 / sqrt(645)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[1.0], [4.0], [9.0], [16.0]])
    assert linear_cka(x, y) == pytest.approx(625 / 645, rel=1e-12)
    assert svcca(x, y) == pytest.approx(25 / math.sqrt(645), rel=1e-12)


def test_two_dimensional_values_by_hand():
    # X's columns centred and orthogonal, X^T X = 2 I (Frobenius norm 2 sqrt 2); Y keeps X's first
    # column and zeroes the second: Y^T Y = diag(2, 0) (norm 2), Y^T X = diag(2, 0) (squared norm 4).
    # CKA = 4 / (2 sqrt 2 * 2) = 1 / sqrt 2. Y's one direction lies in X's plane: SVCCA = 1.
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert linear_cka(x, y) == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    assert canonical_correlations(x, y).tolist() == pytest.approx([1.0])
    assert svcca(x, y) == pytest.approx(1.0)


def random_pair(seed=0, n=60):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(6, 4, generator=g, dtype=torch.float64)) + 0.5 * torch.randn(n, 4, generator=g,
                                                                                                 dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("measure", [linear_cka, svcca], ids=["cka", "svcca"])
def test_invariances(measure):
    x, y = random_pair()
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    reference = measure(x, y)
    assert 0 < reference < 1
    assert measure(x, x) == pytest.approx(1.0, abs=1e-12)
    assert measure(x @ q, y) == pytest.approx(reference, rel=1e-9)           # orthogonal transform
    assert measure(3.7 * x, 0.2 * y) == pytest.approx(reference, rel=1e-9)   # isotropic scaling
    assert measure(x + 5.0, y - 2.0) == pytest.approx(reference, rel=1e-9)   # a shift (both centre)
    assert measure(y, x) == pytest.approx(reference, rel=1e-9)


def test_cka_is_not_invariant_to_an_anisotropic_scaling():
    """Kornblith et al.'s point against CCA: stretching one unit changes CKA (SVCCA keeps all units' span)."""
    x, y = random_pair()
    stretch = torch.tensor([10.0, 1, 1, 1, 1, 1], dtype=torch.float64)
    assert abs(linear_cka(x * stretch, y) - linear_cka(x, y)) > 1e-3


def test_bad_input_is_one_line():
    x, y = random_pair()
    with pytest.raises(DNIUserError, match="same samples"):
        linear_cka(x, y[:-1])
    with pytest.raises(DNIUserError, match="no variance"):
        linear_cka(torch.ones(5, 2), torch.randn(5, 2))
    with pytest.raises(DNIUserError, match="no variance"):
        svcca(torch.ones(5, 2), torch.randn(5, 2))


def test_hidden_states_are_the_lstm_outputs_at_every_step(tiny_data, tiny_checkpoint):
    """Read through one-token windows (10 streams), the last layer's states equal the model's own outputs
    over each stream as one window."""
    from fairseq import checkpoint_utils

    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([str(tiny_checkpoint)])
    task.load_dataset("valid")
    layers = hidden_states(model, task, "valid", streams=1)
    assert [tuple(h.shape) for h in layers] == [(300, 16), (300, 16)]  # 300 valid tokens, 2 layers of 16
    task.cfg.tokens_per_sample = 1000  # the whole split in one window
    (sample,) = list(task.get_batch_iterator(task.dataset("valid"), max_sentences=1).next_epoch_itr(shuffle=False))
    with torch.no_grad():
        _, extra = model(sample["net_input"]["src_tokens"], state_key="whole", reset_state=True)
    torch.testing.assert_close(layers[-1], extra["raw_output"][0].double(), rtol=1e-5, atol=1e-6)


def lines(capsys):
    return re.findall(r"^layer (\d+) cka ([0-9.]+) svcca ([0-9.]+)$", capsys.readouterr().out, flags=re.M)


def test_the_command_prints_one_for_a_checkpoint_against_itself(tiny_data, tiny_checkpoint, capsys):
    main([str(tiny_data), str(tiny_checkpoint), str(tiny_checkpoint), "--batch-size", "4"])
    assert lines(capsys) == [("0", "1.0000", "1.0000"), ("1", "1.0000", "1.0000")]


def test_the_command_prints_below_one_for_two_checkpoints(tiny_data, tiny_checkpoint, capsys):
    first_epoch = tiny_checkpoint.parent / "checkpoint1.pt"
    main([str(tiny_data), str(first_epoch), str(tiny_checkpoint), "--batch-size", "4"])
    found = lines(capsys)
    assert [layer for layer, _, _ in found] == ["0", "1"]
    assert all(0 < float(cka) < 1 and 0 < float(sv) < 1 for _, cka, sv in found)
