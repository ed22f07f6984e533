"""The collectives the hook uses, as futures (torch.distributed does the transport).

The hot-path collectives call the process group's own methods (what ``dist.all_reduce`` and
``dist.all_gather_into_tensor`` call after their checks): the Python wrappers cost about 50 us
per call on the 2-core CPU machine, as much as a one-rank Gloo allreduce of 64 KB, and every
bucket issues one or two collectives per step. What the wrappers check holds here by
construction: one dense tensor, a group this rank belongs to (HookState was built from it), no
coalescing context.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import (
    AllgatherOptions,
    AllreduceOptions,
    AllToAllOptions,
    ReduceOp,
)

from gradcomp.cost_model import allgather_wire, allreduce_wire

__all__ = [
    "allgather_async",
    "allreduce_async",
    "alltoall_async",
    "channels_wire",
    "exchange_lengths",
    "issue_channels",
]

# torch 2.13 renamed all_gather_into_tensor to all_gather_single (same arguments).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _asynchronous(options: Any) -> Any:
    if hasattr(options, "asyncOp"):  # newer torch: the caller waits for the Work
        options.asyncOp = True
    return options


_ALLREDUCE = _asynchronous(AllreduceOptions())
_ALLREDUCE.reduceOp = ReduceOp(ReduceOp.SUM)
_ALLGATHER = _asynchronous(AllgatherOptions())
_ALLTOALL = _asynchronous(AllToAllOptions())


# Both return the collective's Work handle too: the caller must keep it until the future has
# completed and its callbacks are done, so that the Work is freed on the caller's thread. Freed
# on torch.distributed's worker thread instead, it releases Python state there, which aborts the
# process if the interpreter is shutting down.


def allreduce_async(
    tensor: torch.Tensor, group: dist.ProcessGroup
) -> tuple[dist.Work, torch.futures.Future]:
    """Sums ``tensor`` over ranks in place; the future completes when it has."""
    work = group.allreduce([tensor], _ALLREDUCE)
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
    # torch 2.13 names it all_gather_single; earlier releases _allgather_base.
    gather = getattr(group, "all_gather_single", None) or group._allgather_base
    work = gather(out, tensor, _ALLGATHER)
    return out, work, work.get_future()


def alltoall_async(
    out: torch.Tensor,
    tensor: torch.Tensor,
    out_splits: list[int],
    in_splits: list[int],
    group: dist.ProcessGroup,
) -> tuple[dist.Work, torch.futures.Future]:
    """Part j of ``tensor`` (``in_splits[j]`` elements) to rank j; ``out`` receives every
    rank's part for this rank in rank order (``out_splits[r]`` elements from rank r)."""
    work = group.alltoall_base(out, tensor, out_splits, in_splits, _ALLTOALL)
    return work, work.get_future()


def exchange_lengths(
    length: int, group: dist.ProcessGroup, world_size: int, device: torch.device
) -> list[int]:
    """Every rank's ``length``, in rank order. Blocking: variable-size payloads (threshold)
    need the lengths before the payloads can be gathered at a common size."""
    mine = torch.tensor([length], dtype=torch.int64, device=device)
    out = mine.new_empty(world_size)
    _all_gather_single(out, mine, group=group)
    return [int(n) for n in out.tolist()]


def issue_channels(
    codec: Any, messages: list[torch.Tensor], group: dist.ProcessGroup, world: int
) -> tuple[list[torch.Tensor], list[torch.futures.Future], list[dist.Work], list[int], int, int]:
    """Issues one collective per channel of a BucketCodec: what each returns into, the futures
    and Works, every rank's length of a variable channel, the bytes handed to the collectives
    and the bytes put on the wire."""
    sent = wire = 0
    received: list[torch.Tensor] = []
    futures: list[torch.futures.Future] = []
    works: list[dist.Work] = []
    used: list[int] = []
    for index, ((collective, _dtype, _numel, variable), message) in enumerate(
        zip(codec.channels, messages, strict=True)
    ):
        if collective == "allreduce":
            work, fut = allreduce_async(message, group)
            received.append(message)
            nbytes = message.numel() * message.element_size()
            wire += allreduce_wire(nbytes, world)
        elif variable:
            # The one blocking exchange: every rank's payload length, so all can gather
            # at the longest (a rank with nothing to send still sends its headers).
            used = exchange_lengths(message.numel(), group, world, message.device)
            sent += 8
            wire += allgather_wire(8, world)
            padded = message.new_zeros(max(used))
            padded[: message.numel()] = message
            message = padded  # what crosses the wire, and what stats() counts
            gathered, work, fut = allgather_async(message, group, world)
            received.append(gathered)
            wire += allgather_wire(message.numel() * message.element_size(), world)
        else:
            out = codec.gather_buffer(index)
            gathered, work, fut = allgather_async(message, group, world, out=out)
            received.append(gathered)
            wire += allgather_wire(message.numel() * message.element_size(), world)
        sent += message.numel() * message.element_size()
        works.append(work)
        futures.append(fut)
    return received, futures, works, used, sent, wire


def channels_wire(codec: Any, world: int) -> int:
    """What a BucketCodec's channels put on the wire per step: a ring allreduce of each summed
    channel, an allgather of each gathered one (a variable channel at its most)."""
    wire = 0
    for collective, dtype, numel, _variable in codec.channels:
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        if collective == "allreduce":
            wire += allreduce_wire(nbytes, world)
        else:
            wire += allgather_wire(nbytes, world)
    return wire
