"""Windows: the stream layout (every token a target exactly once, in order, disjoint across ranks), AWD-LSTM's
variable windows, and the training window itself (fairseq_dni/step.py)."""
import ast
import pathlib

import numpy as np
import pytest

from helpers import REPO, assert_same_weights, fairseq, launch_ranks, train_args
from fairseq_dni.data.stream_windows import StreamWindows, window_boundaries

PAD, EOS = 1, 2


def corpus(n, seed=0):
    return np.random.RandomState(seed).randint(4, 100, size=n).astype(np.int32)


@pytest.mark.parametrize("n,streams,window", [(100, 3, 7), (101, 4, 5), (35, 5, 35), (64, 8, 1), (7, 7, 3)])
def test_streams_concatenated_reproduce_the_corpus(n, streams, window):
    tokens = corpus(n)
    data = StreamWindows(tokens, streams, window, PAD, EOS)
    targets = data.stream_targets()
    # in stream order, dropping the padding, the targets are the corpus token for token
    rebuilt = np.concatenate([row[row != PAD] for row in targets])
    np.testing.assert_array_equal(rebuilt, tokens)
    # stream lengths differ by at most one, so padding is at most one token per stream
    assert (targets == PAD).sum(axis=1).max() <= 1
    assert sum(data.collater([data[i]])["ntokens"] for i in range(len(data))) == n


def test_inputs_are_the_previous_corpus_token():
    tokens = corpus(50)
    data = StreamWindows(tokens, 3, 4, PAD, EOS)
    shifted = np.concatenate([[EOS], tokens[:-1]])
    for i in range(len(data)):
        _, source, target, _ = data[i]
        positions, valid = data.window_positions(i)
        np.testing.assert_array_equal(source.numpy()[valid], shifted[positions[valid]])
        np.testing.assert_array_equal(target.numpy()[valid], tokens[positions[valid]])
        assert (source.numpy()[~valid] == PAD).all()
    # the very first target of the corpus is predicted from </s>, fairseq's start-of-text
    assert data[0][1][0, 0].item() == EOS


def test_ranks_get_disjoint_streams_that_cover_the_corpus():
    tokens = corpus(203)
    world, per_rank, window = 3, 2, 6
    ranks = [StreamWindows(tokens, per_rank, window, PAD, EOS, rank=r, world_size=world) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1, "ranks must step together"
    seen = []
    for r in ranks:
        for i in range(len(r)):
            positions, valid = r.window_positions(i)
            seen.append(positions[valid])
    seen = np.concatenate(seen)
    assert len(seen) == len(np.unique(seen)) == len(tokens)
    # rank r's streams, concatenated, are the r-th contiguous slice of the corpus
    rebuilt = np.concatenate([np.concatenate([row[row != PAD] for row in r.stream_targets()]) for r in ranks])
    np.testing.assert_array_equal(rebuilt, tokens)


def test_collated_window_asks_for_reset_only_at_the_start():
    data = StreamWindows(corpus(40), 2, 5, PAD, EOS, state_key="valid")
    flags = [data.collater([data[i]])["net_input"]["reset_state"] for i in range(len(data))]
    assert flags == [True] + [False] * (len(data) - 1)
    assert data.collater([data[1]])["net_input"]["state_key"] == "valid"


def test_more_streams_than_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than the 8 streams"):
        StreamWindows(corpus(5), 4, 3, PAD, EOS, world_size=2, state_key="valid")


@pytest.mark.parametrize("n,streams,window", [(50, 3, 4), (101, 4, 5), (12, 2, 6)])
def test_next_target_is_the_first_target_of_the_next_window(n, streams, window):
    data = StreamWindows(corpus(n), streams, window, PAD, EOS)
    for i in range(len(data)):
        next_target = data.collater([data[i]])["next_target"].numpy()
        if i + 1 < len(data):
            np.testing.assert_array_equal(next_target, data[i + 1][2].numpy()[:, 0])
        else:
            assert (next_target == PAD).all()  # nothing after the last window


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


def test_two_ranks_read_disjoint_streams(tiny_data, tmp_path):
    """2 ranks x 2 streams (gloo on CPU) must train exactly like 1 rank x 4 streams.

    The 4 global streams are the same in both runs; if ranks overlapped or skipped
    streams, or stepped out of order, the gradients (summed over ranks) would differ.
    """
    fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "one", "--max-epoch", "1"))
    out = launch_ranks(train_args(tiny_data, tmp_path / "two", "--max-epoch", "1", "--batch-size", "2"))
    assert "rank 0/2 reads streams [0, 2) of 4" in out
    assert_same_weights(tmp_path / "one" / "checkpoint_last.pt", tmp_path / "two" / "checkpoint_last.pt",
                        rtol=1e-4, atol=1e-5)


def test_window_longer_than_the_validation_set_is_one_shorter_window(tiny_data, tmp_path):
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path, "--max-update", "2", "--tokens-per-sample", "1000"))
    assert "valid: rank 0/1 reads streams [0, 4) of 4, 1 windows of 1000 tokens" in out
    assert '"valid_loss"' in out


# ---- the training window (fairseq_dni/step.py) -------------------------------------------------------
def imported_modules(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_task_and_the_criterion_never_import_each_other():
    """They share fairseq_dni/step.py (Window, WindowTask, WindowCriterion) and carried_state.ModelSpec."""
    plugin = pathlib.Path(REPO) / "fairseq_dni"
    for folder, forbidden in (("criterions", "fairseq_dni.tasks"), ("tasks", "fairseq_dni.criterions")):
        files = sorted((plugin / folder).glob("*.py"))
        assert files
        for path in files:
            assert not any(m == forbidden or m.startswith(forbidden + ".") for m in imported_modules(path)), path
    assert not any(m.startswith(("fairseq_dni.tasks", "fairseq_dni.criterions"))
                   for m in imported_modules(plugin / "step.py"))


def test_the_step_carries_the_final_state_and_the_model_leaves_a_given_start_to_its_caller():
    """State out: after train_window the model's carry is the window's final state, detached, equal to
    a forward from the same start outside the step; a forward given a start state writes no carry."""
    import torch
    from fairseq.data import Dictionary

    from helpers import build_dni, run_window

    dictionary = Dictionary()
    for i in range(20):
        dictionary.add_symbol(f"w{i}")
    torch.manual_seed(0)
    _, model, criterion = build_dni(dictionary, dict(decoder_embed_dim=4, decoder_hidden_size=6, dropout=0.0),
                                    dict(sentence_avg=False))
    model.train()
    criterion.train()
    tokens = np.random.RandomState(1).randint(4, len(dictionary), size=120)
    windows = StreamWindows(tokens, 3, 5, dictionary.pad(), dictionary.eos(), state_key="train")
    samples = [windows.collater([windows[i]]) for i in range(2)]
    run_window(model, criterion, samples[0])
    first = model.decoder.carried.peek("train")
    _, extra = model(samples[0]["net_input"]["src_tokens"], start_state=model.decoder.zero_state(3))
    for carried, final in zip(first, extra["final_state"]):
        assert not carried.requires_grad
        torch.testing.assert_close(carried, final.detach(), rtol=0, atol=0)
    assert model.decoder.carried.peek("train") is first          # given a start state, the model wrote nothing
    run_window(model, criterion, samples[1], mode="real")
    _, extra = model(samples[1]["net_input"]["src_tokens"], start_state=first)
    for carried, final in zip(model.decoder.carried.peek("train"), extra["final_state"]):
        torch.testing.assert_close(carried, final.detach(), rtol=0, atol=0)
