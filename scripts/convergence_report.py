"""Tables and curves from the convergence suites' JSON (tests/convergence).

    python scripts/convergence_report.py results/convergence/*.json --out docs/results

For each workload writes <out>/convergence_<workload>.md (method, final metric, delta vs
dense, bytes per step and their ratio to dense) and <out>/convergence_<workload>.png (the metric
against step and against cumulative bytes sent per rank), and prints the tables. Several files
of one workload (runs of the same recipe made by separate commands, e.g. the full suite and
`suite.py --methods ...`) are merged into one table, first file first; with --merged-json the
merged record is written too. --plot-labels limits the curves to some methods.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

LABELS = {"test_accuracy": "test accuracy (%)", "val_loss": "validation loss (nats/byte)"}


def _dense(result: dict) -> dict:
    for r in result["runs"]:
        if r["spec"] is None:
            return r
    raise ValueError(f"{result['workload']}: no dense run in the results")


def _value(metric: str, v: float) -> str:
    if math.isnan(v):
        return "diverged (NaN)"
    return f"{100 * v:.2f}%" if metric == "test_accuracy" else f"{v:.4f}"


def _delta(metric: str, v: float, dense: float) -> str:
    if math.isnan(v):
        return "—"
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
        for key, value in r.get("options", {}).items():
            spec += f", {key}={value}"
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


def merge(results: list[dict]) -> dict:
    """One record from several of the same workload and recipe; a label seen twice keeps its
    first run."""
    first = results[0]
    for other in results[1:]:
        keys = set(first["recipe"]) | set(other["recipe"])  # older records lack newer fields
        same = all(first["recipe"].get(k) == other["recipe"].get(k) for k in keys)
        if not same or other["world_size"] != first["world_size"]:
            raise ValueError(
                f"{first['workload']}: cannot merge runs of different recipes or world sizes: "
                f"{first['recipe']} ({first['world_size']} ranks) vs {other['recipe']} "
                f"({other['world_size']} ranks)"
            )
    runs, seen = [], set()
    for result in results:
        for r in result["runs"]:
            if r["label"] not in seen:
                seen.add(r["label"])
                runs.append(r)
    dates = sorted(r["meta"]["date"] for r in results)
    return {
        **first,
        "meta": {**first["meta"], "date": dates[-1], "merged_dates": dates},
        "runs": runs,
    }


def plot(result: dict, path: Path, labels: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    scale = 100.0 if metric == "test_accuracy" else 1.0
    fig, (by_step, by_bytes) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.get_cmap("tab20").colors  # more methods than the default cycle's 10 colours
    for ax in (by_step, by_bytes):
        ax.set_prop_cycle(color=colors[::2] + colors[1::2])
    for r in result["runs"]:
        if labels and r["label"] not in labels and r["spec"] is not None:
            continue
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
    parser.add_argument("--plot-labels", nargs="+", help="methods to draw (default: all)")
    parser.add_argument("--suffix", default="", help="appended to the output names (_adamw)")
    parser.add_argument(
        "--merged-json", action="store_true", help="also write <out>/convergence_<workload>.json"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    by_workload: dict[str, list[dict]] = {}
    for path in args.results:
        result = json.loads(path.read_text())
        by_workload.setdefault(result["workload"], []).append(result)
    for name, results in by_workload.items():
        result = merge(results)
        text = table(result)
        stem = f"convergence_{name}{args.suffix}"
        (args.out / f"{stem}.md").write_text(text)
        plot(result, args.out / f"{stem}.png", args.plot_labels)
        if args.merged_json:
            (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{name} ({len(results)} file(s)):\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
