"""Training state that is per rank: the carried LSTM state and the DNI criterion's pending
regression pair belong to this rank's streams. fairseq writes checkpoints on rank 0 only, so
every rank's copy is gathered onto every rank (``share_training_state``, called by the task
after each micro-batch) and each rank takes its own back on load (``this_rank_entry``).
"""
from typing import Optional, Sequence

import torch


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def this_rank_entry(by_rank: Sequence) -> Optional[object]:
    """This rank's entry of a per-rank list from a checkpoint; None when the number of ranks
    differs from the one the checkpoint was written with (the state then starts afresh)."""
    if world_size() != len(by_rank):
        return None
    return by_rank[torch.distributed.get_rank() if world_size() > 1 else 0]


def share_training_state(decoder, criterion):
    """Gather every rank's carried training state (and the DNI criterion's pending regression
    pair) onto every rank, so that rank 0's checkpoint holds all of them and each rank resumes
    its own streams exactly. One all_gather of a few (layers x streams x hidden) tensors per
    micro-batch: small next to the gradient all-reduce."""
    carried = decoder.carry_state.get("train")
    if carried is None:
        return
    pending = getattr(criterion, "_to_regress", None)
    keys = [k for k in ("state", "condition", "target", "future_target")
            if pending is not None and pending.get(k) is not None]
    local = [carried[0], carried[1]] + [pending[k] for k in keys]
    flat = torch.cat([t.detach().reshape(-1).float() for t in local])
    gathered = [torch.empty_like(flat) for _ in range(world_size())]
    torch.distributed.all_gather(gathered, flat)
    carry_by_rank, pending_by_rank = [], []
    for buffer in gathered:
        pieces, offset = [], 0
        for t in local:
            pieces.append(buffer[offset: offset + t.numel()].view_as(t).to(t.dtype).cpu())
            offset += t.numel()
        carry_by_rank.append((pieces[0], pieces[1]))
        pending_by_rank.append(dict(zip(keys, pieces[2:])) if pending is not None else None)
    decoder.carry_state_by_rank = carry_by_rank
    while isinstance(getattr(criterion, "module", None), torch.nn.Module):  # fairseq's DDP wrappers
        criterion = criterion.module
    if hasattr(criterion, "pending_by_rank"):
        criterion.pending_by_rank = pending_by_rank
