"""Recipe: plain PyTorch DDP under torchrun, with gradcomp Top-K 1% on the wire.

One machine, two CPU processes (Gloo):

    torchrun --standalone --nproc_per_node=2 examples/recipes/plain_ddp.py

Two "nodes" (the same flags as on two real machines; here both on loopback):

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=1 --rdzv-backend=c10d \
        --rdzv-endpoint=127.0.0.1:29400 examples/recipes/plain_ddp.py   # "node" 0
    torchrun --nnodes=2 --node_rank=1 --nproc_per_node=1 --rdzv-backend=c10d \
        --rdzv-endpoint=127.0.0.1:29400 examples/recipes/plain_ddp.py   # "node" 1

The script itself does not change between the two: torchrun puts RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment and ``init_process_group`` reads
them. gradcomp uses whatever process group the script creates. Each rank prints progress and,
last, one JSON line (``GRADCOMP_RECIPE_RESULT {...}``) with gradcomp's stats, the first and
last losses and a digest of its parameters (equal on every rank).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import gradcomp

# The task all recipes share (model, synthetic data, report line) lives beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe_common import TinyMLP, param_digest, rank_batches, report  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compressor", default="topk:ratio=0.01")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    # Two processes on two cores: one intra-op thread each, or they fight over the cores.
    torch.set_num_threads(1)
    # torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) configures the group.
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = TinyMLP()
    ddp = DistributedDataParallel(model)
    # The one gradcomp line: from now on DDP's reducer calls gradcomp's hook for each bucket
    # instead of its own fp32 allreduce. Register before the first backward.
    state = gradcomp.register(ddp, args.compressor)

    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    losses: list[float] = []
    for step, (x, y) in enumerate(rank_batches(rank, args.steps)):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.backward()  # the hook compresses, exchanges and averages here
        opt.step()
        losses.append(loss.item())
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
            stats = state.stats()
            print(
                f"[rank 0/{world}] step {step:3d} loss {loss.item():.4f} "
                f"wire ratio {stats['ratio']:.4f}",
                flush=True,
            )

    window = min(10, len(losses))
    report(
        "plain_ddp",
        rank,
        world,
        local_rank=local_rank,
        # torchrun's view: which "node" this agent became and where rank 0's store lives.
        group_rank=int(os.environ.get("GROUP_RANK", "0")),
        master_addr=os.environ.get("MASTER_ADDR"),
        stats=state.stats(),
        losses_first=sum(losses[:window]) / window,
        losses_last=sum(losses[-window:]) / window,
        param_digest=param_digest(model),
    )
    # Drop the DDP model and the hook state before the group: destroying the group joins
    # Gloo's threads, so no hook callback is still running while the interpreter exits.
    del ddp, state, opt
    gc.collect()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
