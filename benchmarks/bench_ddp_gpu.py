"""One-process DDP step time: plain DDP vs every gradcomp method vs PyTorch's own hooks.

On one lent H100/H200 (NCCL, world size 1; about 2.5 minutes):

    python benchmarks/bench_ddp_gpu.py --device cuda --time-budget 420 \\
        --json docs/results/ddp_gpu_h200.json --markdown docs/results/ddp_gpu_h200.md

CPU smoke run (Gloo, tiny models; what CI runs):

    python benchmarks/bench_ddp_gpu.py --device cpu --scale tiny --steps 2 --warmup 3

At world size 1 the collective is nearly free (a one-rank allreduce), so a hook's step time
minus plain DDP's is the hook's own cost: compressing, decompressing, error feedback, and any
waits for the host. Every configuration (model x bucket setting x method) is a freshly built
DDP model copied from the same initial weights, trained on the same fixed random batch:
zero_grad(set_to_none=True), forward and loss (bf16 autocast on CUDA for resnet50 and gpt2),
backward, SGD step (lr 1e-4, momentum 0.9). --warmup untimed steps, then --steps timed ones,
each from a synchronized device to a synchronized device (wall clock, so host and device work
both count); the median, p10 and p90 are reported, and ratio = median / plain DDP's median for
the same model and bucket setting in the same run. Plain DDP always runs first (it is the
baseline of the ratios).

Methods: "plain DDP" (DDP's built-in allreduce); "gradcomp:<name>" for every name in
gradcomp.compressor_names(), registered with default options (gradcomp.register(ddp, name)),
with their bytes ratio from state.stats()["ratio"] (bytes sent / dense bytes, all steps);
"torch:allreduce_hook" (DDP's allreduce as a Python hook: what any Python hook costs),
"torch:fp16_compress_hook" and "torch:bf16_compress_hook" (default_hooks) and
"torch:powerSGD_hook" (PowerSGDState(process_group=None, matrix_approximation_rank=2,
start_powerSGD_iter=2): rank 2 as gradcomp powersgd's default; its first two steps are dense,
so --warmup must be at least 3). Bucket settings: "default" (bucket_cap_mb 25) and "one"
(bucket_cap_mb 10000: the whole model in one bucket). A configuration that fails is recorded
with its error and the run goes on (PyTorch's bf16 hook refuses Gloo, so it fails on CPU).

Models (--scale full; --scale tiny shrinks each so that a CPU run of all of them takes
seconds):
  mlp25m    6 x (Linear(2048, 2048) + GELU), 25.2M parameters; batch 256 of random inputs,
            MSE to random targets; float32 (tiny: width 64, batch 16).
  resnet50  models.ResNet(Bottleneck, [3, 4, 6, 3]), 25.6M; batch 32 of 224x224 images,
            channels_last, 1000 classes, cudnn.benchmark on (tiny: two bottleneck blocks,
            batch 4 of 16x16).
  gpt2      models.GPT: 12 layers, width 768, 12 heads, vocab 50257, context 512, tied
            embedding, 124.0M; batch 8 x 512 tokens (tiny: 2 layers, width 64, vocab 256,
            batch 2 x 16).
  layers40  40 x Linear(128, 128), batch 8 (not in the default run): with --buckets small
            (bucket_cap_mb 0.07, about one layer per bucket) a step is little compute and many
            buckets, so (hook - plain DDP) / buckets is a hook's host cost per bucket; PyTorch's
            Python allreduce_hook ("torch:allreduce_hook") is the floor of any Python hook:
              python benchmarks/bench_ddp_gpu.py --device cpu --models layers40 \
                  --buckets small --steps 300 --warmup 10

Time budget of the default full run on an H200 (17 methods x 2 bucket settings = 34
configurations per model, each 10 warm-up + 20 timed = 30 steps plus its build: a copy of
the weights on the device, DDP construction, hook registration):
  mlp25m    ~2.5 ms plain, ~5 ms on average with a hook: 30 x 5 ms + ~0.1 s build ~ 0.25 s,
            x 32 ~ 8 s.
  resnet50  ~35 ms plain, ~40 ms with a hook: 30 x 40 ms + ~0.2 s ~ 1.4 s, x 32 ~ 45 s.
  gpt2      ~50 ms plain, ~60 ms with a hook (124M parameters to compress): 30 x 60 ms +
            ~0.5 s ~ 2.3 s, x 32 ~ 74 s.
  start-up  ~20 s: imports, CUDA context, NCCL, building the reference models, the first
            configuration's cuDNN autotuning (absorbed by its warm-up).
Total ~145 s, under the 240 s target with ~95 s to spare for hooks slower than estimated;
--time-budget 420 in the command above stops starting configurations if it ever runs long
(the device machine's per-command limit is 600 s), and the JSON and table say which did not run.

JSON (--json, harness.write_records): meta (date, torch, gpu, command, device, device_name,
backend, cuda, scale, warmup, steps, threads, models: each model's sizes and parameters,
time_budget_s, elapsed_s, budget_exceeded, not_run) and one record per (model, buckets,
method): model, parameters, input, autocast, buckets, bucket_cap_mb, ddp_buckets, method,
status ("ok", "failed" or "skipped" when the time budget ran out), error, median_ms, p10_ms,
p90_ms, min_ms, max_ms, times_ms (every timed step), ratio, bytes_ratio and
bytes_sent_last_step (gradcomp only), final_loss (the last step's loss).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

import gradcomp

from harness import cuda_unavailable, write_records
from models import GPT, Bottleneck, ResNet, parameter_count

PLAIN = "plain DDP"
TORCH_HOOKS = [
    "torch:allreduce_hook",
    "torch:fp16_compress_hook",
    "torch:bf16_compress_hook",
    "torch:powerSGD_hook",
]
MODEL_NAMES = ["mlp25m", "resnet50", "gpt2", "layers40"]
DEFAULT_MODELS = ["mlp25m", "resnet50", "gpt2"]
# "small": about one layer of layers40 per bucket, to see the per-bucket cost of a hook.
BUCKET_CAP_MB = {"default": 25.0, "one": 10_000.0, "small": 0.07}
# PyTorch's PowerSGD allreduces densely for this many steps before compressing.
TORCH_POWERSGD_START = 2
TORCH_POWERSGD_RANK = 2  # gradcomp powersgd's default rank
RECORD_KEYS = [
    "model", "parameters", "input", "autocast", "buckets", "bucket_cap_mb", "ddp_buckets",
    "method", "status", "error", "median_ms", "ratio", "p10_ms", "p90_ms", "min_ms", "max_ms",
    "bytes_ratio", "bytes_sent_last_step", "final_loss", "times_ms",
]  # fmt: skip


def method_labels() -> list[str]:
    return [PLAIN, *(f"gradcomp:{n}" for n in gradcomp.compressor_names()), *TORCH_HOOKS]


def resolve_methods(requested: list[str] | None) -> list[str]:
    """Labels for --methods (labels, bare gradcomp names, or "plain"), plain DDP first."""
    valid = method_labels()
    if not requested:
        return valid
    chosen = [PLAIN]
    for name in requested:
        label = PLAIN if name == "plain" else name if name in valid else f"gradcomp:{name}"
        if label not in valid:
            raise ValueError(
                f"--methods: unknown method {name!r}; valid: {', '.join(map(repr, valid))}, "
                "a bare gradcomp name (e.g. 'topk') or 'plain'"
            )
        if label not in chosen:
            chosen.append(label)
    return chosen


@dataclass
class Workload:
    """A model on the device with its fixed batch. Every configuration trains a copy of
    `reference`, so all start from the same weights and see the same data."""

    name: str
    reference: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    autocast: bool
    sizes: dict[str, Any]


def _mlp(width: int, layers: int) -> nn.Module:
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*blocks)


def _tiny_resnet(classes: int) -> nn.Module:
    # ResNet-50's bottleneck block at toy widths, so the tiny run exercises the same layers.
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        Bottleneck(16, 8, 1),
        Bottleneck(32, 16, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, classes),
    )


def _token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def build_workload(name: str, scale: str, device: torch.device) -> Workload:
    """The reference model, built on the device from seed 0, and its batch (seed 1)."""
    full = scale == "full"
    data = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    channels_last = False
    if name == "mlp25m":
        width, layers, batch = (2048, 6, 256) if full else (64, 6, 16)
        with device:
            model = _mlp(width, layers)
        inputs = torch.randn(batch, width, generator=data)
        targets = torch.randn(batch, width, generator=data)
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.mse_loss
        sizes: dict[str, Any] = {"width": width, "layers": layers, "batch": batch}
        sizes["input"] = f"{batch}x{width}"
        autocast = False
    elif name == "resnet50":
        batch, image, classes = (32, 224, 1000) if full else (4, 16, 10)
        with device:
            model = ResNet(Bottleneck, [3, 4, 6, 3], classes) if full else _tiny_resnet(classes)
        inputs = torch.randn(batch, 3, image, image, generator=data)
        targets = torch.randint(0, classes, (batch,), generator=data)
        loss = nn.functional.cross_entropy
        sizes = {"batch": batch, "image": image, "classes": classes}
        sizes |= {"input": f"{batch}x3x{image}x{image}", "memory_format": "channels_last"}
        channels_last, autocast = True, device.type == "cuda"
    elif name == "gpt2":
        vocab, width, layers, heads, context, batch = (
            (50257, 768, 12, 12, 512, 8) if full else (256, 64, 2, 2, 16, 2)
        )
        with device:
            model = GPT(vocab, width, layers, heads, context)
        tokens = torch.randint(0, vocab, (batch, context + 1), generator=data)
        inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        loss = _token_loss
        sizes = {"vocab": vocab, "width": width, "layers": layers, "heads": heads}
        sizes |= {"context": context, "batch": batch, "input": f"{batch}x{context} tokens"}
        autocast = device.type == "cuda"
    elif name == "layers40":
        width, layers, batch = 128, 40, 8
        with device:
            model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
        inputs = torch.randn(batch, width, generator=data)
        targets = torch.randn(batch, width, generator=data)
        loss = nn.functional.mse_loss
        sizes = {"width": width, "layers": layers, "batch": batch, "input": f"{batch}x{width}"}
        autocast = False
    else:
        raise ValueError(f"model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    inputs, targets = inputs.to(device), targets.to(device)
    if channels_last:
        # Module.to's annotations omit memory_format, which it accepts.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    sizes["parameters"] = parameter_count(model)
    sizes["autocast"] = "bfloat16" if autocast else None
    return Workload(name, model, inputs, targets, loss, autocast, sizes)


def several_buckets(work: Workload, buckets: str, device: torch.device) -> bool:
    """On Gloo (CPU), whether DDP splits the model into more than one bucket: its first bucket
    holds at most 1 MiB (torch.distributed._DEFAULT_FIRST_BUCKET_BYTES), the others the cap."""
    if device.type != "cpu":
        return False
    size = sum(p.numel() * p.element_size() for p in work.reference.parameters())
    first = getattr(dist, "_DEFAULT_FIRST_BUCKET_BYTES", 1 << 20)
    return size > min(first, BUCKET_CAP_MB[buckets] * (1 << 20))


def install_hook(ddp: DistributedDataParallel, method: str) -> gradcomp.HookState | None:
    """Registers the method's communication hook; gradcomp's state, else None."""
    family, _, name = method.partition(":")
    if method == PLAIN:
        return None
    if family == "gradcomp":
        return gradcomp.register(ddp, name)
    if method == "torch:allreduce_hook":
        ddp.register_comm_hook(None, default_hooks.allreduce_hook)
    elif method == "torch:fp16_compress_hook":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif method == "torch:bf16_compress_hook":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif method == "torch:powerSGD_hook":
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=TORCH_POWERSGD_RANK,
            start_powerSGD_iter=TORCH_POWERSGD_START,
        )
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    else:
        raise ValueError(f"method {method!r}; valid: {', '.join(method_labels())}")
    return None


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (q in [0, 1])."""
    ordered = sorted(values)
    where = q * (len(ordered) - 1)
    low = math.floor(where)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (where - low)


def ddp_bucket_count(ddp: DistributedDataParallel) -> int | None:
    """Buckets after DDP's rebuild at the first step (the count its logging data reports is
    the construction-time one). A private reducer call: None if this torch lacks it."""
    try:
        return len(ddp.reducer._get_zeros_like_grad_buckets())
    except (AttributeError, RuntimeError):
        return None


def run_configuration(
    work: Workload, method: str, buckets: str, warmup: int, steps: int, device: torch.device
) -> dict[str, Any]:
    """Builds DDP + hook + optimizer on a copy of the reference model and times its steps."""
    cuda = device.type == "cuda"
    model = copy.deepcopy(work.reference)
    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index or 0] if cuda else None,
        bucket_cap_mb=BUCKET_CAP_MB[buckets],
    )
    state = install_hook(ddp, method)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=work.autocast):
            loss = work.loss(ddp(work.inputs), work.targets)
        loss.backward()
        optimizer.step()
        return loss.detach()

    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        began = time.perf_counter()
        loss = step()
        sync()
        times.append(1000 * (time.perf_counter() - began))
    stats = state.stats() if state is not None else None
    return {
        "ddp_buckets": ddp_bucket_count(ddp),
        "median_ms": statistics.median(times),
        "p10_ms": percentile(times, 0.1),
        "p90_ms": percentile(times, 0.9),
        "min_ms": min(times),
        "max_ms": max(times),
        "times_ms": times,
        "bytes_ratio": stats["ratio"] if stats else None,
        "bytes_sent_last_step": stats["bytes_sent_last_step"] if stats else None,
        # A diverged run (inf/NaN gradients) would time a different code path: visible here.
        "final_loss": float(loss),
    }


def describe(error: BaseException) -> str:
    """The error's type, first message line and where it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    message = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
    where = f" [raised in {Path(frames[-1].filename).name}:{frames[-1].lineno}]" if frames else ""
    return f"{type(error).__name__}: {message[:300]}{where}"


def free_memory(device: torch.device) -> None:
    """Collects the last configuration's DDP model, hook state and optimizer (they hold
    reference cycles) and hands their device memory back."""
    gc.collect()
    # What survives is long-lived (torch's modules, the reference model): later collections
    # skip it, which makes one ~10x faster. run_all unfreezes when it drops a reference model.
    gc.freeze()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def progress(record: dict[str, Any]) -> str:
    head = f"[{record['model']} | buckets {record['buckets']}] {record['method']:<26}"
    if record["status"] != "ok":
        return f"{head} {record['status']}: {record['error']}"
    line = (
        f"{head} {record['median_ms']:9.2f} ms/step (p10 {record['p10_ms']:.2f}, "
        f"p90 {record['p90_ms']:.2f})"
    )
    if record["ratio"] is not None:
        line += f" {record['ratio']:6.3f}x plain DDP"
    if record["bytes_ratio"] is not None:
        line += f" | wire {record['bytes_ratio']:.4f} of dense"
    return line


def new_record(model: str, buckets: str, method: str) -> dict[str, Any]:
    """Every record has every key (None where it does not apply), in this order."""
    record: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    record |= {"model": model, "buckets": buckets, "method": method}
    record["bucket_cap_mb"] = BUCKET_CAP_MB[buckets]
    return record


def run_all(
    args: argparse.Namespace, methods: list[str], device: torch.device, began: float
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """Every configuration in order: records, each built model's sizes, and what the time
    budget left unrun."""
    records: list[dict[str, Any]] = []
    sizes: dict[str, dict[str, Any]] = {}
    not_run: list[str] = []
    for name in args.models:
        work: Workload | None = None
        build_error: str | None = None
        for buckets in args.buckets:
            baseline: float | None = None
            for method in methods:
                record = new_record(name, buckets, method)
                records.append(record)
                elapsed = time.perf_counter() - began
                if args.time_budget and elapsed > args.time_budget:
                    not_run.append(f"{name} | buckets {buckets} | {method}")
                    record["status"] = "skipped"
                    record["error"] = (
                        f"time budget of {args.time_budget:g} s spent ({elapsed:.0f} s)"
                    )
                    print(progress(record), flush=True)
                    continue
                if work is None and build_error is None:
                    try:
                        work = build_workload(name, args.scale, device)
                        sizes[name] = work.sizes
                    except Exception as failed:  # e.g. out of memory: the other models still run
                        build_error = f"building the model: {describe(failed)}"
                        free_memory(device)
                if work is None:
                    record |= {"status": "failed", "error": build_error}
                    print(progress(record), flush=True)
                    continue
                if method == "torch:powerSGD_hook" and several_buckets(work, buckets, device):
                    # Issued from round 1's callback, its round 2 deadlocks on Gloo once a model
                    # has several buckets, even at world size 1 (docs/benchmarks.md).
                    record["status"] = "skipped"
                    record["error"] = "PyTorch's powerSGD_hook hangs on Gloo with several buckets"
                    print(progress(record), flush=True)
                    continue
                for key in ("parameters", "input", "autocast"):
                    record[key] = work.sizes[key]
                try:
                    record |= run_configuration(
                        work, method, buckets, args.warmup, args.steps, device
                    )
                    record["status"] = "ok"
                except Exception as failed:  # one configuration's failure ends only it
                    record |= {"status": "failed", "error": describe(failed)}
                free_memory(device)
                if record["status"] == "ok":
                    if method == PLAIN:
                        baseline = record["median_ms"]
                    if baseline:
                        record["ratio"] = record["median_ms"] / baseline
                print(progress(record), flush=True)
        del work
        gc.unfreeze()
        free_memory(device)
    return records, sizes, not_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=DEFAULT_MODELS)
    parser.add_argument(
        "--methods",
        nargs="+",
        help="labels ('gradcomp:topk', 'torch:powerSGD_hook', ...) or gradcomp names "
        "(default: all; plain DDP always runs, as the baseline)",
    )
    parser.add_argument(
        "--buckets", nargs="+", choices=list(BUCKET_CAP_MB), default=["default", "one"]
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (>= 3)")
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--markdown", type=Path, help="write tables of the records here")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="start no configuration after this many seconds (0: no limit)",
    )
    args = parser.parse_args()
    try:
        methods = resolve_methods(args.methods)
    except ValueError as bad:
        parser.error(str(bad))
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: must be >= 1")
    if args.warmup <= TORCH_POWERSGD_START:
        parser.error(
            f"--warmup {args.warmup}: must be >= {TORCH_POWERSGD_START + 1}, so that timed steps "
            f"come after DDP's bucket rebuild and PyTorch PowerSGD's {TORCH_POWERSGD_START} "
            "dense steps"
        )
    if args.time_budget < 0:
        parser.error(f"--time-budget {args.time_budget}: must be >= 0 (0: no limit)")
    if args.device == "cuda":
        problem = cuda_unavailable(
            "bench_ddp_gpu", "for a CPU smoke run use --device cpu --scale tiny"
        )
        if problem:
            print(problem, file=sys.stderr)
            return 2

    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # what a ResNet training script turns on
    began = time.perf_counter()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory() as rendezvous:
        # One process group for the whole run: world size 1, rank 0.
        dist.init_process_group(
            backend, init_method=f"file://{rendezvous}/store", rank=0, world_size=1
        )
        try:
            records, sizes, not_run = run_all(args, methods, device, began)
        finally:
            gc.unfreeze()
            gc.collect()  # DDP models and hook states go before the group they use
            dist.destroy_process_group()
    elapsed = time.perf_counter() - began
    if not_run:
        print(
            f"bench_ddp_gpu: time budget of {args.time_budget:g} s exceeded after {elapsed:.0f} s; "
            f"{len(not_run)} configurations not run: {'; '.join(not_run)}",
            flush=True,
        )
    meta: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name(device),
        "backend": backend,
        "cuda": torch.version.cuda,
        "scale": args.scale,
        "warmup": args.warmup,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "cudnn_benchmark": device.type == "cuda",
        "models": sizes,
        "time_budget_s": args.time_budget or None,
        "elapsed_s": elapsed,
        "budget_exceeded": bool(not_run),
        "not_run": not_run,
    }
    if args.json:
        write_records(args.json, records, meta)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(records, meta, date) + "\n")
    return 0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass  # not Linux: platform's answer below
    return platform.processor() or platform.machine() or "cpu"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(records: list[dict[str, Any]], meta: dict[str, Any], date: str) -> str:
    """One table per model and bucket setting: ms/step and its multiple of plain DDP."""
    lines = [
        f"Device: {meta['device_name']} ({meta['device']}, {meta['backend']}, world size 1); "
        f"torch {torch.__version__}; {date}; median of {meta['steps']} steps after "
        f"{meta['warmup']} warm-up steps.",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        "",
    ]
    if meta["budget_exceeded"]:
        lines += [
            f"Time budget of {meta['time_budget_s']:g} s exceeded: "
            f"{len(meta['not_run'])} configurations not run (marked below).",
            "",
        ]
    groups = dict.fromkeys((r["model"], r["buckets"]) for r in records)
    for model, buckets in groups:
        rows = [r for r in records if r["model"] == model and r["buckets"] == buckets]
        size = meta["models"].get(model)
        described = (
            f"{size['parameters']:,} parameters, input {size['input']}"
            + (f", {size['autocast']} autocast" if size["autocast"] else "")
            if size
            else "not built"
        )
        lines += [
            f"#### {model} ({described}); buckets: {buckets} "
            f"(bucket_cap_mb {BUCKET_CAP_MB[buckets]:g})",
            "",
            "| method | ms/step | p10-p90 ms | x plain DDP | wire / dense | DDP buckets |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['method']} | {r['status']}: {_cell(r['error'])} | | | | |")
                continue
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
            wire = "" if r["bytes_ratio"] is None else f"{r['bytes_ratio']:.4f}"
            count = "" if r["ddp_buckets"] is None else str(r["ddp_buckets"])
            lines.append(
                f"| {r['method']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | "
                f"{ratio} | {wire} | {count} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
