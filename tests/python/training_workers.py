"""Spawned-rank workers for test_training.py: DDP options, mixed precision, checkpoints.

Each worker writes what the parent asserts on to `<out_dir>/rank<r>.pt` (or its own files).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import gradcomp

import ddp_workers


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


class BranchyNet(ddp_workers.SmallNet):
    """SmallNet plus a head that forward never uses: a parameter without a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Linear(128, 4)


# -- DDP options -------------------------------------------------------------------------------

DDP_OPTIONS: dict[str, dict[str, Any]] = {
    "no_sync": {},  # gradient accumulation: 2 micro-batches per step, the first under no_sync
    "static_graph": {"static_graph": True},
    "find_unused_parameters": {"find_unused_parameters": True},
    "gradient_as_bucket_view": {"gradient_as_bucket_view": True},
}


def _train_with_options(
    option: str, spec: str | None, rank: int, steps: int, **register: Any
) -> tuple[dict[str, torch.Tensor], list[float], dict[str, Any] | None]:
    torch.manual_seed(0)
    model = BranchyNet() if option == "find_unused_parameters" else ddp_workers.SmallNet()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.1, **DDP_OPTIONS[option])
    state = gradcomp.register(ddp, spec, min_numel=0, **register) if spec else None
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    micro = 2 if option == "no_sync" else 1
    batches = ddp_workers._batches(rank, steps * micro)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        for m in range(micro):
            x, y = batches[step * micro + m]
            last = m == micro - 1
            with contextlib.nullcontext() if last else ddp.no_sync():
                loss = torch.nn.functional.cross_entropy(ddp(x), y) / micro
                loss.backward()
        opt.step()
        losses.append(loss.item() * micro)
    stats = state.stats() if state is not None else None
    return _params(model), losses, stats


def ddp_options(rank: int, world_size: int, port: int, out_dir: str, option: str) -> None:
    """Plain DDP, gradcomp lossless (Top-K ratio 1) and gradcomp Top-K 1% under one DDP
    option; the first two must agree bit for bit."""
    ddp_workers._init(rank, world_size, port)
    out = {}
    out["plain"], _, _ = _train_with_options(option, None, rank, steps=6)
    out["lossless"], _, _ = _train_with_options(option, "topk:ratio=1.0", rank, steps=6)
    out["topk"], out["losses"], out["stats"] = _train_with_options(
        option, "topk:ratio=0.01", rank, steps=120
    )
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    ddp_workers._shutdown()


def two_models(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Two DDP models in one program, each with its own hook and process group."""
    ddp_workers._init(rank, world_size, port)
    second_group = dist.new_group(list(range(world_size)))
    torch.manual_seed(0)
    a, b = (
        ddp_workers.SmallNet(),
        torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 4)),
    )
    ddp_a = DistributedDataParallel(a)
    ddp_b = DistributedDataParallel(b, process_group=second_group)
    state_a = gradcomp.register(ddp_a, "topk", ratio=0.01, min_numel=0)
    state_b = gradcomp.register(ddp_b, "powersgd", rank=2, min_numel=0, process_group=second_group)
    opt = torch.optim.SGD([*a.parameters(), *b.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for x, y in ddp_workers._batches(rank, 100):
        opt.zero_grad()
        loss_a = torch.nn.functional.cross_entropy(ddp_a(x), y)
        loss_b = torch.nn.functional.cross_entropy(ddp_b(x.flatten(1)), y)
        (loss_a + loss_b).backward()
        opt.step()
        losses.append((loss_a.item(), loss_b.item()))
    torch.save(
        {
            "a": _params(a),
            "b": _params(b),
            "losses": losses,
            "stats": (state_a.stats(), state_b.stats()),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    del ddp_a, ddp_b, state_a, state_b
    ddp_workers._shutdown()


# -- mixed precision ---------------------------------------------------------------------------


def _scaler_run(
    rank: int,
    steps: int,
    scaler: torch.amp.GradScaler | None,
    follow_scale: bool,
    spec: str,
    poison: tuple[int, int] | None = None,
    autocast: bool = False,
    probe: Callable[[int, gradcomp.HookState, torch.nn.Module], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[float], gradcomp.HookState]:
    torch.manual_seed(0)
    model = ddp_workers.SmallNet()
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, spec, min_numel=0, grad_scaler=scaler if follow_scale else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step, (x, y) in enumerate(ddp_workers._batches(rank, steps)):
        opt.zero_grad()
        if poison is not None and (rank, step) == poison:
            x = x.clone()
            x[0, 0, 0, 0] = float("inf")  # this rank's gradient becomes inf / NaN
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(ddp(x).float(), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            if probe is not None:
                probe(step, state, model)
            scaler.step(opt)
            scaler.update()
        losses.append(loss.item())
    return _params(model), losses, state


def grad_scaler_units(rank: int, world_size: int, port: int, out_dir: str, spec: str) -> None:
    """A power-of-two GradScaler whose scale grows every 3 steps scales gradients exactly, so a
    hook that follows the scale must match the unscaled run bit for bit; one that does not
    follow it keeps residuals in stale units."""
    ddp_workers._init(rank, world_size, port)

    def scaler() -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_factor=2.0, growth_interval=3)

    out = {}
    out["unscaled"], _, _ = _scaler_run(rank, 20, None, False, spec)
    followed = scaler()
    out["followed"], _, state = _scaler_run(rank, 20, followed, True, spec)
    out["final_scale"] = followed.get_scale()
    out["stats"] = state.stats()
    out["ignored"], _, _ = _scaler_run(rank, 20, scaler(), False, spec)
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    ddp_workers._shutdown()


def forced_overflow(rank: int, world_size: int, port: int, out_dir: str, spec: str) -> None:
    """bf16 autocast + GradScaler; at step 5 rank 1's input holds an inf. Records, per step,
    the parameters and residuals around the bad step and the scale."""
    ddp_workers._init(rank, world_size, port)
    bad_step = 5
    record: dict[str, Any] = {"scales": []}

    def probe(step: int, state: gradcomp.HookState, model: torch.nn.Module) -> None:
        # Called after backward (the hook has run), before scaler.step.
        record["scales"].append(scaler.get_scale())
        if step == bad_step - 1:
            record["residuals_before"] = state.residuals()
        if step == bad_step:
            record["residuals_after"] = state.residuals()
            record["grads_bad"] = [p.grad.clone() for p in model.parameters()]

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    params, losses, state = _scaler_run(
        rank, 60, scaler, True, spec, poison=(1, bad_step), autocast=True, probe=probe
    )
    # The parameters right before and after the bad step, from a replay of the same run.
    replay: dict[str, Any] = {}

    def replay_probe(step: int, s: gradcomp.HookState, model: torch.nn.Module) -> None:
        if step == bad_step:
            replay["before"] = _params(model)
        if step == bad_step + 1:
            replay["after"] = _params(model)  # the update of step bad_step was applied (or not)

    _scaler_run(
        rank,
        bad_step + 2,
        torch.amp.GradScaler("cpu", init_scale=2.0**10),
        True,
        spec,
        poison=(1, bad_step),
        autocast=True,
        probe=replay_probe,
    )
    record.update(
        params=params, losses=losses, stats=state.stats(), replay=replay, bad_step=bad_step
    )
    torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    ddp_workers._shutdown()


def low_precision_model(
    rank: int, world_size: int, port: int, out_dir: str, dtype_name: str
) -> None:
    """A bf16 (or fp16) model: the buckets are bf16; residuals stay fp32."""
    ddp_workers._init(rank, world_size, port)
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4)
    ).to(dtype)
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, "topk", ratio=0.05, min_numel=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for x, y in ddp_workers._batches(rank, 150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(x.to(dtype)).float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.save(
        {
            "params": _params(model),
            "losses": losses,
            "stats": state.stats(),
            "residual_dtypes": {n: r.dtype for n, r in state.residuals().items()},
            "numel": sum(p.numel() for p in model.parameters()),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    del ddp, state
    ddp_workers._shutdown()


# -- checkpoints -------------------------------------------------------------------------------


def _make(spec: str) -> tuple[torch.nn.Module, DistributedDataParallel, Any, gradcomp.HookState]:
    torch.manual_seed(0)
    model = ddp_workers.SmallNet()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.1)
    state = gradcomp.register(ddp, spec, min_numel=0, seed=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, ddp, opt, state


def _steps(ddp: DistributedDataParallel, opt: Any, batches: list) -> None:
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()


def resume(rank: int, world_size: int, port: int, out_dir: str, spec: str, how: str) -> None:
    """Uninterrupted 12 steps vs 6 steps, a checkpoint (torch.save per rank, DCP, or one rank-0
    file holding gathered_state_dict()), a fresh model / optimizer / hook loading it, 6 more
    steps."""
    ddp_workers._init(rank, world_size, port)
    batches = ddp_workers._batches(rank, 12)
    model, ddp, opt, state = _make(spec)
    _steps(ddp, opt, batches)
    uninterrupted = _params(model)
    del model, ddp, opt, state

    model, ddp, opt, state = _make(spec)
    _steps(ddp, opt, batches[:6])
    checkpoint = os.path.join(out_dir, f"ckpt-{how}")
    if how == "torch.save":
        torch.save(
            {"model": model.state_dict(), "optim": opt.state_dict(), "hook": state.state_dict()},
            f"{checkpoint}-rank{rank}.pt",
        )
    elif how == "rank0":  # one file from rank 0, as Lightning writes it (model, optimizer and
        # every rank's hook state; SGD's momentum is the same on every rank)
        hook = state.gathered_state_dict()
        if rank == 0:
            torch.save(
                {"model": model.state_dict(), "optim": opt.state_dict(), "hook": hook},
                f"{checkpoint}.pt",
            )
        dist.barrier()
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save(
            {"model": model_sd, "optim": optim_sd, "hook": state.state_dict()},
            checkpoint_id=checkpoint,
        )
    saved_step = state.step
    del model, ddp, opt, state
    gc.collect()

    model, ddp, opt, state = _make(spec)
    if how in ("torch.save", "rank0"):
        path = f"{checkpoint}-rank{rank}.pt" if how == "torch.save" else f"{checkpoint}.pt"
        loaded = torch.load(path, weights_only=True)
        model.load_state_dict(loaded["model"])
        opt.load_state_dict(loaded["optim"])
        state.load_state_dict(loaded["hook"])
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(model, opt)
        target = {"model": model_sd, "optim": optim_sd, "hook": state.state_dict()}
        dcp.load(target, checkpoint_id=checkpoint)
        set_state_dict(
            model, opt, model_state_dict=target["model"], optim_state_dict=target["optim"]
        )
        state.load_state_dict(target["hook"])
    resumed_step = state.step
    _steps(ddp, opt, batches[6:])
    torch.save(
        {
            "uninterrupted": uninterrupted,
            "resumed": _params(model),
            "saved_step": saved_step,
            "resumed_step": resumed_step,
            "steps": state.step,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    del model, ddp, opt, state
    ddp_workers._shutdown()
