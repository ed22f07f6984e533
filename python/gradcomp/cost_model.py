"""What a collective costs: the bytes one rank puts on the wire, and the time the exchange
takes on a link of given latency and bandwidth.

One model serves the hook's ``collective="auto"``, the stats' ``wire_bytes`` and the
extrapolation in docs/benchmarks.md (benchmarks/collective_model.py). The algorithms are the
ones NCCL and Gloo run for large messages:

- ring allreduce: 2(P-1) steps, each rank sends 2(P-1)/P of its input;
- ring allgather: P-1 steps, each rank sends its input P-1 times;
- all_to_all: P-1 pairwise exchanges, each rank sends everything but its own part;
- two_phase (gradcomp): all_to_all of per-chunk payloads, then a ring allgather of the
  re-compressed chunks, one per rank: about twice one payload, whatever P.

Times: per step ``latency + bytes / bandwidth``; the steps of one collective run back to back.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "Link",
    "allgather_wire",
    "allreduce_wire",
    "alltoall_wire",
    "choose_collective",
    "two_phase_wire",
]


def allreduce_wire(nbytes: int, world_size: int) -> int:
    """Bytes one rank sends in a ring allreduce of ``nbytes``."""
    return 2 * (world_size - 1) * nbytes // world_size if world_size > 1 else 0


def allgather_wire(nbytes: int, world_size: int) -> int:
    """Bytes one rank sends in a ring allgather of its ``nbytes``."""
    return (world_size - 1) * nbytes


def alltoall_wire(total: int, own: int) -> int:
    """Bytes one rank sends in an all_to_all of ``total`` bytes, ``own`` of them for itself."""
    return total - own


def two_phase_wire(payload: int, reduced: int, world_size: int) -> int:
    """Bytes one rank sends in a two-phase exchange of a bucket whose payload is ``payload``
    bytes (all chunks) and whose re-compressed chunk is ``reduced`` bytes (one chunk)."""
    own = payload // world_size
    return alltoall_wire(payload, own) + allgather_wire(reduced, world_size)


@dataclasses.dataclass(frozen=True)
class Link:
    """A network as the process group sees it: the time of one message step (latency, seconds)
    and the bytes per second one rank can send (bandwidth). The defaults are a 10 Gbit/s
    Ethernet link with 50 us per step; ``python -m gradcomp probe`` is the way to measure
    yours."""

    latency: float = 50e-6
    bandwidth: float = 1.25e9

    def __post_init__(self) -> None:
        if not (self.latency >= 0.0):
            raise ValueError(f"Link latency must be >= 0 seconds, got {self.latency}")
        if not (self.bandwidth > 0.0):
            raise ValueError(f"Link bandwidth must be > 0 bytes/s, got {self.bandwidth}")

    def allreduce(self, nbytes: int, world_size: int) -> float:
        if world_size < 2:
            return 0.0
        steps = 2 * (world_size - 1) * self.latency
        return steps + allreduce_wire(nbytes, world_size) / self.bandwidth

    def allgather(self, nbytes: int, world_size: int) -> float:
        if world_size < 2:
            return 0.0
        return (world_size - 1) * self.latency + allgather_wire(nbytes, world_size) / self.bandwidth

    def alltoall(self, total: int, world_size: int) -> float:
        if world_size < 2:
            return 0.0
        return (world_size - 1) * self.latency + alltoall_wire(total, total // world_size) / (
            self.bandwidth
        )

    def two_phase(self, payload: int, reduced: int, world_size: int) -> float:
        """The all_to_all of the payload, then the allgather of the re-compressed chunks."""
        return self.alltoall(payload, world_size) + self.allgather(reduced, world_size)


def choose_collective(payload: int, reduced: int, world_size: int, link: Link) -> str:
    """ "two_phase" where its exchange is predicted faster than an allgather of the payload on
    ``link``, else "allgather". Compute is left out: two_phase decodes about 1/P of what an
    allgather decodes, so leaving it out only errs towards allgather."""
    if world_size < 3:  # two phases move as many bytes as one allgather at P=2
        return "allgather"
    if link.two_phase(payload, reduced, world_size) < link.allgather(payload, world_size):
        return "two_phase"
    return "allgather"
