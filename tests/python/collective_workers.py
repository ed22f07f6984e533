"""Worker functions run in spawned ranks by test_collectives.py: collective="two_phase" and
hierarchy against plain DDP, the error-feedback invariant with the second-stage residuals, and
checkpoint resume. Each writes what the parent asserts on to `<out_dir>/rank<r>.pt`."""

from __future__ import annotations

import io
import os
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

import gradcomp

from ddp_workers import _init, _shutdown


class VectorNet(torch.nn.Module):
    """Parameters on every side of the cuts: w1 and w2 are cut into a run per rank (P*512
    elements or more), w3 goes whole to one rank, and the bias travels dense (min_numel=500).
    The loss is sum(w * x), so each rank's gradient is its input: known without a backward."""

    SIZES = {"w1": 5003, "w2": 3001, "w3": 700, "bias": 10}

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        for name, numel in self.SIZES.items():
            setattr(self, name, torch.nn.Parameter(torch.randn(numel, generator=generator)))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum((getattr(self, n) * inputs[n]).sum() for n in self.SIZES)  # type: ignore[return-value]


def inputs_of(rank: int, step: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return {n: torch.randn(k, generator=generator).to(device) for n, k in VectorNet.SIZES.items()}


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


def _run(
    rank: int,
    steps: int,
    spec: str | None,
    *,
    first_step: int = 0,
    state_dict: dict[str, Any] | None = None,
    device: str = "cpu",
    **options: Any,
) -> tuple[torch.nn.Module, Any, torch.optim.Optimizer]:
    """SGD at lr 1 without momentum: the parameters move by exactly what the hook applied.
    Buckets of about 16 KB, so the model spans several."""
    model = VectorNet().to(device)
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.016)
    state = gradcomp.register(ddp, spec, min_numel=500, **options) if spec else None
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    if state_dict is not None:
        model.load_state_dict(state_dict["model"])
        optimizer.load_state_dict(state_dict["optimizer"])
        assert state is not None
        state.load_state_dict(state_dict["hook"])
    for step in range(first_step, first_step + steps):
        optimizer.zero_grad()
        ddp(inputs_of(rank, step, device)).backward()
        optimizer.step()
    return model, state, optimizer


def _grads_after_one_step(
    rank: int, spec: str | None, device: str, **options: Any
) -> dict[str, torch.Tensor]:
    """The averaged gradient of the first step (lr 1: what the parameters moved by)."""
    before = _params(VectorNet())
    model, _state, _opt = _run(rank, 1, spec, device=device, **options)
    return {n: before[n] - p for n, p in _params(model).items()}


# (label, spec, options) per case; hierarchy cases only where the world divides into nodes of 2.
def _cases(world_size: int) -> list[tuple[str, str, dict[str, Any]]]:
    cases = [
        ("two_phase", "topk:ratio=0.01", {"collective": "two_phase"}),
        ("two_phase_sign", "sign", {"collective": "two_phase"}),
        ("two_phase_qsgd", "qsgd", {"collective": "two_phase"}),
        (
            "two_phase_denser",
            "topk:ratio=0.01",
            {"collective": "two_phase", "reduced_density_factor": 3.0},
        ),
        ("allgather", "topk:ratio=0.01", {"collective": "allgather"}),
        # Per parameter: w1 in two phases, w2 as the cost model says, the rest by allgather.
        (
            "per_parameter",
            "topk:ratio=0.01",
            {"collective": {"w1": "two_phase", "w2": "auto", "*": "allgather"}},
        ),
        # A variable-size payload (threshold) keeps its allgather beside two phases.
        (
            "two_phase_threshold",
            "topk:ratio=0.01",
            {"collective": "two_phase", "overrides": {"w3": "threshold:density=0.05"}},
        ),
        ("auto", "topk:ratio=0.01", {"collective": "auto"}),
    ]
    if world_size >= 4 and world_size % 2 == 0:
        cases += [
            ("node_allgather", "topk:ratio=0.01", {"hierarchy": 2}),
            ("node_two_phase", "topk:ratio=0.01", {"hierarchy": 2, "collective": "two_phase"}),
        ]
    return cases


def exchanges(rank: int, world_size: int, port: int, out_dir: str, device: str = "cpu") -> None:
    """Per case: the first step's gradient at lossless settings (topk ratio 1) against plain
    DDP's, and six lossy steps: parameters, residuals (both stages) and stats. ``device``
    "cuda": every rank on the one GPU, over Gloo."""
    _init(rank, world_size, port)
    results: dict[str, Any] = {"plain": _grads_after_one_step(rank, None, device)}
    for label, spec, options in _cases(world_size):
        # Overrides would compress some parameters with another, lossy, method.
        exact = {k: v for k, v in options.items() if k != "overrides"}
        lossless = _grads_after_one_step(rank, "topk:ratio=1.0", device, **exact)
        results[f"{label}/lossless"] = lossless
        model, state, _opt = _run(rank, 6, spec, device=device, **options)
        results[label] = {
            "params": _params(model),
            "residuals": {n: r.cpu() for n, r in state.residuals().items()},
            "stats": state.stats(),
        }
        del model, state
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    _shutdown()


def resume(rank: int, world_size: int, port: int, out_dir: str, options: dict[str, Any]) -> None:
    """Six steps straight, against three, a checkpoint (model, optimizer, hook) through bytes,
    and three more in a new DDP model and hook."""
    _init(rank, world_size, port)
    straight, _state, _opt = _run(rank, 6, "topk:ratio=0.01", **options)
    model, state, optimizer = _run(rank, 3, "topk:ratio=0.01", **options)
    buffer = io.BytesIO()
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    torch.save({**saved, "hook": state.state_dict()}, buffer)
    reduced = [n for n in state.residuals() if n.endswith("/reduced")]
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    resumed, _state2, _opt2 = _run(
        rank, 3, "topk:ratio=0.01", first_step=3, state_dict=loaded, **options
    )
    torch.save(
        {"straight": _params(straight), "resumed": _params(resumed), "reduced": reduced},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    _shutdown()


def _scaled_run(
    rank: int, steps: int, scaler: torch.amp.GradScaler | None, inf_at: int | None, **options: Any
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """VectorNet trained with the hook and, optionally, a GradScaler the hook follows; rank 1's
    input holds an inf at step ``inf_at``. Returns the parameters and the scale per step."""
    model = VectorNet()
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.016)
    gradcomp.register(ddp, "topk:ratio=0.01", min_numel=500, grad_scaler=scaler, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scales = []
    for step in range(steps):
        inputs = inputs_of(rank, step)
        if step == inf_at and rank == 1:
            inputs["w1"][7] = float("inf")
        optimizer.zero_grad()
        loss = ddp(inputs)
        if scaler is None:
            loss.backward()
            optimizer.step()
            continue
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    return _params(model), scales


def options_together(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """two_phase with an override that mixes methods in a chunk, start_iter and a GradScaler:
    without a scaler, with a power-of-two scaler (which scales exactly, so the parameters must
    not change by a bit), and with an inf on rank 1 at step 5."""

    def scaler() -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_factor=2.0, growth_interval=3)

    _init(rank, world_size, port)
    options = {"collective": "two_phase", "overrides": {"w2": "sign"}, "start_iter": 2}
    plain, _ = _scaled_run(rank, 8, None, None, **options)
    scaled, scales = _scaled_run(rank, 8, scaler(), None, **options)
    skipped, skipped_scales = _scaled_run(rank, 8, scaler(), 5, **options)
    torch.save(
        {
            "plain": plain,
            "scaled": scaled,
            "scales": scales,
            "skipped": skipped,
            "skipped_scales": skipped_scales,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    _shutdown()
