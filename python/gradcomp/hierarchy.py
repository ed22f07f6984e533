"""hierarchy="node": compress only between nodes.

Ranks of one node share a fast link (NVLink, or memory on the CPU), nodes a slow one. Per
bucket, with L ranks per node and N nodes:

1. a dense allreduce inside the node (each rank's bucket pre-divided by L): every rank of the
   node holds the node's average;
2. the bucket is cut into L slices, slice l holding run l of every parameter
   (bucket_split.py); local rank l compresses slice l with its own error feedback and
   exchanges it with local rank l of every other node (the ranks with the same local rank),
   by allgather or two_phase: the slow link carries each slice once per node, not once per
   rank;
3. an allgather inside the node shares the slices: every rank ends with the same bucket.

The groups come from torch.distributed (new_subgroups_by_enumeration); ranks r*L..r*L+L-1
are node r, as torchrun numbers them.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from gradcomp import _C
from gradcomp.bucket_split import split_entries
from gradcomp.comm import channels_wire
from gradcomp.cost_model import Link, allgather_wire, allreduce_wire
from gradcomp.local_update import Entry
from gradcomp.two_phase import Collective, TwoPhaseCodec, chunked_entries

__all__ = ["HierarchicalCodec", "NodeGroups", "ranks_per_node"]


def ranks_per_node(hierarchy: str | int | None, world_size: int) -> int | None:
    """The node size a ``hierarchy=`` option asks for: "node" reads torchrun's
    LOCAL_WORLD_SIZE; an int is the number of ranks per node; None is no hierarchy."""
    if hierarchy is None:
        return None
    if hierarchy == "node":
        local = os.environ.get("LOCAL_WORLD_SIZE")
        if local is None:
            raise ValueError(
                "hierarchy='node' reads the ranks per node from LOCAL_WORLD_SIZE, which torchrun "
                "sets; it is not set: launch with torchrun or pass hierarchy=<ranks per node>"
            )
        size = int(local)
    elif isinstance(hierarchy, int) and not isinstance(hierarchy, bool):
        size = hierarchy
    else:
        raise ValueError(
            f"hierarchy must be None, 'node' or the number of ranks per node, got {hierarchy!r}"
        )
    if size < 1 or world_size % size:
        raise ValueError(
            f"hierarchy: {size} ranks per node must be >= 1 and divide the world size {world_size}"
        )
    return size


class NodeGroups:
    """The process groups of a hierarchy: this rank's node, and the ranks that share its local
    rank across nodes. Every rank must build it (creating a group is collective)."""

    def __init__(self, ranks_per_node: int, rank: int, world_size: int) -> None:
        self.local_size = ranks_per_node
        self.nodes = world_size // ranks_per_node
        self.local_rank = rank % ranks_per_node
        self.node = rank // ranks_per_node
        size, nodes = ranks_per_node, self.nodes
        inside = [[n * size + i for i in range(size)] for n in range(nodes)]
        across = [[n * size + i for n in range(nodes)] for i in range(size)]
        self.inside, _ = dist.new_subgroups_by_enumeration(inside)
        self.across, _ = dist.new_subgroups_by_enumeration(across)


class HierarchicalCodec:
    """One bucket layout under a hierarchy: this rank's slice of the bucket and the codec that
    exchanges it between nodes (a BucketCodec for allgather, or a TwoPhaseCodec)."""

    def __init__(
        self,
        methods: list[Any],
        entries: list[Entry],
        residuals: _C.ErrorFeedback | None,
        seed: int,
        groups: NodeGroups,
        collective: Collective,
        link: Link,
        reduced_methods: list[Any] | None = None,
    ) -> None:
        self.groups = groups
        total = sum(e[2] for e in entries)
        slices = split_entries(entries, groups.local_size)
        # Where each slice lies in the bucket: (offset, numel) runs, in bucket order.
        self.runs = [[(e[1], e[2]) for e in part] for part in slices]
        self.stride = max(sum(n for _, n in runs) for runs in self.runs)
        self.numel = total
        own = slices[groups.local_rank]
        self.inner: Any = None
        if own:
            node, nodes = groups.node, groups.nodes
            chunk = chunked_entries(collective, methods, own, node, nodes, link, reduced_methods)
            if chunk is not None:
                self.inner = TwoPhaseCodec(
                    methods, own, residuals, seed, node, nodes, reduced_methods, chunk
                )
            else:
                self.inner = _C.BucketCodec(methods, own, residuals, seed, node, nodes)
        # What this rank sends between nodes per step, by its slice's collectives.
        if isinstance(self.inner, TwoPhaseCodec):
            self.inner_wire = self.inner.wire_bytes
        else:
            inner = self.inner
            self.inner_wire = channels_wire(inner, groups.nodes) if inner is not None else 0
        self._staging: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def inner_kind(self) -> str:
        """How the slice travels between nodes: "two_phase", "allgather" or "none"."""
        if self.inner is None:
            return "none"
        return "two_phase" if isinstance(self.inner, TwoPhaseCodec) else "allgather"

    def node_wire(self, element_size: int) -> int:
        """What this rank sends inside its node: the allreduce and the allgather of slices."""
        size = self.groups.local_size
        return allreduce_wire(self.numel * element_size, size) + allgather_wire(
            self.stride * element_size, size
        )

    def staging(self, bucket: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice copied into a tensor of the common stride, and where the node's
        allgather of slices lands."""
        buffers = self._staging.get(bucket.device)
        if buffers is None:
            mine = bucket.new_zeros(self.stride)
            out = bucket.new_empty(self.groups.local_size * self.stride)
            buffers = self._staging[bucket.device] = (mine, out)
        mine, out = buffers
        at = 0
        for offset, numel in self.runs[self.groups.local_rank]:
            mine[at : at + numel].copy_(bucket[offset : offset + numel])
            at += numel
        return mine, out

    def unstage(self, bucket: torch.Tensor, gathered: torch.Tensor) -> None:
        """Every slice from the node's allgather into the bucket."""
        for local, runs in enumerate(self.runs):
            at = local * self.stride
            for offset, numel in runs:
                bucket[offset : offset + numel].copy_(gathered[at : at + numel])
                at += numel
