"""Convergence against the number of workers, with gradcomp's simulator (one process).

Trains a suite workload once per (method, worker count): each simulated worker draws its own
data (the workload's stream for that rank) and the gradients go through the hook's own codecs
(gradcomp.Simulator). Writes one JSON file; with --plot, the final metric's gap to dense
against the worker count.

    python tests/convergence/scaling.py --workers 2 8 16 --methods dense "topk 1%" \
        --out results/convergence/char_lm_scaling.json --plot docs/results/char_lm_scaling.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gradcomp  # noqa: E402

from workloads import (  # noqa: E402
    METHODS_BY_LABEL,
    WORKLOADS,
    Method,
    Recipe,
    hook_options,
    lr_at,
    optimizer_for,
    recipe_for,
)


def train(workload_name: str, recipe: Recipe, method: Method, workers: int) -> dict:
    """One run with `workers` simulated ranks; returns the final metric and its curve."""
    cls = WORKLOADS[workload_name][0]
    shards = [cls(recipe, rank, workers) for rank in range(workers)]
    lead = shards[0]
    torch.manual_seed(recipe.seed)
    model = lead.model()
    optimizer = optimizer_for(recipe, model, method.options.get("momentum", 0.0))
    options, clip = hook_options(recipe, method)
    # Dense is the "none" method: each worker's bucket divided by the worker count and summed,
    # as DDP's allreduce does.
    sim = gradcomp.Simulator(
        model,
        method.spec or "none",
        workers=workers,
        error_feedback=method.error_feedback,
        seed=recipe.seed,
        **options,
    )
    gradcomp.check_optimizer(optimizer, method.options.get("momentum", 0.0))
    total = lead.total_steps
    eval_steps = {round(total * (i + 1) / recipe.evals) for i in range(recipe.evals)}
    streams = [shard.batches() for shard in shards]
    curve = []
    began = time.perf_counter()
    for step in range(1, total + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, step - 1, total)
        optimizer.zero_grad()
        batches = [next(stream) for stream in streams]
        for worker, batch in enumerate(batches):
            lead.loss(model, batch).backward()
            sim.take_gradient(worker)
        sim.average()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if step in eval_steps:
            model.eval()
            with torch.no_grad():
                metric = lead.evaluate_local(model)
            model.train()
            curve.append({"step": step, lead.metric: metric})
            print(
                f"[{workers} workers] {method.label}: step {step}/{total} {lead.metric} "
                f"{metric:.4f} ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
    stats = sim.stats()
    return {
        **asdict(method),
        "workers": workers,
        lead.metric: curve[-1][lead.metric],
        "bytes_ratio": stats["ratio"],
        "seconds": time.perf_counter() - began,
        "curve": curve,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    dense = {r["workers"]: r[metric] for r in result["runs"] if r["spec"] is None}
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["label"] for r in result["runs"] if r["spec"] is not None):
        runs = [r for r in result["runs"] if r["label"] == label and r["workers"] in dense]
        xs = [r["workers"] for r in runs]
        ys = [100 * (r[metric] / dense[r["workers"]] - 1) for r in runs]
        ax.plot(xs, ys, marker="o", label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(dense), [str(w) for w in sorted(dense)])
    ax.set_xlabel("workers (simulated data-parallel ranks)")
    ax.set_ylabel(f"final {metric} vs dense (%)")
    ax.set_title(f"{result['workload']}: gap to dense against the worker count")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="char_lm", choices=sorted(WORKLOADS))
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--methods", nargs="+", default=["dense", "topk 1%"])
    parser.add_argument("--out", type=Path, default=Path("results/convergence/scaling.json"))
    parser.add_argument("--plot", type=Path, help="PNG of the gap to dense per worker count")
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in METHODS_BY_LABEL]
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {', '.join(METHODS_BY_LABEL)}")
    if any(w < 1 for w in args.workers):
        parser.error(f"--workers {args.workers}: each must be at least 1")
    torch.set_num_threads(1)
    recipe = recipe_for(args.workload)
    metric = WORKLOADS[args.workload][0].metric
    result = {
        "workload": args.workload,
        "metric": metric,
        "recipe": asdict(recipe),
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "command": " ".join(sys.argv),
        },
        "runs": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = result["runs"]
    for workers in args.workers:
        for label in args.methods:
            runs.append(train(args.workload, recipe, METHODS_BY_LABEL[label], workers))
            # After every run, so that a long study interrupted keeps what it did.
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    dense = {r["workers"]: r[metric] for r in runs if r["spec"] is None}
    print(f"\n{args.workload}: final {metric} (written to {args.out})")
    for r in runs:
        gap = (
            f"{100 * (r[metric] / dense[r['workers']] - 1):+.2f}%" if r["workers"] in dense else ""
        )
        print(f"  {r['workers']:>3} workers  {r['label']:<24} {r[metric]:.4f} {gap:>8}")
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
