"""The copy task (studies/copy_task) and --unscored-symbols, the mechanism it scores with.

The unscored positions are checked exactly against the corpus; the output-phase loss that
fairseq logs is checked against an independent computation from the checkpoint; and the
copy task is a positive control for the synthesizer (see the last test and studies/copy_task).
"""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, USER_DIR, build_dni, fairseq, run_window
from fairseq_dni.data.stream_windows import StreamWindows
from fairseq_dni.errors import DNIUserError
from studies.copy_task import run as copy_task


PAD, EOS = 1, 2


# ---------------------------------------------------------------- the corpus
def test_copy_lines_write_what_they_read_after_go():
    for line in copy_task.sequences(50, 5, 8, seed=3):
        words = line.split()
        assert len(words) + 1 == copy_task.sequence_length(5)  # + the </s> fairseq appends
        assert words[5] == "go"
        assert [w[1:] for w in words[:5]] == [w[1:] for w in words[6:]]
        assert all(w.startswith("x") for w in words[:5]) and all(w.startswith("y") for w in words[6:])


def test_repeat_copy_lines_write_it_r_times():
    for line in copy_task.sequences(20, 3, 4, repeats=3, seed=1):
        words = line.split()
        assert len(words) + 1 == copy_task.sequence_length(3, repeats=3)
        assert words[3:5] == ["go", "r3"]
        assert [w[1:] for w in words[5:]] == [w[1:] for w in words[:3]] * 3


# ---------------------------------------------------------------- which positions are scored
def test_unscored_positions_are_padding_targets_and_nothing_else_changes():
    rng = np.random.RandomState(0)
    tokens = rng.randint(4, 20, size=157).astype(np.int32)
    tokens[rng.rand(157) < 0.1] = EOS
    unscored = [EOS, 5, 6, 7, 11]
    plain = StreamWindows(tokens, 3, 4, PAD, EOS)
    masked = StreamWindows(tokens, 3, 4, PAD, EOS, unscored=unscored)
    is_unscored = np.isin(tokens, unscored)
    seen = 0
    for i in range(len(plain)):
        a, b = plain.collater([plain[i]]), masked.collater([masked[i]])
        positions, valid = plain.window_positions(i)
        # inputs, state flags and lengths are untouched: an unscored symbol is still read
        assert torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"])
        assert torch.equal(a["net_input"]["src_lengths"], b["net_input"]["src_lengths"])
        want = np.where(valid & ~is_unscored[np.minimum(positions, len(tokens) - 1)],
                        tokens[np.minimum(positions, len(tokens) - 1)], PAD)
        np.testing.assert_array_equal(b["target"].numpy(), want)
        assert b["ntokens"] == int((want != PAD).sum())
        # the lookahead target of a conditioned synthesizer is padding too where unscored
        nt_a, nt_b = a["next_target"].numpy(), b["next_target"].numpy()
        np.testing.assert_array_equal(nt_b, np.where(np.isin(nt_a, unscored), PAD, nt_a))
        seen += b["ntokens"]
    assert seen == int((~is_unscored).sum())


def test_padding_cannot_be_unscored():
    with pytest.raises(DNIUserError, match="padding"):
        StreamWindows(np.arange(4, 20), 2, 3, PAD, EOS, unscored=[PAD])


def test_regression_target_is_the_gradient_of_the_scored_future_loss():
    """With unscored positions the synthesizer's target at a boundary is d/ds of the next window's
    loss over its *scored* positions (plus the bootstrapped term), against autograd on a loss
    masked here from the raw tokens, not from the batch."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for name in copy_task.unscored_symbols(4).split(",")[:-1] + [f"y{k}" for k in range(4)]:
        dictionary.add_symbol(name)
    unscored = [dictionary.index(n) for n in copy_task.unscored_symbols(4).split(",")]
    tokens = np.array([dictionary.index(w) if w != "</s>" else dictionary.eos()
                       for line in copy_task.sequences(30, 3, 4, seed=2) for w in line.split() + ["</s>"]])
    torch.manual_seed(0)
    task, model, criterion = build_dni(
        dictionary, dict(decoder_embed_dim=5, decoder_hidden_size=6, decoder_layers=1, dropout=0.0),
        dict(dni_scale=0.5, sentence_avg=False))
    flatten_state = task.model_spec.layout.flatten
    torch.nn.init.normal_(criterion.synthesizer.net[-1].weight, std=0.3)
    windows = StreamWindows(tokens, 3, 4, dictionary.pad(), dictionary.eos(), state_key="train", unscored=unscored)
    samples = [windows.collater([windows[i]]) for i in range(2)]
    for sample in samples:  # what fairseq's train_step does, window by window
        held = model.decoder.carried.peek("train")
        start = tuple(s.clone() for s in (held if held is not None else model.decoder.zero_state(3)))
        run_window(model, criterion, sample)
    # reference for window 1: its loss summed over positions whose *corpus* token is scored
    positions, valid = windows.window_positions(1)
    corpus_targets = torch.from_numpy(tokens[positions].astype(np.int64))
    scored = torch.from_numpy(~np.isin(tokens[positions], unscored) & valid)
    leaf = tuple(s.detach().requires_grad_(True) for s in start)
    out, extra = model(samples[1]["net_input"]["src_tokens"], start_state=leaf)
    logp = torch.log_softmax(out, -1).gather(-1, corpus_targets.unsqueeze(-1)).squeeze(-1)
    m = criterion.synthesizer(flatten_state(extra["final_state"]).detach(), None, None)[0].detach()
    ref = torch.autograd.grad(-(logp * scored).sum() + 0.5 * (flatten_state(extra["final_state"]) * m).sum(), leaf)
    assert 0 < int(scored.sum()) < scored.numel()
    torch.testing.assert_close(criterion.pending().target, flatten_state(ref).float(), rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def copy_data(tmp_path_factory):
    return copy_task.write_corpus(str(tmp_path_factory.mktemp("copy") / "L3"), length=3, symbols=4,
                                  train=512, valid=64, test=64)


def test_unknown_unscored_symbol_is_one_line(copy_data, tmp_path):
    out = fairseq("fairseq-train", copy_data, "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                  "--unscored-symbols", "x0,nosuch", "--arch", "dni_lstm_lm_small", "--batch-size", "4",
                  "--optimizer", "adam", "--lr", "0.01", "--max-update", "1", "--save-dir", tmp_path, "--cpu",
                  check=False)
    assert "fairseq-dni: error: --unscored-symbols: nosuch not in the dictionary" in out
    assert "Traceback" not in out and not os.listdir(tmp_path)


def test_logged_loss_is_the_output_phase_loss(copy_data, tmp_path):
    """fairseq-validate's loss and token count with --unscored-symbols equal an independent sum
    of -log2 p over the y positions only, with the state carried window to window."""
    unscored = copy_task.unscored_symbols(4)
    common = ["--user-dir", USER_DIR, "--task", "dni_language_modeling", "--tokens-per-sample", "5",
              "--cpu", "--num-workers", "0"]
    fairseq("fairseq-train", copy_data, *common, "--unscored-symbols", unscored, "--arch", "dni_lstm_lm_small",
            "--decoder-embed-dim", "8", "--decoder-hidden-size", "8", "--batch-size", "4",
            "--optimizer", "adam", "--lr", "0.01", "--max-update", "20", "--save-dir", tmp_path, "--seed", "1")
    out = fairseq("fairseq-validate", copy_data, *common, "--unscored-symbols", unscored,
                  "--path", tmp_path / "checkpoint_last.pt", "--batch-size", "8", "--log-format", "json")
    logged = json.loads(re.search(r"\| valid \| (\{.*\})", out).group(1))

    from fairseq import checkpoint_utils
    import fairseq_dni  # noqa: F401  (registers the plugin)

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "checkpoint_last.pt")])
    model = models[0].eval()
    dictionary = task.dictionary
    ys = {dictionary.index(f"y{k}") for k in range(4)}
    tokens = task_tokens(copy_data, dictionary)
    # independent reference: the 8 streams read whole, one LSTM call each from a zero state
    bounds = [len(tokens) * g // 8 for g in range(9)]
    total, count = 0.0, 0
    with torch.no_grad():
        for g in range(8):
            stream = tokens[bounds[g]:bounds[g + 1]]
            prev = np.concatenate([[tokens[bounds[g] - 1] if bounds[g] else dictionary.eos()], stream[:-1]])
            out_, _ = model(torch.tensor(prev[None], dtype=torch.long))
            logp = torch.log_softmax(out_.double(), -1)[0]
            for pos, tok in enumerate(stream):
                if tok in ys:
                    total -= logp[pos, tok].item()
                    count += 1
    assert int(logged["valid_wpb"]) == count == 64 * 3
    assert float(logged["valid_loss"]) == pytest.approx(total / count / math.log(2), abs=1e-3)


def task_tokens(data, dictionary):
    from fairseq.data import data_utils

    from fairseq_dni.tasks.dni_language_modeling import flat_tokens

    indexed = data_utils.load_indexed_dataset(os.path.join(data, "valid"), dictionary)
    return np.array(flat_tokens(indexed))  # a copy, taken while the memory map is open


def test_eval_lm_refuses_unscored_symbols_instead_of_miscounting(copy_data, tmp_path):
    common = ["--user-dir", USER_DIR, "--task", "dni_language_modeling", "--cpu", "--num-workers", "0"]
    fairseq("fairseq-train", copy_data, *common, "--arch", "dni_lstm_lm_small", "--decoder-embed-dim", "8",
            "--decoder-hidden-size", "8", "--batch-size", "4", "--optimizer", "adam", "--lr", "0.01",
            "--max-update", "2", "--save-dir", tmp_path)
    out = fairseq("fairseq-eval-lm", copy_data, *common, "--path", tmp_path / "checkpoint_last.pt",
                  "--unscored-symbols", "x0", "--batch-size", "4", check=False)
    assert "fairseq-dni: error: fairseq-eval-lm cannot skip --unscored-symbols" in out


# ---------------------------------------------------------------- faults the copy task exposed
def tiny_masked_setup():
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for name in ("a", "b", "y"):
        dictionary.add_symbol(name)
    a, b, y = (dictionary.index(n) for n in "aby")
    torch.manual_seed(0)
    _, model, criterion = build_dni(
        dictionary, dict(decoder_embed_dim=3, decoder_hidden_size=4, decoder_layers=1, dropout=0.0),
        dict(sentence_avg=False), double=False)
    torch.nn.init.normal_(criterion.synthesizer.net[-1].weight, std=0.3)
    # windows of 2: [a b] has no scored target, [a y] has one
    windows = StreamWindows(np.array([a, b, a, y] * 10), 1, 2, dictionary.pad(), dictionary.eos(),
                            state_key="train", unscored=[a, b])
    return model, criterion, [windows.collater([windows[i]]) for i in range(4)]


def test_a_window_without_scored_targets_still_trains_the_synthesizer():
    """The regression loss is weighted by fairseq's divisor (sample_size or 1), so a window with no
    scored target (sample_size 0) still trains the synthesizer on its pending pair at unit weight."""
    from fairseq_dni.dni import synthesizer_loss

    model, criterion, samples = tiny_masked_setup()
    for sample in samples[:2]:
        run_window(model, criterion, sample)
    pending = criterion.pending()
    for p in criterion.parameters():
        p.grad = None
    # reference: the gradient of the pending pair's regression loss alone
    call = pending.call
    prediction, _ = criterion.synthesize(call.inputs, call.condition, call.own_state)
    want = torch.autograd.grad(synthesizer_loss(prediction, pending.target), list(criterion.synthesizer.parameters()))
    loss, sample_size, _ = run_window(model, criterion, samples[2])
    assert samples[2]["ntokens"] == 0
    # fairseq's trainer then divides every gradient by (sample_size or 1.0)
    got = [p.grad / (sample_size or 1.0) for p in criterion.synthesizer.parameters()]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_relative_loss_over_a_log_interval_is_the_ratio_of_the_summed_errors():
    from fairseq.logging import metrics

    from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyCriterion

    base = dict(loss=1.0, ntokens=1, nsentences=1, sample_size=1, dni_windows=1, dni_regressions=1,
                dni_cos=0.0, dni_loss=0.0, dni_target_norm=0.0, dni_pred_norm=0.0)
    with metrics.aggregate() as agg:
        # update 1 predicts well (error 1 vs 100 for predicting zero), update 2 a near-zero target
        DNICrossEntropyCriterion.reduce_metrics([dict(base, dni_mse=1.0, dni_zero_mse=100.0)])
        DNICrossEntropyCriterion.reduce_metrics([dict(base, dni_mse=1e-4, dni_zero_mse=1e-6)])
    values = agg.get_smoothed_values()
    assert values["dni_rel_loss"] == pytest.approx((1.0 + 1e-4) / (100.0 + 1e-6), rel=1e-3)
    assert not any(key.startswith("_") for key in values)


# ---------------------------------------------------------------- the positive control
# Copy length 2 at window 2: every symbol must cross one window boundary, which truncated BPTT
# cannot bridge (it stays at chance, log2 8 = 3 bits) and DNI with the MLP synthesizer does. Its
# progress is a sudden break-out whose time varies with the seed (seed 1: about 5,800 updates;
# seeds 2, 3: before 4,000), hence 7,000 updates. FAIRSEQ_DNI_COPY_SCALE=0 runs the same test with
# a synthesizer that injects nothing: it must then fail. The coordinate-wise synthesizer stays at
# chance here at every setting tried and is not tested this way (studies/copy_task/README.md).
COPY_SCALE = os.environ.get("FAIRSEQ_DNI_COPY_SCALE", "0.1")


def test_synthetic_gradients_carry_the_copy_task_across_a_window_boundary(tmp_path):
    log = tmp_path / "dni.log"
    proc = subprocess.run(
        [sys.executable, "-m", "studies.copy_task", "train", "--length", "2", "--window", "2",
         "--updates", "7000", "--arm", "dni", "--seed", "1", "--work-dir", str(tmp_path / "work"), "--log", str(log),
         "--", "--dni-scale", COPY_SCALE],
        cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = copy_task.summarize(str(log))
    assert f"--dni-scale {COPY_SCALE}" in result["command"]
    # chance is 3 bits; BPTT at T=2 and DNI with --dni-scale 0 stay within 0.05 of it
    assert result["copy_loss"] < 2.5, result
