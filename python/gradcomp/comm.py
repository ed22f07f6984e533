"""The collectives the hook uses, as futures (torch.distributed does the transport)."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["allgather_async", "allreduce_async", "exchange_lengths"]

# torch 2.13 renamed all_gather_into_tensor to all_gather_single (same arguments).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


# Both return the collective's Work handle too: the caller must keep it until the future has
# completed and its callbacks are done, so that the Work is freed on the caller's thread. Freed
# on torch.distributed's worker thread instead, it releases Python state there, which aborts the
# process if the interpreter is shutting down.


def allreduce_async(
    tensor: torch.Tensor, group: dist.ProcessGroup
) -> tuple[dist.Work, torch.futures.Future]:
    """Sums ``tensor`` over ranks in place; the future completes when it has."""
    work = dist.all_reduce(tensor, group=group, async_op=True)
    return work, work.get_future()


def allgather_async(
    tensor: torch.Tensor,
    group: dist.ProcessGroup,
    world_size: int,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dist.Work, torch.futures.Future]:
    """Every rank's ``tensor`` back to back in rank order, in ``out`` (a new flat tensor when
    None) that is valid once the future completes."""
    if out is None:
        out = tensor.new_empty(world_size * tensor.numel())
    work = _all_gather_single(out, tensor, group=group, async_op=True)
    return out, work, work.get_future()


def exchange_lengths(
    length: int, group: dist.ProcessGroup, world_size: int, device: torch.device
) -> list[int]:
    """Every rank's ``length``, in rank order. Blocking: variable-size payloads (threshold)
    need the lengths before the payloads can be gathered at a common size."""
    mine = torch.tensor([length], dtype=torch.int64, device=device)
    out = mine.new_empty(world_size)
    _all_gather_single(out, mine, group=group)
    return [int(n) for n in out.tolist()]
