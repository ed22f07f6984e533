"""Worker functions run in spawned ranks by test_compile.py (module level so spawn can import).

Each worker writes what the parent asserts on to `<out_dir>/rank<r>.pt`.

No `from __future__ import annotations` here: DDP checks a comm hook's annotations at runtime
(bucket: dist.GradBucket -> torch.futures.Future[torch.Tensor]), and strings fail that check.
"""

import gc
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch._dynamo.backends.registry import lookup_backend
from torch.nn.parallel import DistributedDataParallel

import gradcomp

import ddp_workers

STEPS = 30
# 1 MiB: DDPOptimizer asserts that DDP's first bucket (1 MiB by default) is no larger than the
# others, so a smaller bucket_cap_mb fails at the first compiled forward.
BUCKET_CAP_MB = 1
ORDERS = ("compile_then_ddp", "ddp_then_compile")


class CompileNet(torch.nn.Module):
    """About 2.1 MB of parameters, so DDP makes three buckets at BUCKET_CAP_MB.

    A user-defined forward on purpose: Dynamo skips the frames of torch.nn's own modules, so
    ``torch.compile(DistributedDataParallel(nn.Sequential(...)))`` compiles nothing at all
    (DDP.forward graph-breaks, and the Sequential underneath is never traced)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 512)
        self.fc2 = torch.nn.Linear(512, 512)
        self.fc3 = torch.nn.Linear(512, 512)
        self.head = torch.nn.Linear(512, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(torch.relu(self.fc3(x)))


def _batches(rank: int, steps: int, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Noisy copies of four fixed prototypes, different samples per rank."""
    prototypes = torch.randn(4, 32, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for _ in range(steps):
        y = torch.randint(0, 4, (batch,), generator=g)
        out.append((prototypes[y] + 2.0 * torch.randn(batch, 32, generator=g), y))
    return out


class Recorder:
    """The hook state of :func:`recorded_hook`: gradcomp's state plus what the hook saw."""

    def __init__(self, state: gradcomp.HookState) -> None:
        self.state = state
        self.calls = 0
        self.per_step: list[int] = []  # hook calls in each step
        self.compiling: set[bool] = set()


def recorded_hook(
    recorder: Recorder, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """gradcomp's hook, noting whether it ran inside a Dynamo trace (it should not: DDP's C++
    reducer calls it eagerly during backward, whatever was compiled)."""
    recorder.calls += 1
    recorder.compiling.add(torch.compiler.is_compiling())
    return gradcomp.comm_hook(recorder.state, bucket)


def _counting_backend(name: str, graphs: list[int]) -> Callable[..., Any]:
    """The named backend, noting each FX graph it is handed (DDPOptimizer hands it one per
    bucket-sized piece) by its number of call_function nodes."""
    backend = lookup_backend(name)

    def compile_fn(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
        graphs.append(sum(1 for node in gm.graph.nodes if node.op == "call_function"))
        return backend(gm, example_inputs)

    return compile_fn


def _train(
    step: Callable[[torch.Tensor], torch.Tensor],
    model: torch.nn.Module,
    rank: int,
    recorder: "Recorder | None" = None,
):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses, times = [], []
    for x, y in _batches(rank, STEPS):
        began = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(step(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - began)
        if recorder is not None:
            recorder.per_step.append(recorder.calls)
            recorder.calls = 0
    return losses, times


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Strip torch.compile's wrapper prefix so both orders and eager compare name for name.
    return {n.removeprefix("_orig_mod."): p.detach().clone() for n, p in model.named_parameters()}


def compiled_training(
    rank: int, world_size: int, port: int, out_dir: str, order: str, backend: str
) -> None:
    """Eager DDP + gradcomp, then the same under torch.compile in the given order; both Top-K
    1% from the same initial weights and data."""
    ddp_workers._init(rank, world_size, port)
    result: dict[str, Any] = {"order": order, "backend": backend}

    torch.manual_seed(0)
    model = CompileNet()
    ddp = DistributedDataParallel(model, bucket_cap_mb=BUCKET_CAP_MB)
    eager_state = gradcomp.HookState.for_model(ddp, "topk:ratio=0.01")
    eager_recorder = Recorder(eager_state)
    ddp.register_comm_hook(eager_recorder, recorded_hook)
    result["eager_losses"], result["eager_step_seconds"] = _train(ddp, model, rank, eager_recorder)
    result["eager_params"] = _params(model)
    result["eager_stats"] = eager_state.stats()
    result["eager_hook_calls"] = eager_recorder.per_step
    del model, ddp, eager_state, eager_recorder
    gc.collect()

    torch.manual_seed(0)
    model = CompileNet()
    graphs: list[int] = []
    compiler = _counting_backend(backend, graphs)
    if order == "compile_then_ddp":
        ddp = DistributedDataParallel(
            torch.compile(model, backend=compiler), bucket_cap_mb=BUCKET_CAP_MB
        )
        step = ddp
    elif order == "ddp_then_compile":
        ddp = DistributedDataParallel(model, bucket_cap_mb=BUCKET_CAP_MB)
        # gradcomp registers on the DDP object, not on the OptimizedModule around it.
        step = torch.compile(ddp, backend=compiler)
    else:
        raise ValueError(order)
    # By hand (HookState.for_model + register_comm_hook) only to record what the hook sees;
    # gradcomp.register(ddp, "topk:ratio=0.01") is the same hook without the recording.
    state = gradcomp.HookState.for_model(ddp, "topk:ratio=0.01")
    recorder = Recorder(state)
    ddp.register_comm_hook(recorder, recorded_hook)
    losses, times = _train(step, model, rank, recorder)
    result.update(
        losses=losses,
        step_seconds=times,
        params=_params(model),
        stats=state.stats(),
        graphs=graphs,
        buckets=len(state.plans),
        hook_calls=recorder.per_step,
        hook_compiling=sorted(recorder.compiling),
        names=sorted(n for n, _ in ddp.module.named_parameters()),
        hook_names=sorted(state.residuals()),
    )
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    del model, ddp, step, state, recorder
    ddp_workers._shutdown()


def compiled_autograd_attempt(
    rank: int, world_size: int, port: int, out_dir: str, optimize_ddp: str
) -> None:
    """One backward under compiled autograd with the gradcomp hook; records what is raised.

    With DDP's C++ reducer (optimize_ddp="ddp_optimizer", the default) torch refuses compiled
    autograd outright. With optimize_ddp="python_reducer", DDP calls each registered comm hook
    per parameter as hook(state, (grad, param)), not with a GradBucket, which gradcomp's hook
    cannot take: register() refuses such a DDP model. Both ranks fail at the same point,
    before any collective."""
    torch._dynamo.config.optimize_ddp = optimize_ddp
    ddp_workers._init(rank, world_size, port)
    torch.manual_seed(0)
    model = CompileNet()
    ddp = DistributedDataParallel(model, bucket_cap_mb=BUCKET_CAP_MB)
    step = torch.compile(ddp, backend="aot_eager")
    x, y = _batches(rank, 1)[0]
    error: tuple[str, str] | None = None
    state = None
    try:
        # register() refuses DDP's Python reducer with a clear message.
        state = gradcomp.register(ddp, "topk:ratio=0.01")
        loss = torch.nn.functional.cross_entropy(step(x), y)
        with torch._dynamo.compiled_autograd._enable(torch.compile(backend="aot_eager")):
            loss.backward()
    except Exception as exc:  # what is raised is the result
        error = (type(exc).__name__, str(exc))
    torch.save(
        {"error": error, "steps": state.stats()["steps"] if state is not None else 0},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    del model, ddp, step, state
    ddp_workers._shutdown()
