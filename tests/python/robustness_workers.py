"""Spawned-rank workers for test_robustness.py: disagreeing ranks, a rank that dies."""

from __future__ import annotations

import datetime
import gc
import os
import signal
import time
import warnings
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
    "collective": ({"compressor": "topk"}, {"compressor": "topk", "collective": "two_phase"}),
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


def dead_peer(
    rank: int, world_size: int, port: int, out_dir: str, spec: str, timeout_s: float, how: str
) -> None:
    """Trains; before its backward at step 5 the last rank dies (how="kill": os._exit, as a
    killed process would, so its sockets close) or freezes (how="stop": SIGSTOP, as a hung or
    unreachable machine looks: nothing closes, nothing answers). Survivors record what their
    backward raised and how long it took, then leave with os._exit too: a process group with a
    dead member is not torn down politely."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ddp_workers.SmallNet()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.1)
    state = gradcomp.register(ddp, spec, min_numel=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    result: dict[str, Any] = {"error": None, "seconds": None, "steps": 0}
    for step, (x, y) in enumerate(ddp_workers._batches(rank, 20)):
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        if step == 5 and rank == world_size - 1:
            if how == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(17)
        started = time.monotonic()
        try:
            opt.zero_grad()
            loss.backward()
            opt.step()
        except Exception as e:  # what a survivor sees is the result
            result["error"] = f"{type(e).__name__}: {e}"
            result["seconds"] = time.monotonic() - started
            break
        result["steps"] = state.step
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    os._exit(0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated aliases warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def soak(rank: int, world_size: int, port: int, out_dir: str, steps: int, checks: int = 6) -> None:
    """Many small training steps with a bucket mixing three methods (threshold, Top-K,
    Random-K) and a dense override. At `checks` points after a warm-up: RSS, live tensor
    count, the hook's own bookkeeping, and the error-feedback invariant over all ranks:
        sum_r (sum of rank r's raw gradients) - sum_r (rank r's residual)
            == world * (sum of the averaged gradients the optimizer got)."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)

    def net() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(32, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 64),
            torch.nn.Linear(64, 8),
        )

    model, plain = net(), net()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.01)
    state = gradcomp.register(
        ddp,
        "threshold:density=0.05",
        min_numel=0,
        overrides={"0.*": "topk:ratio=0.05", "2.weight": "randomk:ratio=0.1", "3.bias": "none"},
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    names = [n for n, _ in model.named_parameters()]
    raw = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    applied = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(rank)
    warmup = min(500, steps // 4)
    points = {warmup + (steps - warmup) * i // (checks - 1) for i in range(checks)}
    samples = []
    for step in range(1, steps + 1):
        x = torch.randn(16, 32, generator=g)
        plain.load_state_dict(model.state_dict())
        plain.zero_grad()
        plain(x).square().mean().backward()
        opt.zero_grad()
        ddp(x).square().mean().backward()
        for (n, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
            raw[n] += q.grad.double()
            applied[n] += p.grad.double()
        opt.step()
        if step in points:
            residuals = state.residuals()
            kept = [
                raw[n] - residuals[n].double().view_as(raw[n]) if n in residuals else raw[n]
                for n in names
            ]
            lhs = torch.cat([t.reshape(-1) for t in kept])
            dist.all_reduce(lhs)
            rhs = world_size * torch.cat([applied[n].reshape(-1) for n in names])
            scale = lhs.abs().max().item()
            samples.append(
                {
                    "step": step,
                    "rss": _rss_bytes(),
                    "tensors": _live_tensors(),
                    "in_flight": len(state.in_flight),
                    "codecs": len(state.plans),
                    "pending": state.in_flight.pending,
                    "drift": (lhs - rhs).abs().max().item() / scale,
                }
            )
    torch.save(
        {"samples": samples, "stats": state.stats()}, os.path.join(out_dir, f"rank{rank}.pt")
    )
    del ddp, state
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    # A longer soak than the test's: python tests/python/robustness_workers.py --soak-steps N
    import argparse
    import socket
    import tempfile

    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description="gradcomp soak: memory and EF drift")
    parser.add_argument("--soak-steps", type=int, default=50_000)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(soak, args=(args.ranks, free, out, args.soak_steps, 11), nprocs=args.ranks)
        for r in range(args.ranks):
            for s in torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False)["samples"]:
                print(
                    f"rank {r} step {s['step']}: rss {s['rss'] / 2**20:.1f} MiB, "
                    f"{s['tensors']} live tensors, {s['in_flight']} buckets in flight, "
                    f"EF drift {s['drift']:.2e}"
                )
