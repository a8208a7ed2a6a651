"""Windows and resumes: AWD-LSTM's variable windows through fairseq-train, and a resume with another
stream layout (window length, streams) continuing at the same token position or restarting the epoch."""
import numpy as np
import pytest
import torch

from helpers import build_model, fairseq, train_args, train_inner
from fairseq_dni.data.stream_windows import StreamWindows, window_boundaries

PAD, EOS = 1, 2


def test_variable_windows_are_a_pure_function_of_seed_and_epoch_and_cover_every_token():
    tokens = np.random.RandomState(0).randint(4, 100, size=5003)
    a = StreamWindows(tokens, 3, 20, PAD, EOS, variable_window=True, seed=7, epoch=2)
    b = StreamWindows(tokens, 3, 20, PAD, EOS, variable_window=True, seed=7, epoch=1)
    b.set_epoch(2)
    np.testing.assert_array_equal(a.starts_in_stream, b.starts_in_stream)
    assert not np.array_equal(a.boundaries(1), a.boundaries(3))           # new draws each epoch
    assert not np.array_equal(a.boundaries(2), window_boundaries(a.stream_length, 20, True, 8, 2))  # and seed
    rebuilt = np.concatenate([row[row != PAD] for row in a.stream_targets()])
    np.testing.assert_array_equal(rebuilt, tokens)                         # every token a target, once, in order
    lengths = np.diff(a.starts_in_stream)
    assert lengths[:-1].min() >= 5 and lengths.max() < 45
    # ranks draw the same windows (they step together)
    ranks = [StreamWindows(tokens, 1, 20, PAD, EOS, rank=r, world_size=3, variable_window=True, seed=7, epoch=2)
             for r in range(3)]
    assert all(np.array_equal(r.starts_in_stream, a.starts_in_stream) for r in ranks)


def test_variable_window_lengths_follow_awd_lstm():
    """Around T with probability 0.95, else T/2; normal with std 5, truncated; at least 5 tokens."""
    lengths = np.concatenate([np.diff(window_boundaries(10 ** 6, 70, True, seed, 1))[:-1] for seed in range(3)])
    near_half = (lengths < 52).mean()
    assert 0.04 < near_half < 0.06
    full = lengths[lengths >= 52]
    assert abs(full.mean() - 69.5) < 0.3 and abs(full.std() - 5) < 0.3  # int() truncates: mean T - 0.5


def test_variable_window_needs_a_window_that_can_vary(tiny_data, tmp_path):
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "c", "--variable-window", "--max-update", "2"),
                  check=False)
    assert "fairseq-dni: error: --variable-window needs --tokens-per-sample >= 10" in out and "Traceback" not in out
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # nothing written


def test_variable_windows_scale_the_learning_rate_by_their_length(tiny_data, tmp_path):
    """AWD-LSTM scales each update's learning rate by its window length / T. With SGD and no momentum
    the update is lr * factor * grad, so the LM's weights after one step tell the factor used."""
    args = ["--tokens-per-sample", "12", "--variable-window", "--optimizer", "sgd", "--lr", "1.0",
            "--max-update", "1", "--seed", "3"]
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "var", *args))
    assert float(train_inner(out)[0]["lr"]) == 1.0  # the logged learning rate stays the schedule's
    windows = window_boundaries(StreamWindows(np.zeros(2233), 4, 12, PAD, EOS).stream_length, 12, True, 3, 1)
    factor = (windows[1] - windows[0]) / 12
    assert factor != 1.0
    # the output bias starts at zero, so after one SGD step it is -lr * factor * grad; the same first
    # window as a fixed window, unscaled, gives -lr * grad
    w1 = torch.load(tmp_path / "var" / "checkpoint_last.pt", weights_only=True)["model"]["decoder.output_projection.bias"]
    fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "fixed", "--tokens-per-sample", str(windows[1]),
                                         "--optimizer", "sgd", "--lr", "1.0", "--max-update", "1", "--seed", "3"))
    w_fixed = torch.load(tmp_path / "fixed" / "checkpoint_last.pt", weights_only=True)["model"][
        "decoder.output_projection.bias"]
    torch.testing.assert_close(w1, w_fixed * factor, rtol=1e-5, atol=1e-7)


def resumed_rows(tiny_data, save, first_updates, *changed):
    """Train ``first_updates`` windows of 4 streams x 5 tokens, then resume for 3 more with ``changed``."""
    base = ["--tokens-per-sample", "5", "--save-interval-updates", "1000", "--no-epoch-checkpoints"]
    fairseq("fairseq-train", *train_args(tiny_data, save, *base, "--max-update", first_updates))
    out = fairseq("fairseq-train", *train_args(tiny_data, save, *base, "--max-update", first_updates + 3, *changed))
    return out, train_inner(out)


def test_resume_with_a_longer_window_continues_at_the_same_token_position(tiny_data, tmp_path):
    """6 windows of 5 tokens = 30 tokens into every stream = the start of window 3 of 10 tokens."""
    out, rows = resumed_rows(tiny_data, tmp_path, 6, "--tokens-per-sample", "10")
    assert "resuming 30 tokens into each of the 4 streams: window 3 of the new layout (was window 6)" in out
    windows = len(StreamWindows(np.zeros(2233), 4, 10, PAD, EOS))
    # fairseq logs the fraction of the epoch done: windows 3, 4, 5 of the new layout ran
    assert [round(float(r["update"]) * windows) for r in rows] == [4, 5, 6]


@pytest.mark.parametrize("first_updates,changed,layout", [
    (6, ["--batch-size", "8"], "8 streams of 5-token windows"),     # other streams: other corpus positions
    (7, ["--tokens-per-sample", "10"], "4 streams of 10-token windows"),  # 35 tokens: no window starts there
])
def test_resume_with_another_layout_restarts_the_epoch_and_says_why(tiny_data, tmp_path, first_updates, changed,
                                                                     layout):
    out, rows = resumed_rows(tiny_data, tmp_path, first_updates, *changed)
    line = [l for l in out.splitlines() if "no window starts at that position" in l]
    assert len(line) == 1 and f"stopped {first_updates * 5} tokens into each of 4 streams (5-token windows)" in line[0]
    assert f"this run reads {layout}" in line[0] and "epoch 1 restarts from its first window" in line[0]
    windows = len(StreamWindows(np.zeros(2233), int(layout.split()[0]), int(layout.split()[3].split("-")[0]), PAD, EOS))
    assert [round(float(r["update"]) * windows) for r in rows] == [1, 2, 3]


def test_an_update_run_again_after_an_amp_overflow_starts_from_the_same_carried_state():
    """fairseq's --amp retries an overflowed update by running its window again (reseeded); the
    carried LSTM state and the synthesizer's carry (coordinate-wise: its own state, its last call,
    the pending pair) must be those of the update's start, so the retry computes exactly the same."""
    from fairseq import options
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyConfig, DNICrossEntropyCriterion
    from fairseq_dni.models.dni_lstm_lm import DNILSTMLMConfig
    from fairseq_dni.optim.alternating import AlternatingOptimizer
    from fairseq_dni.tasks.dni_language_modeling import DNILanguageModelingConfig, DNILanguageModelingTask

    dictionary = Dictionary()
    for i in range(20):
        dictionary.add_symbol(f"w{i}")
    tokens = np.random.RandomState(1).randint(4, len(dictionary), size=300)
    windows = StreamWindows(tokens, 3, 6, dictionary.pad(), dictionary.eos(), state_key="train")
    samples = [windows.collater([windows[i]]) for i in range(4)]
    opt_cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), [
        "unused", "--task", "language_modeling", "--arch", "lstm_lm", "--optimizer", "alternating", "--lr", "0.01",
        "--dni-lr", "0.01", "--cpu"])).optimizer

    def run(schedule):
        torch.manual_seed(0)
        task = DNILanguageModelingTask(DNILanguageModelingConfig(), dictionary)
        model = build_model(task, DNILSTMLMConfig(decoder_embed_dim=4, decoder_hidden_size=5, dropout=0.0))
        criterion = DNICrossEntropyCriterion(task, DNICrossEntropyConfig(
            dni_synthesizer="coordinatewise", dni_synthesizer_hidden=3, sentence_avg=False))
        optimizer = AlternatingOptimizer(opt_cfg, list(model.parameters()) + list(criterion.parameters()))
        losses = []
        for k, (update, window) in enumerate(schedule):
            torch.manual_seed(100 + update)  # fairseq reseeds every update (retries included)
            optimizer.zero_grad()
            loss, _, _ = task.train_step(samples[window], model, criterion, optimizer, update)
            losses.append(float(loss))
            if (update, window) not in schedule[k + 1:]:  # the overflowed try takes no step
                optimizer.step()
        return losses, model.decoder.carried.peek("train"), criterion.carried.peek("train")

    plain = run([(0, 0), (1, 1), (2, 2), (3, 3)])
    retried = run([(0, 0), (1, 1), (2, 2), (2, 2), (3, 3)])  # update 2 run again, then stepped once
    assert retried[0][2] == retried[0][3] == plain[0][2] and retried[0][4] == plain[0][3]
    for a, b in zip(plain[1], retried[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(plain[2].own_state, retried[2].own_state, rtol=0, atol=0)
