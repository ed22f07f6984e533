"""The collectives the hook uses, as futures (torch.distributed does the transport)."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["allgather_async", "allreduce_async"]

# torch 2.13 renamed all_gather_into_tensor to all_gather_single (same arguments).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def allreduce_async(tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.futures.Future:
    """Sums ``tensor`` over ranks in place; the future completes when it has."""
    return dist.all_reduce(tensor, group=group, async_op=True).get_future()


def allgather_async(
    tensor: torch.Tensor, group: dist.ProcessGroup, world_size: int
) -> tuple[torch.Tensor, torch.futures.Future]:
    """Every rank's ``tensor`` back to back in rank order, in a new flat tensor that is valid
    once the future completes."""
    out = tensor.new_empty(world_size * tensor.numel())
    work = _all_gather_single(out, tensor, group=group, async_op=True)
    return out, work.get_future()
