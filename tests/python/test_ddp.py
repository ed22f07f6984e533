"""Multi-process DDP on Gloo with the gradcomp hook (spawned ranks on loopback)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import gradcomp

import ddp_workers
from conftest import free_port
from reference import topk_k

pytestmark = pytest.mark.distributed


def _spawn(fn, world_size: int, tmp_path: Path, *extra) -> list[dict]:
    mp.spawn(
        fn, args=(world_size, free_port(), str(tmp_path), *extra), nprocs=world_size, join=True
    )
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]


def test_lossless_settings_reproduce_plain_ddp(tmp_path: Path) -> None:
    ranks = _spawn(ddp_workers.lossless_matches_plain_ddp, 2, tmp_path)
    for result in ranks:
        for label in ("topk1", "none"):
            for name, plain in result["plain"].items():
                assert torch.equal(result[label][name], plain), f"{label}: {name} differs"
    for name in ranks[0]["plain"]:
        assert torch.equal(ranks[0]["topk1"][name], ranks[1]["topk1"][name])


@pytest.mark.parametrize("min_numel", [0, 1024])
def test_topk_wire_ratio_identical_ranks_and_falling_loss(tmp_path: Path, min_numel: int) -> None:
    ranks = _spawn(ddp_workers.topk_wire_ratio_and_training, 2, tmp_path, min_numel)
    numels = ranks[0]["numels"]
    sent = sum(8 * topk_k(0.01, n) if n >= min_numel else 4 * n for n in numels)
    analytic = sent / (4 * sum(numels))
    for result in ranks:
        stats = result["stats"]
        assert stats["steps"] == 200
        assert stats["bytes_dense"] == 200 * 4 * sum(numels)
        assert math.isclose(stats["ratio"], analytic, rel_tol=0.01), (stats["ratio"], analytic)
        assert stats["ratio"] < 0.05
    # Every rank ends with bit-identical parameters.
    for name, p0 in ranks[0]["params"].items():
        assert torch.equal(p0, ranks[1]["params"][name]), name
    # The model learns: the mean loss of the last 20 steps is well below the first 20.
    for result in ranks:
        losses = result["losses"]
        first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
        print(f"loss first20={first:.3f} last20={last:.3f}")
        assert last < 0.6 * first, (first, last)


def test_register_rejects_a_model_that_is_not_ddp() -> None:
    with pytest.raises(
        TypeError, match="expects a torch.nn.parallel.DistributedDataParallel model, got Linear"
    ):
        gradcomp.register(torch.nn.Linear(2, 2), "topk")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"compressor": "topk", "ratio": 0.0}, ValueError, "ratio=0 is out of range"),
        ({"compressor": "topk", "ratio": 1.01}, ValueError, "ratio=1.01 is out of range"),
        ({"compressor": "bogus"}, ValueError, "unknown compressor 'bogus'"),
        ({"compressor": "topk:ratio"}, ValueError, "malformed compressor spec"),
        ({"compressor": "topk", "min_numel": -1}, ValueError, "min_numel=-1 is out of range"),
        ({"compressor": "topk", "start_iter": 1.5}, TypeError, "start_iter must be an int"),
        ({"compressor": "topk", "error_feedback": 1}, TypeError, "error_feedback must be a bool"),
    ],
)
def test_register_rejects_bad_options(single_rank_group: None, kwargs, error, match) -> None:
    ddp = DistributedDataParallel(torch.nn.Linear(4, 4))
    with pytest.raises(error, match=match):
        gradcomp.register(ddp, **kwargs)


def test_register_needs_an_initialized_process_group() -> None:
    class FakeDDP(DistributedDataParallel):
        def __init__(self) -> None:  # skip DDP's own init, which needs a group itself
            torch.nn.Module.__init__(self)
            self.module = torch.nn.Linear(2, 2)

    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        gradcomp.register(FakeDDP(), "topk")


def test_start_iter_runs_dense_steps_first(single_rank_group: None) -> None:
    model = torch.nn.Linear(64, 64)
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, "topk", ratio=0.01, start_iter=3, min_numel=0)
    for step in range(5):
        ddp(torch.randn(4, 64)).sum().backward()
        if step < 3:
            assert state.stats()["ratio"] == pytest.approx(1.0)
    stats = state.stats()
    assert stats["steps"] == 5
    dense = 4 * (64 * 64 + 64)
    assert stats["bytes_sent"] == 3 * dense + 2 * 8 * (topk_k(0.01, 4096) + topk_k(0.01, 64))


def test_state_dict_round_trip(single_rank_group: None) -> None:
    model = torch.nn.Linear(64, 64)
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, "topk", ratio=0.05, min_numel=0)
    for _ in range(3):
        ddp(torch.randn(4, 64)).sum().backward()
    saved = state.state_dict()
    other = DistributedDataParallel(torch.nn.Linear(64, 64))
    restored = gradcomp.register(other, "topk", ratio=0.05, min_numel=0)
    restored.load_state_dict(saved)
    assert restored.step == 3
    for name, residual in saved["residuals"].items():
        assert torch.equal(restored.state_dict()["residuals"][name], residual)
    wrong = DistributedDataParallel(torch.nn.Linear(64, 64))
    with pytest.raises(ValueError, match="saved with compressor 'topk:ratio=0.05'"):
        gradcomp.register(wrong, "topk", ratio=0.1).load_state_dict(saved)


def test_manual_registration_with_comm_hook(single_rank_group: None) -> None:
    ddp = DistributedDataParallel(torch.nn.Linear(64, 64))
    state = gradcomp.HookState.for_model(ddp, "topk:ratio=0.1", min_numel=0)
    ddp.register_comm_hook(state, gradcomp.comm_hook)
    ddp(torch.randn(4, 64)).sum().backward()
    assert state.stats()["bytes_sent"] == 8 * (topk_k(0.1, 4096) + topk_k(0.1, 64))


def test_communication_objects_outlive_their_callbacks(single_rank_group: None) -> None:
    """The hook keeps each step's Work handles and futures, and counts live callbacks, so that
    nothing owning Python state is freed on torch.distributed's thread (which aborts the
    process when it happens during interpreter shutdown)."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 4))
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, "topk", ratio=0.1, min_numel=100, start_iter=1)
    for _ in range(3):
        ddp(torch.randn(4, 64)).sum().backward()
        assert state.wait_for_callbacks(timeout=10.0)
        assert state._pending_callbacks == 0
        kept = [obj for objs in state._in_flight.values() for obj in objs]
        assert any(isinstance(obj, torch.distributed.Work) for obj in kept)
