"""The stream layout: every token a target exactly once, in order, disjoint across ranks."""
import numpy as np
import pytest

from fairseq_dni.data.stream_windows import StreamWindows

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
