"""Contiguous streams and truncated-BPTT windows over one flat token sequence.

Torch/numpy only (no fairseq import), so the layout can be tested on its own.

Layout. A split is one flat sequence of N tokens (every line followed by its
end-of-sentence token, exactly as ``fairseq-preprocess`` writes it). The
sequence is cut into ``G = streams_per_rank * world_size`` contiguous streams
whose lengths differ by at most one token (stream ``g`` holds the targets at
positions ``[g*N//G, (g+1)*N//G)``). Rank ``r`` owns the streams
``[r*B, (r+1)*B)``, so ranks never share a token. Window ``i`` holds positions
``[i*T, (i+1)*T)`` of every stream of the rank, and all ranks have the same
number of windows (they must step together for gradient all-reduce).

Every token is a target exactly once: the input at a target position is the
token just before it in the corpus (for the first window of a stream that is
the last token of the previous stream; for position 0 of the corpus it is the
end-of-sentence symbol, fairseq's convention for "start of text"). Positions
past the end of a shorter stream are padding and are ignored by the loss.

Window lengths. Fixed (``T`` each, the last one shorter), or AWD-LSTM's variable windows
(Merity et al. 2017, sec. 4.1; ``salesforce/awd-lstm-lm`` ``main.py``): each window's length is
drawn around ``T`` with probability 0.95, else around ``T/2``, from a normal with std 5,
truncated to an integer and at least 5 tokens; the last window ends at the stream's end. The
draws are a pure function of (seed, epoch) (:func:`window_boundaries`), the same on every rank
and after a resume, and every token is still a target exactly once.

Unscored symbols (``unscored``, the task's ``--unscored-symbols``): a position whose
corpus token is one of them stays an input to the next position, but its target
becomes padding, so the loss, the token count (``ntokens``) and validation skip it.
E.g. the copy task (``examples/copy_task.py``) scores only the symbols the model must
reproduce, not the random ones it reads.
"""

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from fairseq_dni.errors import DNIUserError

MIN_VARIABLE_WINDOW = 5  # AWD-LSTM's floor on a drawn window length


def window_boundaries(stream_length: int, window: int, variable: bool = False, seed: int = 1,
                      epoch: int = 1) -> np.ndarray:
    """Start offsets of the windows within a stream, plus the stream length at the end (int64).

    Fixed: ``0, T, 2T, ...``. Variable (AWD-LSTM): lengths drawn as described in the module
    docstring from ``numpy.random.default_rng([seed, epoch])``.
    """
    if not variable:
        return np.append(np.arange(0, stream_length, window, dtype=np.int64), np.int64(stream_length))
    rng = np.random.default_rng([seed, epoch])
    bounds, position = [0], 0
    while position < stream_length:
        base = window if rng.random() < 0.95 else window / 2.0
        position = min(position + max(MIN_VARIABLE_WINDOW, int(rng.normal(base, 5))), stream_length)
        bounds.append(position)
    return np.asarray(bounds, dtype=np.int64)


class StreamWindows(torch.utils.data.Dataset):
    """Item ``i`` is the ``i``-th window of this rank's streams in the current epoch, as a batch.

    ``variable_window`` draws AWD-LSTM's window lengths anew for every epoch (``set_epoch``; fairseq's
    epoch iterator calls it), from ``seed``.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        streams_per_rank: int,
        tokens_per_window: int,
        pad: int,
        eos: int,
        rank: int = 0,
        world_size: int = 1,
        state_key: Optional[str] = None,
        variable_window: bool = False,
        seed: int = 1,
        epoch: int = 1,
        unscored: Sequence[int] = (),
    ):
        super().__init__()
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise DNIUserError("tokens must be a flat 1-D sequence")
        if streams_per_rank < 1:
            raise DNIUserError(f"the number of streams per rank must be >= 1, got {streams_per_rank}")
        if tokens_per_window < 1:
            raise DNIUserError(f"--tokens-per-sample must be >= 1, got {tokens_per_window}")
        if variable_window and tokens_per_window < 2 * MIN_VARIABLE_WINDOW:
            raise DNIUserError(
                f"--variable-window needs --tokens-per-sample >= {2 * MIN_VARIABLE_WINDOW} (windows are drawn around "
                f"T and T/2, at least {MIN_VARIABLE_WINDOW} tokens long), got {tokens_per_window}")
        if not 0 <= rank < world_size:
            raise DNIUserError(f"rank {rank} is outside world size {world_size}")
        num_tokens = len(tokens)
        num_streams = streams_per_rank * world_size
        if num_tokens < num_streams:
            raise DNIUserError(
                f"{state_key or 'this split'} has {num_tokens} tokens, fewer than the "
                f"{num_streams} streams asked for ({streams_per_rank} per rank x "
                f"{world_size} ranks): lower the batch size"
            )
        self.tokens = tokens
        self.num_streams = num_streams  # over all ranks
        self.pad, self.eos = pad, eos
        self.window = tokens_per_window
        self.state_key = state_key
        self.unscored = np.asarray(sorted(set(int(u) for u in unscored)), dtype=np.int64)
        if pad in self.unscored:
            raise DNIUserError("the padding symbol cannot be an unscored symbol: it is never a target")
        bounds = (np.arange(num_streams + 1, dtype=np.int64) * num_tokens) // num_streams
        mine = slice(rank * streams_per_rank, (rank + 1) * streams_per_rank)
        self.starts = bounds[:-1][mine]
        self.ends = bounds[1:][mine]
        # the longest stream of *any* rank sets the window count, so ranks stay in step
        self.stream_length = int((bounds[1:] - bounds[:-1]).max())
        self.variable_window, self.seed = variable_window, seed
        self.set_epoch(epoch)

    def boundaries(self, epoch: int) -> np.ndarray:
        """Window start offsets within a stream in ``epoch``, plus the stream length."""
        return window_boundaries(self.stream_length, self.window, self.variable_window, self.seed, epoch)

    def set_epoch(self, epoch: int):
        self.epoch = epoch
        self.starts_in_stream = self.boundaries(epoch)

    @property
    def num_windows(self) -> int:
        return len(self.starts_in_stream) - 1

    def __len__(self) -> int:
        return self.num_windows

    def window_positions(self, index: int):
        """Corpus positions of the targets of window ``index``, shape (B, T_i), and their mask."""
        if not 0 <= index < self.num_windows:
            raise IndexError(index)
        offsets = np.arange(self.starts_in_stream[index], self.starts_in_stream[index + 1])
        positions = self.starts[:, None] + offsets[None, :]
        return positions, positions < self.ends[:, None]

    def __getitem__(self, index: int):
        positions, valid = self.window_positions(index)
        last = len(self.tokens) - 1
        target = np.where(valid, self.tokens[np.minimum(positions, last)], self.pad)
        target = np.where(np.isin(target, self.unscored), self.pad, target)
        previous = self.tokens[np.clip(positions - 1, 0, last)]
        source = np.where(positions > 0, previous, self.eos)
        source = np.where(valid, source, self.pad)
        # the first target of the next window (pad past a stream's end): one token of lookahead
        # for a synthesizer conditioned on it (--dni-condition-on-next-target)
        after = self.starts + self.starts_in_stream[index + 1]
        next_target = np.where(after < self.ends, self.tokens[np.minimum(after, last)], self.pad)
        next_target = np.where(np.isin(next_target, self.unscored), self.pad, next_target)
        return (index, torch.from_numpy(source.astype(np.int64)), torch.from_numpy(target.astype(np.int64)),
                torch.from_numpy(next_target.astype(np.int64)))

    def collater(self, items) -> Dict[str, Any]:
        # every item is already a whole batch (see get_batch_iterator in the task)
        assert len(items) == 1, "StreamWindows batches are built per window"
        index, source, target, next_target = items[0]
        bsz, length = source.shape
        not_pad = target.ne(self.pad)
        return {
            "id": torch.full((bsz,), index, dtype=torch.long),
            "nsentences": bsz,
            "ntokens": int(not_pad.sum()),
            "net_input": {
                "src_tokens": source,
                "src_lengths": source.ne(self.pad).sum(dim=1),
                # which carried state this window continues, and whether it opens
                # the pass (first window of an epoch / of a validation or test pass)
                "state_key": self.state_key,
                "reset_state": index == 0,
            },
            "target": target,
            "next_target": next_target,
            # where training is: epochs done, as a fraction (the epoch clock of cosine_alternating)
            "epochs_done": (self.epoch - 1) + index / self.num_windows,
        }

    def stream_targets(self) -> np.ndarray:
        """This rank's streams as (B, stream_length) targets, padding included (for tests/debugging)."""
        return np.concatenate([self[i][2].numpy() for i in range(len(self))], axis=1)
