"""Worker functions run in spawned ranks by test_ddp.py (module level so spawn can import them).

Each worker writes what the parent asserts on to `<out_dir>/rank<r>.pt`.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import gradcomp


def _shutdown() -> None:
    """Drop every DDP model and hook state, then the group: destroying the group joins Gloo's
    worker threads, so none is still finishing a future callback (Python code) while the
    interpreter shuts down, which would abort the process."""
    gc.collect()
    dist.destroy_process_group()


def _init(rank: int, world_size: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )


# Every lossy method with the options the DDP training tests use (SmallNet, lr 0.05, momentum
# 0.9, 150 steps): Random-K at 10%, because 1% is too sparse for that schedule.
TRAINED_METHODS = [
    "topk_approx",
    "topk_int8",
    "topk_bitmap",
    "randomk:ratio=0.1",
    "threshold:density=0.01",
    "qsgd",
    "qsgd:bits=8",
    "sign",
    "int8",
    "fp16",
    "bf16",
    "powersgd:rank=2",
]


class SmallNet(torch.nn.Module):
    """A conv layer, a big linear layer and small biases: tensors both sides of min_numel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = torch.nn.Linear(8 * 8 * 8, 128)
        self.fc2 = torch.nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _batches(rank: int, steps: int, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Different data per rank: noisy copies of four fixed class prototypes (learnable)."""
    g = torch.Generator().manual_seed(1234)
    prototypes = torch.randn(4, 1, 8, 8, generator=g)
    g.manual_seed(100 + rank)
    out = []
    for _ in range(steps):
        y = torch.randint(0, 4, (batch,), generator=g)
        out.append((prototypes[y] + torch.randn(batch, 1, 8, 8, generator=g), y))
    return out


def _train(
    model: torch.nn.Module, ddp: DistributedDataParallel, rank: int, steps: int, lr: float = 0.05
) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for x, y in _batches(rank, steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def lossless_matches_plain_ddp(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Plain DDP vs gradcomp topk ratio=1.0 vs gradcomp "none", same init and data."""
    _init(rank, world_size, port)
    results = {}
    for label, spec in [("plain", None), ("topk1", "topk:ratio=1.0"), ("none", "none")]:
        torch.manual_seed(0)
        model = SmallNet()
        ddp = DistributedDataParallel(model)
        if spec is not None:
            gradcomp.register(ddp, spec)
        _train(model, ddp, rank, steps=8)
        results[label] = _params(model)
        del model, ddp
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    _shutdown()


def topk_wire_ratio_and_training(
    rank: int, world_size: int, port: int, out_dir: str, min_numel: int
) -> None:
    _init(rank, world_size, port)
    torch.manual_seed(0)
    model = SmallNet()
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, "topk", ratio=0.01, min_numel=min_numel)
    losses = _train(model, ddp, rank, steps=200, lr=0.05)
    torch.save(
        {
            "stats": state.stats(),
            "numels": [p.numel() for p in model.parameters()],
            "losses": losses,
            "params": _params(model),
            "buckets": len(state.plans),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    del model, ddp, state
    _shutdown()


def method_trains(rank: int, world_size: int, port: int, out_dir: str, spec: str) -> None:
    """Trains SmallNet with one compressor (every tensor compressed: min_numel=0), in several
    small buckets, so collectives of different buckets are in flight together."""
    _init(rank, world_size, port)
    torch.manual_seed(0)
    model = SmallNet()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.1)
    state = gradcomp.register(ddp, spec, min_numel=0)
    losses = _train(model, ddp, rank, steps=150, lr=0.05)
    torch.save(
        {
            "stats": state.stats(),
            "shapes": [tuple(p.shape) for p in model.parameters()],
            "losses": losses,
            "params": _params(model),
            "buckets": len(state.plans),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    del model, ddp, state
    _shutdown()


def lazy_binding_matches_eager(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """A HookState built from the bare module before the process group exists (as Lightning's
    ddp_comm_state is) binds at its first hook call and trains exactly as one built after."""
    torch.manual_seed(0)
    lazy_model = SmallNet()
    options = {"ratio": 0.05, "min_numel": 0, "log_every": 3, "seed": 3}
    lazy = gradcomp.HookState.for_model(lazy_model, "topk", **options)
    before = {"bound": lazy.bound, "step": lazy.step, "spec": lazy.compressor.spec}
    _init(rank, world_size, port)
    ddp = DistributedDataParallel(lazy_model, bucket_cap_mb=0.01)
    ddp.register_comm_hook(lazy, gradcomp.comm_hook)
    _train(lazy_model, ddp, rank, steps=8)
    torch.manual_seed(0)
    model = SmallNet()
    eager_ddp = DistributedDataParallel(model, bucket_cap_mb=0.01)
    eager = gradcomp.register(eager_ddp, "topk", **options)
    _train(model, eager_ddp, rank, steps=8)
    torch.save(
        {
            "before": before,
            "lazy": (_params(lazy_model), lazy.stats(), lazy.world_size, lazy.rank),
            "eager": (_params(model), eager.stats()),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    del lazy_model, ddp, lazy, model, eager_ddp, eager
    _shutdown()


# What the several-ranks-on-one-GPU test trains (test_cuda.py): every method with default
# options, so small tensors take the dense fp32 channel beside the compressed payloads.
GPU_METHODS = [
    "none",
    "topk",
    "topk_approx",
    "topk_int8",
    "randomk",
    "threshold",
    "qsgd",
    "sign",
    "int8",
    "fp16",
    "bf16",
    "powersgd",
]


class GpuNet(torch.nn.Module):
    """Big enough that the default 25 MB buckets split it (and its small tensors stay under
    min_numel): 4 x Linear(1024, 1024) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            *[torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.GELU()) for _ in range(4)]
        )
        self.head = torch.nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


def ranks_on_one_gpu(
    rank: int, world_size: int, port: int, out_dir: str, methods: list[str], steps: int
) -> None:
    """Several ranks share cuda:0 over Gloo (NCCL refuses two ranks on one device). Each method
    trains GpuNet for `steps` steps with SGD momentum on this rank's own data, default options
    and DDP's default buckets (plus a bf16 model for a few methods); the parent checks every
    rank ends with the same parameters."""
    _init(rank, world_size, port)
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    results: dict[str, dict] = {}
    g = torch.Generator().manual_seed(50 + rank)
    xs = [torch.randn(64, 1024, generator=g) for _ in range(steps)]
    ys = [torch.randint(0, 10, (64,), generator=g) for _ in range(steps)]
    runs = [(spec, torch.float32) for spec in methods]
    runs += [(spec, torch.bfloat16) for spec in ("none", "topk", "qsgd", "fp16") if spec in methods]
    for spec, dtype in runs:
        label = spec if dtype == torch.float32 else f"{spec}@bf16"
        torch.manual_seed(0)
        model = GpuNet().to(device=device, dtype=dtype)
        ddp = DistributedDataParallel(model, device_ids=[0])
        state = gradcomp.register(ddp, spec)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        losses = []
        for x, y in zip(xs, ys, strict=True):
            opt.zero_grad()
            out = ddp(x.to(device=device, dtype=dtype))
            loss = torch.nn.functional.cross_entropy(out.float(), y.to(device))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        results[label] = {
            "params": {n: p.detach().float().cpu() for n, p in model.named_parameters()},
            "losses": losses,
            "stats": state.stats(),
            "device_path": [
                codec.uses_device_path(device)
                for codec in state.plans.codecs()
                if hasattr(codec, "uses_device_path")
            ],
        }
        del model, ddp, state, opt
        gc.collect()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    _shutdown()
