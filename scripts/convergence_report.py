"""Tables and curves from the convergence suites' JSON (tests/convergence).

    python scripts/convergence_report.py results/convergence/*.json --out docs/results

For each workload file writes <out>/convergence_<workload>.md (method, final metric, delta vs
dense, bytes per step and their ratio to dense) and <out>/convergence_<workload>.png (the metric
against step and against cumulative bytes sent per rank), and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LABELS = {"test_accuracy": "test accuracy (%)", "val_loss": "validation loss (nats/byte)"}


def _dense(result: dict) -> dict:
    for r in result["runs"]:
        if r["spec"] is None:
            return r
    raise ValueError(f"{result['workload']}: no dense run in the results")


def _value(metric: str, v: float) -> str:
    return f"{100 * v:.2f}%" if metric == "test_accuracy" else f"{v:.4f}"


def _delta(metric: str, v: float, dense: float) -> str:
    if metric == "test_accuracy":
        return f"{100 * (v - dense):+.2f} pt"
    return f"{100 * (v / dense - 1):+.2f}%"


def table(result: dict) -> str:
    metric, dense = result["metric"], _dense(result)
    rows = [
        f"| method | spec | {LABELS[metric]} | vs dense | bytes/step per rank | vs dense |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        spec = "DDP allreduce" if r["spec"] is None else f"`{r['spec']}`"
        if not r["error_feedback"]:
            spec += ", no EF"
        ratio = r["bytes_per_step"] / r["dense_bytes_per_step"]
        rows.append(
            f"| {r['label']} | {spec} | {_value(metric, r[metric])} | "
            f"{_delta(metric, r[metric], dense[metric])} | {r['bytes_per_step']:,.0f} | "
            f"{ratio:.4f} ({1 / ratio:.0f}x less) |"
            if r["spec"] is not None
            else f"| {r['label']} | {spec} | {_value(metric, r[metric])} | — | "
            f"{r['bytes_per_step']:,.0f} | 1 |"
        )
    return "\n".join(rows) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    scale = 100.0 if metric == "test_accuracy" else 1.0
    fig, (by_step, by_bytes) = plt.subplots(1, 2, figsize=(13, 5))
    for r in result["runs"]:
        steps = [p["step"] for p in r["curve"]]
        sent = [p["bytes_sent"] / 1e6 for p in r["curve"]]
        values = [scale * p[metric] for p in r["curve"]]
        style = {"linewidth": 2.5, "color": "black"} if r["spec"] is None else {}
        if not r["error_feedback"]:
            style = {"linestyle": "--"}
        by_step.plot(steps, values, marker="o", markersize=3, label=r["label"], **style)
        by_bytes.plot(sent, values, marker="o", markersize=3, label=r["label"], **style)
    by_step.set_xlabel("step")
    by_bytes.set_xlabel("MB sent per rank (log scale)")
    by_bytes.set_xscale("log")
    for ax in (by_step, by_bytes):
        ax.set_ylabel(LABELS[metric])
        ax.grid(alpha=0.3)
    if metric == "test_accuracy":
        final = [scale * r[metric] for r in result["runs"]]
        for ax in (by_step, by_bytes):
            ax.set_ylim(max(0.0, min(final) - 8), max(final) + 1.5)
    by_bytes.legend(fontsize=8, loc="best")
    recipe = result["recipe"]
    fig.suptitle(
        f"{result['workload']}: {result['world_size']} ranks (Gloo), {recipe['optimizer']} "
        f"lr {recipe['lr']}, batch {recipe['batch_size']} per rank; "
        f"torch {result['meta']['torch']}, {result['meta']['date'][:10]}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="suite JSON files")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.results:
        result = json.loads(path.read_text())
        name = result["workload"]
        text = table(result)
        (args.out / f"convergence_{name}.md").write_text(text)
        plot(result, args.out / f"convergence_{name}.png")
        print(f"{name} ({path}):\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
