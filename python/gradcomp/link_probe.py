"""The link as the process group sees it: timed allreduces and allgathers at a few sizes,
fitted to a latency and a bandwidth per collective (planner.fit_link).

Every rank of the group must call probe_link() at the same point (it runs collectives);
each rank times its own calls, after a barrier, and the fit is of the median of repeats.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from gradcomp.comm import _all_gather_single
from gradcomp.planner import LinkFit, fit_link

__all__ = ["ALLGATHER_SIZES", "ALLREDUCE_SIZES", "probe_link", "synchronize"]

# Bytes per rank. Small enough to take well under a second on a 1 Gbit/s link at 8 ranks,
# large enough that bandwidth dominates the largest.
ALLREDUCE_SIZES = (16 << 10, 256 << 10, 2 << 20, 8 << 20)
ALLGATHER_SIZES = (4 << 10, 64 << 10, 512 << 10, 2 << 20)


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA), so that host timers time it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(
    run: Callable[[], object], group: dist.ProcessGroup, device: torch.device, repeats: int
) -> float:
    run()  # the first call of a size allocates and connects: not timed
    times = []
    for _ in range(repeats):
        dist.barrier(group=group)
        synchronize(device)
        began = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def probe_link(
    group: dist.ProcessGroup,
    device: torch.device,
    *,
    repeats: int = 3,
    max_bytes: int | None = None,
) -> tuple[LinkFit, list[dict[str, object]]]:
    """Times each collective at each size (capped at ``max_bytes`` per rank, but always at
    least two sizes) and fits them; returns the fit and the samples (for the probe's report)."""
    world = dist.get_world_size(group)
    samples: list[dict[str, object]] = []
    fits = {}
    for collective, sizes in (("allreduce", ALLREDUCE_SIZES), ("allgather", ALLGATHER_SIZES)):
        chosen = [s for s in sizes if max_bytes is None or s <= max_bytes] or list(sizes[:1])
        if len(chosen) < 2:
            chosen = list(sizes[:2])
        points = []
        for nbytes in chosen:
            tensor = torch.zeros(nbytes // 4, dtype=torch.float32, device=device)
            if collective == "allreduce":
                run = functools.partial(dist.all_reduce, tensor, group=group)
            else:
                out = tensor.new_empty(world * tensor.numel())
                run = functools.partial(_all_gather_single, out, tensor, group=group)
            seconds = _timed(run, group, device, repeats)
            points.append((nbytes, seconds))
            samples.append({"collective": collective, "bytes": nbytes, "seconds": seconds})
        if collective == "allreduce":
            fits[collective] = fit_link(points, 2 * (world - 1), 2 * (world - 1) / world)
        else:
            fits[collective] = fit_link(points, world - 1, world - 1)
    return LinkFit(fits["allreduce"], fits["allgather"], world), samples
