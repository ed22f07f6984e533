"""Exchanges in stages, issued in the same order on every rank without blocking backward.

two_phase and hierarchy need collectives that depend on earlier ones (phase 2 reads what
phase 1 delivered). Issuing the later one from the earlier one's completion callback would run
on torch.distributed's threads, in whatever order collectives complete, and ranks could issue
the collectives of different buckets in different orders, which Gloo reports as a size
mismatch (or which hangs). Waiting for the earlier one on the hook's thread keeps the order
but stalls backward.

So a bucket's later stages are deferred: each hook call first runs the stages that earlier
buckets left (each may wait for its collective, which has usually completed by then, issue the
next, and leave one more stage), then issues its own first stage. The step's last bucket runs
every stage left to the end. DDP calls the hook for every bucket in bucket order on one thread,
so every rank runs the same stages in the same order: the collectives of each group are issued
in the same order everywhere.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Optional

__all__ = ["Stage", "StagedIssue"]

# A stage runs one step of an exchange and returns the next, or None when the exchange is done.
Stage = Callable[[], Optional["Stage"]]


class StagedIssue:
    def __init__(self) -> None:
        self._queue: deque[Stage] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def defer(self, stage: Stage) -> None:
        self._queue.append(stage)

    def run_ready(self) -> None:
        """One stage of every exchange that was waiting when this hook call began."""
        for _ in range(len(self._queue)):
            following = self._queue.popleft()()
            if following is not None:
                self._queue.append(following)

    def drain(self) -> None:
        """Every stage left, to the end (the step's last bucket)."""
        while self._queue:
            following = self._queue.popleft()()
            if following is not None:
                self._queue.append(following)
