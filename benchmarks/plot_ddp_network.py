"""The figure for bench_ddp_network.py's records: DDP step time relative to plain allreduce.

    python benchmarks/plot_ddp_network.py docs/results/ddp_network.json \\
        --out docs/results/ddp_network.png

bench_ddp_network.py --plot PATH draws the same figure after a run; this script redraws it
from a saved JSON (bench_ddp_network.py --json), without torch.

One row of panels per model (in the records' order), one column per world size. Each panel has
one group of horizontal bars per method, one bar per link speed (one colour each, slowest on
top). A bar runs from 1 (allreduce's step time in the same job, the dashed line) to the
method's step time / allreduce's, on a log axis shared by every panel: left of the line is
faster. Methods keep the records' order, "auto*" first (bold label, hatched bars, yellow band),
then gradcomp's, then PyTorch's own hooks ("torch_*": labelled "PyTorch ...", lighter bars, on
a grey band). A method measured nowhere is left out and named under the figure; one measured in
some panels or at some link speeds only is marked "not measured" where it is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BANDWIDTH_COLOURS = {"1": "#0072B2", "10": "#E69F00", "loopback": "#009E73"}
OTHER_COLOURS = ["#CC79A7", "#56B4E9", "#D55E00", "#999999"]
TICKS = [0.1, 0.2, 0.25, 0.33, 0.5, 0.67, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0]


def bandwidth_label(bandwidth: str) -> str:
    return "loopback (unshaped)" if bandwidth == "loopback" else f"{float(bandwidth):g} Gbit/s"


def _bandwidth_order(bandwidth: str) -> float:
    return float("inf") if bandwidth == "loopback" else float(bandwidth)


def is_auto(method: str) -> bool:
    return method.startswith("auto")


def is_torch(method: str) -> bool:
    return method.startswith("torch_")


def method_label(method: str) -> str:
    return f"PyTorch {method.removeprefix('torch_')}" if is_torch(method) else method


def _lighter(colour: str, amount: float = 0.45) -> tuple[float, float, float]:
    rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    return (
        rgb[0] + (1 - rgb[0]) * amount,
        rgb[1] + (1 - rgb[1]) * amount,
        rgb[2] + (1 - rgb[2]) * amount,
    )


def ratios(records: list[dict]) -> dict[tuple[str, int, str, str], float]:
    """(model, world size, bandwidth, method) -> step time / allreduce's in the same job.
    Jobs without a measured allreduce, and the allreduce rows themselves, are left out."""
    base = {
        (r["model"], r["world_size"], r["bandwidth"]): r["step_ms"]
        for r in records
        if r["method"] == "allreduce" and "step_ms" in r
    }
    out = {}
    for r in records:
        key = (r["model"], r["world_size"], r["bandwidth"])
        if r["method"] == "allreduce" or "step_ms" not in r or key not in base:
            continue
        out[(key[0], key[1], key[2], r["method"])] = r["step_ms"] / base[key]
    return out


def method_order(methods: list[str]) -> list[str]:
    """auto* first, then gradcomp's, then PyTorch's hooks, each in the given order."""
    return sorted(methods, key=lambda m: 0 if is_auto(m) else 2 if is_torch(m) else 1)


def plot(records: list[dict], path: Path, dpi: int = 110) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    values = ratios(records)
    models = list(dict.fromkeys(r["model"] for r in records))
    worlds = sorted({r["world_size"] for r in records})
    bandwidths = sorted({r["bandwidth"] for r in records}, key=_bandwidth_order)
    everything = [m for m in dict.fromkeys(r["method"] for r in records) if m != "allreduce"]
    methods = method_order([m for m in everything if any(k[3] == m for k in values)])
    never = [m for m in everything if m not in methods]
    colours = {
        b: BANDWIDTH_COLOURS.get(b, OTHER_COLOURS[i % len(OTHER_COLOURS)])
        for i, b in enumerate(bandwidths)
    }

    row_height = max(4.0, 0.3 * len(methods) + 1.0)
    fig, axes = plt.subplots(
        max(len(models), 1),
        max(len(worlds), 1),
        figsize=(14, row_height * max(len(models), 1) + 1.2),
        sharex=True,
        squeeze=False,
    )
    if not methods:
        for ax in axes.flat:
            ax.text(0.5, 0.5, "nothing measured", ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
    shown = list(values.values()) or [1.0]
    low = min(0.5, min(shown) / 1.15)
    high = max(2.0, max(shown) * 1.15)
    slot = 0.84 / max(len(bandwidths), 1)
    auto_shown = False
    for i, model in enumerate(models):
        for j, world in enumerate(worlds):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.set_xlim(low, high)
            for y, method in enumerate(methods):
                if is_torch(method) or is_auto(method):
                    band = "#FFF4CC" if is_auto(method) else "#EEEEEE"
                    ax.axhspan(y - 0.5, y + 0.5, color=band, zorder=0, lw=0)
                missing = [b for b in bandwidths if (model, world, b, method) not in values]
                if len(missing) == len(bandwidths):
                    ax.text(1.03, y, "not measured", va="center", fontsize=8, color="#777777")
                    continue
                for k, b in enumerate(bandwidths):
                    offset = y - 0.42 + slot * (k + 0.5)
                    ratio = values.get((model, world, b, method))
                    if ratio is None:
                        ax.text(1.03, offset, "not measured", va="center", fontsize=7,
                                color="#777777")  # fmt: skip
                        continue
                    colour = _lighter(colours[b]) if is_torch(method) else colours[b]
                    ax.barh(offset, ratio - 1.0, left=1.0, height=slot * 0.9, color=colour,
                            edgecolor="black" if is_auto(method) else colour, linewidth=0.6,
                            hatch="///" if is_auto(method) else None, zorder=2)  # fmt: skip
                    auto_shown |= is_auto(method)
            ax.axvline(1.0, color="black", linestyle="--", linewidth=1.2, zorder=3)
            ax.set_ylim(max(len(methods), 1) - 0.5, -0.5)
            ax.set_yticks(range(len(methods)))
            if j == 0:
                ax.set_yticklabels([method_label(m) for m in methods], fontsize=10)
                for tick, method in zip(ax.get_yticklabels(), methods, strict=True):
                    if is_auto(method):
                        tick.set_fontweight("bold")
                    if is_torch(method):
                        tick.set_fontstyle("italic")
                ax.set_ylabel(model, fontsize=13, fontweight="bold")
            else:
                ax.set_yticklabels([])
            ax.tick_params(axis="y", length=0)
            ax.xaxis.set_major_locator(FixedLocator([t for t in TICKS if low <= t <= high]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
            ax.tick_params(axis="x", labelsize=10, labelbottom=True)
            ax.grid(True, axis="x", alpha=0.35, zorder=1)
            ax.set_title(f"{model}, {world} ranks", fontsize=12)
            if i == len(models) - 1:
                ax.set_xlabel(
                    "step time / allreduce's (log scale)   \u2190 faster | slower \u2192",
                    fontsize=10,
                )

    handles = [Patch(color=colours[b], label=bandwidth_label(b)) for b in bandwidths]
    handles.append(Patch(facecolor=_lighter("#777777"), label="PyTorch's own hook (lighter)"))
    if auto_shown:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="auto"))
    height = fig.get_figheight()
    fig.suptitle(
        "DDP step time relative to plain allreduce (dashed line = 1x; lower is better)",
        fontsize=14,
        y=1.0 - 0.1 / height,
        va="top",
    )
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=11,
               bbox_to_anchor=(0.5, 1.0 - 0.45 / height), frameon=False)  # fmt: skip
    if never:
        fig.text(0.01, 0.005, "Not measured in any run (skipped or failed): "
                 + ", ".join(method_label(m) for m in never), fontsize=9,
                 color="#555555")  # fmt: skip
    top = 1.0 - 0.75 / height
    bottom = 0.3 / height if never else 0.0
    fig.tight_layout(rect=(0.0, bottom, 1.0, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def load(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    records = data["records"] if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise ValueError(f"{path}: no list of records")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", type=Path, help="records from bench_ddp_network.py --json")
    parser.add_argument("--out", type=Path, help="PNG (default: the JSON's path, .png)")
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args(argv)
    out = args.out or args.json.with_suffix(".png")
    plot(load(args.json), out, dpi=args.dpi)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
