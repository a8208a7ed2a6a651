"""A binarized split read as one flat token sequence (memory-mapped when fairseq's data is)."""
import numpy as np
import torch
from fairseq.data import FairseqDataset
from fairseq.data.indexed_dataset import MMapIndexedDataset


class TokenStream(FairseqDataset):
    """One split as a flat token sequence; read through the task's batch iterator (StreamWindows)."""

    def __init__(self, split: str, tokens: np.ndarray, keep_alive=None):
        self.split = split
        self.tokens = tokens
        self._keep_alive = keep_alive  # the indexed dataset that owns the memory map

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        raise TypeError("read TokenStream through the task's batch iterator")


def flat_tokens(indexed) -> np.ndarray:
    """All items of a fairseq indexed dataset, concatenated, without copying mmap data."""
    if isinstance(indexed, MMapIndexedDataset) and len(indexed) > 0:
        count = int(indexed.sizes.sum())
        first = int(indexed._index._pointers[0])
        return np.frombuffer(indexed._bin_buffer, dtype=indexed._index.dtype, count=count, offset=first)
    if len(indexed) == 0:
        return np.zeros(0, dtype=np.int64)
    return torch.cat([indexed[i] for i in range(len(indexed))]).numpy()
