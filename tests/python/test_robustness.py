"""Failure modes that must end in a clear error on every rank, never a hang or silent
corruption (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import robustness_workers
from conftest import free_port

pytestmark = pytest.mark.distributed


def _spawn(fn, world_size: int, tmp_path: Path, *extra) -> list[dict]:
    mp.spawn(
        fn, args=(world_size, free_port(), str(tmp_path), *extra), nprocs=world_size, join=True
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


@pytest.mark.parametrize(
    ("what", "world_size"),
    [(what, 2) for what in robustness_workers.DISAGREEMENTS] + [("ratio", 3), ("seed", 3)],
)
def test_ranks_that_disagree_fail_alike_at_the_first_step(
    tmp_path: Path, what: str, world_size: int
) -> None:
    ranks = _spawn(robustness_workers.disagreeing_ranks, world_size, tmp_path, what)
    messages = set()
    for r, result in enumerate(ranks):
        assert result["error"] is not None, f"rank {r} trained on: {what} went unnoticed"
        assert "the ranks registered different hooks" in result["error"]
        assert result["steps"] == 0
        assert result["seconds"] < 20, result["seconds"]  # detected, not timed out
        # The message names the difference; torch appends the C++ frame it passed through.
        messages.add(result["error"].split("Differences:")[1].split("\n\n")[0])
    assert len(messages) == 1, messages
    (message,) = messages
    field = "compressor" if what == "ratio" else what
    assert f"  {field}: rank 0:" in message, message
    assert f"rank {world_size - 1}:" in message
    print(message)
