"""Recipe: Hugging Face Accelerate with gradcomp, registered on the model that prepare() returns.

    accelerate launch --multi_gpu --num_processes=2 --num_machines=1 --mixed_precision=no \
        --dynamo_backend=no --main_process_port=29500 examples/recipes/accelerate_ddp.py
    torchrun --standalone --nproc_per_node=2 examples/recipes/accelerate_ddp.py   # the same

``--multi_gpu`` is Accelerate's torch.distributed launcher; ``Accelerator(cpu=True)`` below
keeps the run on CPU and Gloo. (``accelerate launch --cpu --num_processes 2`` runs the script
once: with ``--cpu`` Accelerate starts several processes only through mpirun.) The explicit
flags stand in for an ``accelerate config`` file.

Why register after ``prepare`` rather than through Accelerate's own option:
``DistributedDataParallelKwargs(comm_hook=...)`` takes a ``DDPCommunicationHookType`` (fp16,
bf16, PowerSGD, batched PowerSGD), not an arbitrary hook. With more than one process,
``accelerator.prepare`` returns the model wrapped in ``DistributedDataParallel``;
``gradcomp.integrations.accelerate.register`` registers on it (and returns None for a single
process, where there is nothing to compress).

The loop uses gradient accumulation (``accelerator.accumulate``): on the steps that do not
synchronize, Accelerate runs DDP's ``no_sync`` and the hook is not called, so gradcomp's step
counter counts optimizer steps, and compresses the accumulated gradient once.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from accelerate import Accelerator

from gradcomp.integrations import accelerate as gradcomp_accelerate

# The task all recipes share (model, synthetic data, report line) lives beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe_common import BATCH, TinyMLP, param_digest, report, synthetic_dataset  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compressor", default="topk:ratio=0.01")
    parser.add_argument("--batches", type=int, default=80, help="micro-batches per rank")
    parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    torch.set_num_threads(1)  # two processes on two cores
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=args.accumulate)
    torch.manual_seed(0)  # the same initial weights in every process
    model = TinyMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    # One dataset; prepare() shards it, so each process sees `batches` micro-batches.
    dataset = synthetic_dataset(accelerator.num_processes * BATCH * args.batches, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    # The gradcomp line. Register before the first backward.
    state = gradcomp_accelerate.register(accelerator, model, args.compressor)
    if state is None:
        accelerator.print("single process: no DDP, so no gradient exchange to compress")

    losses: list[float] = []
    for i, (x, y) in enumerate(loader):
        with accelerator.accumulate(model):  # no_sync() on all but every `accumulate`-th
            loss = torch.nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            optimizer.step()  # Accelerate's wrapper skips the step while accumulating
            optimizer.zero_grad()
        losses.append(loss.item())
        if i % 20 == 0 and state is not None:
            ratio = state.stats()["ratio"]  # None until a synchronizing step has sent bytes
            accelerator.print(
                f"[rank 0] micro-batch {i:3d} loss {loss.item():.4f} gradcomp steps "
                f"{state.step} bytes ratio {'-' if ratio is None else format(ratio, '.4f')}"
            )

    window = min(10, len(losses))
    report(
        "accelerate_ddp",
        accelerator.process_index,
        accelerator.num_processes,
        stats=state.stats() if state is not None else None,
        micro_batches=len(losses),
        accumulate=args.accumulate,
        losses_first=sum(losses[:window]) / window,
        losses_last=sum(losses[-window:]) / window,
        param_digest=param_digest(accelerator.unwrap_model(model)),
    )
    # Drop the model and hook state before the group goes down at exit (see plain_ddp.py).
    del model, state
    accelerator.end_training()  # destroys the process group
    return 0


if __name__ == "__main__":
    sys.exit(main())
