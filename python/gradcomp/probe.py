"""``python -m gradcomp probe``: what each method would cost on this network and model, before
adopting gradcomp. Run it under torchrun like a training script:

    torchrun --nproc-per-node 2 -m gradcomp probe                     # a 25M-parameter MLP
    torchrun --nproc-per-node 2 -m gradcomp probe --model mymod:build --verify 10 --json p.json

It trains a few steps of the model under DDP with "auto" measuring (the backward pass's
timing, each method's encode and decode on the real buckets, the link), then prints the
predicted step time, exposed communication and bytes of every method and of what "auto" would
pick. ``--verify N`` then runs every method N steps and prints the measured step time and the
prediction's error beside it.

``--model module:callable``: a callable without arguments returning the model, or a tuple
(model, inputs) where inputs is a tensor or a tuple of tensors for ``model(*inputs)``. The loss
is the mean square of the output: only the shape of the backward pass matters here.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gradcomp.auto import DEFAULT_METHODS, AutoState, register_auto
from gradcomp.hook import register
from gradcomp.planner import DENSE, Plan, predict_step, uniform_plan

__all__ = ["main", "probe_rows"]

PLAIN_DDP = "ddp"  # DDP's own allreduce, no hook


def _mlp(params: int, width: int = 2048) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Square layers of ``width`` until ``params`` parameters: several DDP buckets."""
    layers: list[torch.nn.Module] = []
    total = 0
    while total < params or not layers:
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
        total += width * width + width
    return torch.nn.Sequential(*layers), (torch.randn(32, width),)


def load_model(spec: str | None, params: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    if spec is None:
        return _mlp(params)
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise SystemExit(f"--model must be module:callable, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    built = getattr(importlib.import_module(module_name), attribute)()
    if isinstance(built, torch.nn.Module):
        raise SystemExit(
            f"--model {spec} returned a model without inputs: return (model, inputs) so the "
            "probe can run its forward pass"
        )
    model, inputs = built
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    return model, tuple(inputs)


def _step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: tuple[torch.Tensor, ...]
) -> None:
    optimizer.zero_grad()
    output = model(*inputs)
    if isinstance(output, (tuple, list)):
        output = output[0]
    output.float().square().mean().backward()
    optimizer.step()


def _timed(step: Callable[[], None], steps: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    return times


def probe_rows(state: AutoState) -> list[dict[str, Any]]:
    """One row per method, uniform over buckets, plus plain DDP's and "auto"'s, as the model
    predicts them from what ``state`` measured."""
    assert state.profile is not None and state.link is not None and state.plan is not None
    profile, costs, link = state.profile, state.costs, state.link
    running = state.running_at_plan

    def row(name: str, plan: Plan) -> dict[str, Any]:
        return {
            "method": name,
            "predicted_step_ms": 1e3 * plan.predicted_step,
            "predicted_exposed_ms": 1e3 * plan.predicted_exposed,
            "bytes_sent": plan.bytes_sent,
            "wire_bytes": plan.wire_bytes,
            "plan": {str(b): m for b, m in sorted(plan.methods.items())},
        }

    dense = uniform_plan(profile, DENSE)
    rows = [row(PLAIN_DDP, predict_step(profile, costs, link, dense, running))]
    for method in state.candidates:
        if method != DENSE:
            plan = predict_step(profile, costs, link, uniform_plan(profile, method), running)
            rows.append(row(method, plan))
    rows.append(row("auto", state.plan))
    return rows


def _build(model_spec: str | None, params: int, device: torch.device, cap: float) -> Any:
    torch.manual_seed(0)
    model, inputs = load_model(model_spec, params)
    model = model.to(device)
    inputs = tuple(t.to(device) for t in inputs)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=cap
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    return ddp, optimizer, inputs


def _table(rows: Sequence[dict[str, Any]], verified: bool) -> str:
    dense = rows[0]["predicted_step_ms"]
    head = f"{'method':<44} {'step ms':>9} {'exposed ms':>10} {'MB/step':>9} {'vs DDP':>7}"
    if verified:
        head += f" {'measured':>9} {'error':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (
            f"{r['method']:<44} {r['predicted_step_ms']:9.1f} {r['predicted_exposed_ms']:10.1f} "
            f"{r['bytes_sent'] / 1e6:9.2f} {r['predicted_step_ms'] / dense:6.2f}x"
        )
        if verified:
            measured = r.get("measured_step_ms")
            line += (
                f" {measured:9.1f} {100 * r['error']:+6.0f}%"
                if measured is not None
                else "  (failed)"
            )
        lines.append(line)
    return "\n".join(lines)


def _plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r["predicted_step_ms"] for r in rows], 0.4, label="predicted")
    if any("measured_step_ms" in r for r in rows):
        ax.barh(
            [i - 0.2 for i in y],
            [r.get("measured_step_ms") or 0.0 for r in rows],
            0.4,
            label="measured",
        )
    ax.axvline(rows[0]["predicted_step_ms"], color="black", lw=1, ls="--", label="plain DDP")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("step time (ms), lower is better")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gradcomp probe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", help="module:callable returning (model, inputs)")
    parser.add_argument("--params", type=int, default=25_000_000, help="without --model: MLP size")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--min-ratio", type=float, default=0.01)
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    parser.add_argument("--verify", type=int, default=0, metavar="STEPS",
                        help="then run every method this many steps and compare")  # fmt: skip
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)

    if "RANK" not in os.environ:
        raise SystemExit(
            "run the probe under torchrun with at least 2 processes, e.g. "
            "torchrun --nproc-per-node 2 -m gradcomp probe"
        )
    use_cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world < 2:
        raise SystemExit(f"the probe needs at least 2 ranks to measure a link, got {world}")
    if not use_cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    def say(text: str) -> None:
        if rank == 0:
            print(text, flush=True)

    ddp, optimizer, inputs = _build(args.model, args.params, device, args.bucket_cap_mb)
    numel = sum(p.numel() for p in ddp.module.parameters())
    say(f"gradcomp probe: {numel / 1e6:.1f}M parameters, {world} ranks, {device.type}; measuring")
    state = register_auto(
        ddp, methods=args.methods, min_ratio=args.min_ratio, replan_every=0, drift=0.0
    )
    planning = state.warm_steps + state.measure_steps + 2
    for _ in range(planning):
        _step(ddp, optimizer, inputs)
    rows = probe_rows(state)
    assert state.link is not None and state.profile is not None
    fit = state.link.to_dict()
    state_factor = state.profile.channel_factor
    ar, ag = state.link.allreduce, state.link.allgather
    say(
        f"link: allreduce {8e-9 * ar.bandwidth:.2f} Gbit/s, {1e6 * ar.latency:.0f} us/step; "
        f"allgather {8e-9 * ag.bandwidth:.2f} Gbit/s, {1e6 * ag.latency:.0f} us/step (idle); "
        f"inside a step, collectives and decodes took {state.profile.channel_factor:.2f}x that"
    )
    del ddp, optimizer, state

    if args.verify:
        for r in rows:
            say(f"  verifying {r['method']} ({args.verify} steps)")
            ddp, optimizer, inputs = _build(args.model, args.params, device, args.bucket_cap_mb)
            warm = 3
            hooked: Any = None
            if r["method"] == "auto":
                hooked = register(ddp, "auto", methods=args.methods, min_ratio=args.min_ratio)
                warm = planning + 2
            elif r["method"] != PLAIN_DDP:
                hooked = register(ddp, r["method"])
            step = functools.partial(_step, ddp, optimizer, inputs)
            _timed(step, warm, device)
            measured = 1e3 * statistics.median(_timed(step, args.verify, device))
            r["measured_step_ms"] = measured
            if r["method"] == "auto":
                auto = hooked.stats()["auto"]
                r["verify_plan"] = auto["plan"]
                r["verify_predicted_step_ms"] = auto["predicted_step_ms"]
                r["error"] = measured / auto["predicted_step_ms"] - 1.0
            else:
                r["error"] = measured / r["predicted_step_ms"] - 1.0
            del ddp, optimizer, hooked
            dist.barrier()

    say("")
    say(_table(rows, bool(args.verify)))
    auto = rows[-1]
    say(f'\n"auto" would pick, per DDP bucket: {json.dumps(auto["plan"])}')
    if "verify_plan" in auto:  # the verifying run planned again, from its own measurements
        replanned = json.dumps({str(b): m for b, m in auto["verify_plan"].items()})
        say(
            f"verifying, auto planned {replanned} and predicted "
            f"{auto['verify_predicted_step_ms']:.1f} ms/step: its error above is against that"
        )
    best = min(rows[:-1], key=lambda r: r["predicted_step_ms"])
    say(
        f"predicted: auto {auto['predicted_step_ms']:.1f} ms/step, plain DDP "
        f"{rows[0]['predicted_step_ms']:.1f} ms, best single method {best['method']} "
        f"{best['predicted_step_ms']:.1f} ms"
    )
    if rank == 0:
        record = {
            "world_size": world,
            "device": device.type,
            "parameters": numel,
            "model": args.model or f"mlp:{args.params}",
            "link": fit,
            "channel_factor": state_factor,
            "rows": rows,
        }
        if args.json:
            args.json.write_text(json.dumps(record, indent=1) + "\n")
        if args.plot:
            _plot(rows, args.plot, f"{record['model']}, {world} ranks, {device.type}")
    dist.barrier()
    dist.destroy_process_group()
    return 0
