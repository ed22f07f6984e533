"""Spawned ranks for test_simulate.py: DDP with the hook, to compare with the simulator."""

from __future__ import annotations

import os

import torch
from torch.nn.parallel import DistributedDataParallel

import gradcomp

from ddp_workers import SmallNet, _batches, _init, _params, _shutdown

STEPS = 12


def optimizer_for(model: torch.nn.Module, options: dict) -> torch.optim.Optimizer:
    """SGD, without its own momentum when the hook applies momentum correction."""
    momentum = 0.0 if options.get("momentum") else 0.9
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)


def ddp_runs(rank: int, world_size: int, port: int, out_dir: str, cases: list) -> None:
    """Each (spec, options) case trained STEPS steps from the same start; parameters saved."""
    _init(rank, world_size, port)
    results = []
    for spec, options in cases:
        torch.manual_seed(0)
        model = SmallNet()
        ddp = DistributedDataParallel(model)
        opt = optimizer_for(model, options)
        gradcomp.register(ddp, spec, optimizer=opt, **options)
        for x, y in _batches(rank, STEPS):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        results.append(_params(model))
        del model, ddp
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    _shutdown()
