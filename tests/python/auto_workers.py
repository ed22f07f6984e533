"""Worker functions run in spawned ranks by test_auto.py. Each writes what the parent asserts
on to `<out_dir>/rank<r>.pt`."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

import gradcomp

from ddp_workers import _init, _shutdown


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    # Weights of 64K-256K elements: with 0.5 MB buckets, DDP makes several buckets.
    return torch.nn.Sequential(
        torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
    )  # fmt: skip


def _train(rank: int, steps: int, spec: str | None, **options: Any) -> tuple[Any, Any]:
    model = _net()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.5)
    state = gradcomp.register(ddp, spec, **options) if spec else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.randn(32, 256, generator=generator)
        ddp(x).square().mean().backward()
        optimizer.step()
    return ddp, state


def _params(ddp: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in ddp.module.named_parameters()}


def plans(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """A link so slow that compression must pay, one so fast that nothing does, and plain DDP;
    then re-planning every few steps, a plan change by hand and a checkpoint round trip."""
    _init(rank, world_size, port)
    out: dict[str, Any] = {}
    slow = gradcomp.Link(latency=1e-3, bandwidth=1e6)  # 1 MB/s
    ddp, state = _train(rank, 12, "auto", link=slow, replan_every=0, drift=0.0)
    out["slow"] = {"stats": state.stats(), "params": _params(ddp)}
    fast = gradcomp.Link(latency=0.0, bandwidth=1e15)
    ddp, state = _train(rank, 12, "auto", link=fast, replan_every=0, drift=0.0)
    out["fast"] = {"stats": state.stats(), "params": _params(ddp)}
    ddp, _ = _train(rank, 12, None)
    out["ddp"] = {"params": _params(ddp)}

    # Re-plan every 3 steps (checked every 2): the slow link keeps the same plan.
    ddp, state = _train(
        rank, 30, "auto", link=slow, replan_every=3, check_every=2, methods=["topk"], min_ratio=0.1
    )
    out["replan"] = {"stats": state.stats(), "params": _params(ddp)}
    # A change of plan by hand: every compressed parameter but one keeps its residual.
    before = state.current.residuals()
    kept = dict(list(state.overrides.items())[1:])
    state._switch(kept, set(kept))  # these names have no fnmatch specials: pattern == name
    out["switch"] = {
        "before": before,
        "after": state.current.residuals(),
        "kept": kept,
        "reset": state.residuals_reset,
        "step": state.step,
    }
    saved = state.state_dict()
    ddp2 = DistributedDataParallel(_net(), bucket_cap_mb=0.5)
    restored = gradcomp.register(ddp2, "auto", link=slow, check_every=1, replan_every=0)
    restored.load_state_dict(saved)
    out["restored"] = {
        "overrides": restored.overrides,
        "residuals": restored.current.residuals(),
        "step": restored.step,
        "stats": restored.stats(),
    }
    # Training on from the restored plan: no measuring steps, the plan's methods from the
    # first step, checked every step (check_every=1).
    optimizer = torch.optim.SGD(ddp2.module.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(4):
        optimizer.zero_grad()
        ddp2(torch.randn(32, 256, generator=generator)).square().mean().backward()
        optimizer.step()
    out["resumed"] = {"stats": restored.stats(), "params": _params(ddp2)}
    torch.save(out, f"{out_dir}/rank{rank}.pt")
    del ddp, ddp2, state, restored
    _shutdown()
