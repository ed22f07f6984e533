"""Spawned-rank workers for test_robustness.py: disagreeing ranks, a rank that dies."""

from __future__ import annotations

import datetime
import gc
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import gradcomp

import ddp_workers

# What one rank (the last) changes relative to the others. (Parameter shapes that differ are
# caught by DDP's own constructor; names are in the fingerprint too.)
DISAGREEMENTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ratio": ({"compressor": "topk:ratio=0.01"}, {"compressor": "topk:ratio=0.02"}),
    "compressor": ({"compressor": "topk"}, {"compressor": "qsgd"}),
    "seed": ({"compressor": "randomk", "seed": 1}, {"compressor": "randomk", "seed": 2}),
    "min_numel": ({"compressor": "topk"}, {"compressor": "topk", "min_numel": 0}),
    "overrides": ({"compressor": "topk"}, {"compressor": "topk", "overrides": {"fc2.*": "none"}}),
    "error_feedback": ({"compressor": "sign"}, {"compressor": "sign", "error_feedback": False}),
}


def disagreeing_ranks(rank: int, world_size: int, port: int, out_dir: str, what: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=30),
    )
    torch.set_num_threads(1)
    options = dict(DISAGREEMENTS[what][1 if rank == world_size - 1 else 0])
    torch.manual_seed(0)
    model = ddp_workers.SmallNet()
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, **options)
    x, y = ddp_workers._batches(rank, 1)[0]
    started = time.monotonic()
    error = None
    try:
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
    except RuntimeError as e:
        error = str(e)
    torch.save(
        {"error": error, "seconds": time.monotonic() - started, "steps": state.step},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    del ddp, state
    gc.collect()
    dist.destroy_process_group()
