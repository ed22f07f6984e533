"""One rank of the end-to-end DDP benchmark (launched by torchrun; see bench_ddp_network.py).

For one model, every method in turn: a fresh DDP model from the same seed with the method's
communication hook, --warmup untimed steps, then --steps timed ones. First, the same step
without DDP on every rank at once (same CPU contention as the DDP run): its median is the
compute time that "exposed communication" is measured against. Rank 0 writes one JSON record
per method to --out.

Methods: "allreduce" (DDP's built-in, no hook), "torch_fp16" / "torch_bf16"
(default_hooks.fp16/bf16_compress_hook), "torch_powersgd" / "torch_batched_powersgd"
(powerSGD_hook / batched_powerSGD_hook at --powersgd-rank, error feedback and warm start on,
min compression rate 2), and any gradcomp spec ("topk:ratio=0.01", "powersgd:rank=2", ...),
optionally followed by hook options as "|name=value" ("sign|collective=two_phase",
"topk:ratio=0.01|hierarchy=node"; a value is passed as an int or a float where it reads as
one). "auto" measures in its first 6 steps and plans at the 7th: give it --warmup 8 or more so
the timed steps run its plan.

Bytes per step are what this rank hands to collectives: gradcomp's own counter, or, for
PyTorch's hooks, a count of the tensors their collectives receive (DDP's built-in allreduce:
4 bytes per gradient element). Wire bytes per step are what this rank puts on the wire as the
collectives' algorithms move it (gradcomp's stats; for the rest, a ring allreduce of the
bytes handed over, which is what they all run).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

import gradcomp
from gradcomp.config import resolve_config
from gradcomp.cost_model import allreduce_wire
from gradcomp.probe import probe_rows

from models import MODELS, loss_of, parameter_count


class CollectiveBytes:
    """Counts the bytes of tensors passed to torch.distributed's allreduce and allgather
    functions, which PyTorch's hooks call through the module attribute."""

    def __init__(self) -> None:
        self.total = 0

    @contextmanager
    def counting(self) -> Iterator[None]:
        # function name -> position of the tensor this rank contributes
        positions = {"all_reduce": 0, "all_gather_into_tensor": 1, "all_gather": 1}
        originals = {name: getattr(dist, name) for name in positions}

        def wrap(name: str) -> Callable:
            original, position = originals[name], positions[name]

            def counted(*args: object, **kwargs: object) -> object:
                tensor = args[position] if len(args) > position else None
                if isinstance(tensor, torch.Tensor):
                    self.total += tensor.numel() * tensor.element_size()
                return original(*args, **kwargs)

            return counted

        for name in positions:
            setattr(dist, name, wrap(name))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(dist, name, original)


def register(ddp: DistributedDataParallel, method: str, powersgd_rank: int) -> object:
    """Installs the method's hook; returns gradcomp's HookState, or None."""
    if method == "allreduce":
        return None
    if method == "torch_fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return None
    if method == "torch_bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
        return None
    if method in ("torch_powersgd", "torch_batched_powersgd"):
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=powersgd_rank,
            start_powerSGD_iter=2,
            min_compression_rate=2,
            use_error_feedback=True,
            warm_start=True,
        )
        hook = (
            powerSGD_hook.powerSGD_hook
            if method == "torch_powersgd"
            else powerSGD_hook.batched_powerSGD_hook
        )
        ddp.register_comm_hook(state, hook)
        return None
    spec, *options = method.split("|")
    kwargs: dict[str, object] = {}
    for option in options:
        name, _, value = option.partition("=")
        kwargs[name] = _option_value(value)
    return gradcomp.register(ddp, spec, **kwargs)


def _option_value(text: str) -> object:
    """An option's value from "|name=value": an int, a float, or the text as it is."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def attach_predictions(records: list[dict], rows: dict[str, dict]) -> None:
    """What the first "auto" of the job predicted, from its own measuring steps (probe_rows),
    for every method measured in this job that it had as a candidate (allreduce: its "ddp"
    row), and what each "auto" predicted for itself: the check of the probe's model against
    the step times measured here."""
    for record in records:
        if "step_ms" not in record:
            continue
        method = record["method"]
        if method.split("|")[0] == "auto":
            predicted = record.get("auto_predicted_step_ms")
        else:
            try:
                spec = "ddp" if method == "allreduce" else resolve_config(method, {}).spec
            except (TypeError, ValueError):  # PyTorch's hooks, suffixed variants: not predicted
                continue
            if spec not in rows:
                continue
            predicted = rows[spec]["predicted_step_ms"]
        if predicted:
            record["predicted_step_ms"] = predicted
            record["prediction_error"] = record["step_ms"] / predicted - 1.0


def timed_steps(step: Callable[[], None], warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - began))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=0, help="per rank (0: the model's default)")
    parser.add_argument("--powersgd-rank", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # Ranks share the machine's cores: one intra-op thread each unless there are cores to spare.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    make_model, make_batch, default_batch = MODELS[args.model]
    batch = make_batch(args.batch or default_batch, torch.Generator().manual_seed(100 + rank))

    def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()
        loss_of(args.model, model(batch[0]), batch[1]).backward()
        optimizer.step()

    torch.manual_seed(0)
    local = make_model()
    numel = parameter_count(local)
    optimizer = torch.optim.SGD(local.parameters(), lr=1e-3, momentum=0.9)
    dist.barrier()
    compute = timed_steps(functools.partial(train_step, local, optimizer), args.warmup, args.steps)
    compute_ms = statistics.median(compute)

    records: list[dict] = []
    predictions: dict[str, dict] | None = None  # probe_rows of the job's first "auto"

    def not_measured(method: str, key: str, error: BaseException) -> None:
        # Every rank meets the same error at the same point (a refused hook, or a bug in a hook
        # that fires on every rank), so all of them record it and go on to the next method.
        where = traceback.extract_tb(error.__traceback__)[-1]
        message = str(error).splitlines()[0] if str(error) else "(no message)"
        reason = f"{type(error).__name__}: {message} [raised in {Path(where.filename).name}"
        records.append(
            {"model": args.model, "world_size": world, "method": method,
             key: f"{reason}:{where.lineno} {where.name}]"}
        )  # fmt: skip
        if rank == 0:
            print(f"[{args.model} x{world}] {method:<26} {key}: {records[-1][key]}", flush=True)

    for method in args.methods:
        hook, _, layout = method.partition("@")
        if layout not in ("", "1bucket"):
            raise SystemExit(f"method {method!r}: valid suffix is @1bucket")
        torch.manual_seed(0)
        model = make_model()
        # @1bucket: one DDP bucket for the whole model (PyTorch's PowerSGD hooks need it on Gloo).
        ddp = DistributedDataParallel(model, bucket_cap_mb=1e4 if layout else None)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        try:
            state = register(ddp, hook, args.powersgd_rank)
        except (TypeError, RuntimeError, ValueError) as refused:
            not_measured(method, "skipped", refused)
            del ddp, model, optimizer
            dist.barrier()
            continue
        counter = CollectiveBytes()
        dist.barrier()
        try:
            with counter.counting():
                step = functools.partial(train_step, ddp, optimizer)
                times = timed_steps(step, args.warmup, args.steps)
                before = counter.total
                step()  # one more step, to count its bytes alone
                counted = counter.total - before
        except (AssertionError, RuntimeError) as failed:
            not_measured(method, "failed", failed)
            del ddp, model, optimizer, state
            dist.barrier()
            continue
        extra: dict[str, object] = {}
        if state is not None:
            stats = state.stats()  # type: ignore[attr-defined]
            bytes_per_step = stats["bytes_sent_last_step"]
            last = stats["last_step"]
            wire = last["wire_bytes"]
            extra = {
                "wire_bytes_between_nodes": last["wire_bytes_between_nodes"],
                "collectives": sorted(set(stats["collectives"].values())),
                "buckets": len(stats["collectives"]),
                # The hook's own times in the last step, summed over buckets.
                "compress_ms": 1e3 * last["compress_seconds"],
                "decompress_ms": 1e3 * last["decompress_seconds"],
            }
            if "auto" in stats:  # what "auto" chose and predicted, beside what was measured
                extra["auto_plan"] = stats["auto"]["plan"]
                extra["auto_predicted_step_ms"] = stats["auto"]["predicted_step_ms"]
                extra["auto_link"] = stats["auto"]["link"]
        else:
            bytes_per_step = 4 * numel if hook == "allreduce" else counted
            wire = allreduce_wire(bytes_per_step, world)
            extra = {"wire_bytes_between_nodes": wire}
        step_ms = statistics.median(times)
        records.append(
            {
                "model": args.model,
                "parameters": numel,
                "world_size": world,
                "method": method,
                "step_ms": step_ms,
                "step_ms_all": times,
                "compute_ms": compute_ms,
                "exposed_comm_ms": step_ms - compute_ms,
                "bytes_per_step": bytes_per_step,
                "dense_bytes": 4 * numel,
                "wire_bytes_per_step": wire,
                "wire_ratio": wire / allreduce_wire(4 * numel, world),
                "ranks_per_node": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                **extra,
                "batch": int(batch[0].shape[0]),
                "ddp_buckets": "one" if layout else "default",
                "threads": torch.get_num_threads(),
            }
        )
        if rank == 0:
            print(
                f"[{args.model} x{world}] {method:<26} {step_ms:9.1f} ms/step "
                f"(compute {compute_ms:.1f}) {bytes_per_step / 1e6:9.3f} MB/step",
                flush=True,
            )
        if isinstance(state, gradcomp.AutoState) and predictions is None:
            predictions = {row["method"]: row for row in probe_rows(state)}
        del ddp, model, optimizer, state
        dist.barrier()
    if predictions is not None:
        attach_predictions(records, predictions)
    if rank == 0:
        args.out.write_text(json.dumps(records, indent=1) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
