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


class StreamWindows(torch.utils.data.Dataset):
    """Item ``i`` is the ``i``-th window of this rank's streams, as a batch."""

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
        self.num_windows = -(-self.stream_length // tokens_per_window)

    def __len__(self) -> int:
        return self.num_windows

    def window_positions(self, index: int):
        """Corpus positions of the targets of window ``index``, shape (B, T_i), and their mask."""
        if not 0 <= index < self.num_windows:
            raise IndexError(index)
        offsets = np.arange(index * self.window, min((index + 1) * self.window, self.stream_length))
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
        after = self.starts + (index + 1) * self.window
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
        }

    def stream_targets(self) -> np.ndarray:
        """This rank's streams as (B, stream_length) targets, padding included (for tests/debugging)."""
        return np.concatenate([self[i][2].numpy() for i in range(len(self))], axis=1)
