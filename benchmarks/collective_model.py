"""The cost model of gradcomp.cost_model against bench_collectives.py's measurements, then
extrapolated to 1,024 ranks.

    python benchmarks/collective_model.py docs/results/collectives.json \\
        --json docs/results/collective_model.json --markdown docs/results/collective_model.md \\
        --plot docs/results/collective_model.png

Check: for every measured method and layout, predicted step = compute + the hook's measured
encode and decode time + communication, where communication is the bytes crossing a node link
over its measured rate (link_ms), plus a latency per message step and, for a hierarchy, the
bytes inside the node over an intra-node rate. Those two constants are fitted by least
squares over all the measurements (so the check is in-sample: 2 constants for about 30
points); the table also gives the error with the link bytes alone. Nothing overlaps in the
model, so it errs high where DDP hides communication behind backward.

Extrapolation: per rank, for a 25.6M-parameter model (ResNet-50's size) at 1, 10 and 100
Gbit/s and P = 2..1,024, the bytes on the wire and the predicted communication plus codec time
of plain DDP's ring allreduce, Top-K 1% and sign, each by allgather and two_phase. The codec
times are the measured ones scaled per element (allgather decodes P payloads, so its decode is
fitted as a + b*P). The crossover is the smallest P at which a method's predicted time reaches
dense allreduce's: past it, that method stops paying.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from gradcomp.cost_model import Link, allgather_wire, allreduce_wire

PARAMETERS = 25_600_000  # ResNet-50
LATENCY = 20e-6  # seconds per message step in the extrapolation (a cross-node hop)
WORLD_SIZES = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
BANDWIDTHS = [1.0, 10.0, 100.0]  # Gbit/s
# Bytes per gradient element of each payload (Top-K: value + index per kept element; sign:
# one bit plus a float scale per 1,024-element chunk).
PAYLOAD_PER_ELEMENT = {"topk 1%": 0.01 * 8, "sign": 1 / 8 + 4 / 1024}


def message_steps(r: dict, buckets: int) -> int:
    """Message steps one rank goes through per step: per bucket, 2(P-1) for a ring allreduce
    or two phases, P-1 for an allgather; a hierarchy adds 2(L-1) + (L-1) inside the node and
    its exchange between the N nodes."""
    world, local = r["world_size"], r["ranks_per_node"]
    method = r["method"]
    if "hierarchy=" in method:
        nodes = world // local
        between = 2 * (nodes - 1) if "two_phase" in method else nodes - 1
        return buckets * (3 * (local - 1) + between)
    if method.startswith("allreduce") or method.startswith("torch_"):
        return buckets * 2 * (world - 1)
    return buckets * (2 if "two_phase" in method else 1) * (world - 1)


def link_ms(r: dict) -> float:
    """The bytes that cross a node link over its measured rate (a node link carries one hop of
    a ring per step: a ring allreduce or allgather moves wire_bytes / B; an all_to_all and the
    L parallel exchanges of a hierarchy share the link L ways)."""
    bandwidth = r["measured_gbit"] * 1e9 / 8
    local = r["ranks_per_node"]
    method = r["method"]
    if "hierarchy=" in method:
        return 1e3 * local * r["wire_bytes_between_nodes"] / bandwidth
    if "two_phase" in method and local > 1:  # the all_to_all's cross-node part, L ways
        world = r["world_size"]
        share = local * (world - local) / (world - 1)
        return 1e3 * max(1.0, share) * r["wire_bytes_per_step"] / bandwidth
    return 1e3 * r["wire_bytes_per_step"] / bandwidth


def intra_node_bytes(r: dict) -> int:
    """What a hierarchy moves inside the node (loopback here, NVLink on GPUs)."""
    if "hierarchy=" not in r["method"]:
        return 0
    return r["wire_bytes_per_step"] - r["wire_bytes_between_nodes"]


def fit(records: list[dict]) -> tuple[float, float]:
    """Seconds per message step, and seconds per byte inside a node, by least squares (both
    at least 0) on what the compute, codec and link terms leave of each measured step."""
    rows = []
    buckets = _buckets(records)
    for r in records:
        if "step_ms" not in r:
            continue
        rest = r["step_ms"] - r["compute_ms"] - _codec_ms(r) - link_ms(r)
        steps = message_steps(r, buckets[(r["world_size"], r["ranks_per_node"])])
        rows.append((1e-3 * rest, steps, intra_node_bytes(r)))

    def solve(use_steps: bool, use_bytes: bool) -> tuple[float, float]:
        # Normal equations of the (at most) two-column least squares, without an intercept.
        xs = [(s if use_steps else 0.0, b if use_bytes else 0.0) for _, s, b in rows]
        a11 = sum(x[0] * x[0] for x in xs)
        a12 = sum(x[0] * x[1] for x in xs)
        a22 = sum(x[1] * x[1] for x in xs)
        b1 = sum(x[0] * y for x, (y, _, _) in zip(xs, rows, strict=True))
        b2 = sum(x[1] * y for x, (y, _, _) in zip(xs, rows, strict=True))
        if use_steps and use_bytes:
            det = a11 * a22 - a12 * a12
            return (b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det
        if use_steps:
            return b1 / a11, 0.0
        return 0.0, b2 / a22 if a22 else 0.0

    latency, per_byte = solve(True, True)
    if latency < 0 or per_byte < 0:
        latency, per_byte = solve(latency >= 0, per_byte >= 0)
    return max(latency, 0.0), max(per_byte, 0.0)


def _codec_ms(r: dict) -> float:
    return r.get("compress_ms", 0.0) + r.get("decompress_ms", 0.0)


def _buckets(records: list[dict]) -> dict[tuple[int, int], int]:
    """DDP buckets per job, as the gradcomp methods of that job counted them."""
    out: dict[tuple[int, int], int] = {}
    for r in records:
        key = (r["world_size"], r["ranks_per_node"])
        out[key] = max(out.get(key, 1), r.get("buckets") or 1)
    return out


def check(records: list[dict], latency: float, per_byte: float) -> list[dict]:
    rows = []
    buckets = _buckets(records)
    for r in records:
        if "step_ms" not in r:
            continue
        steps = message_steps(r, buckets[(r["world_size"], r["ranks_per_node"])])
        comm = link_ms(r) + 1e3 * (steps * latency + intra_node_bytes(r) * per_byte)
        predicted = r["compute_ms"] + _codec_ms(r) + comm
        unfitted = r["compute_ms"] + _codec_ms(r) + link_ms(r)
        rows.append(
            {
                "world_size": r["world_size"],
                "ranks_per_node": r["ranks_per_node"],
                "method": r["method"],
                "measured_ms": r["step_ms"],
                "predicted_ms": predicted,
                "error": predicted / r["step_ms"] - 1.0,
                "bytes_only_error": unfitted / r["step_ms"] - 1.0,
            }
        )
    return rows


def codec_costs(records: list[dict]) -> dict[str, dict[str, float]]:
    """Seconds per gradient element: encode, and decode as a + b*P (allgather) or a (two
    phases), fitted over the flat layouts' measurements."""
    out: dict[str, dict[str, float]] = {}
    for label, spec in (("topk 1%", "topk:ratio=0.01"), ("sign", "sign")):
        for collective in ("allgather", "two_phase"):
            rows = [
                r
                for r in records
                if "step_ms" in r
                and r["ranks_per_node"] == 1
                and r["method"].split("|")[0] == spec
                and ("two_phase" in r["method"]) == (collective == "two_phase")
            ]
            if not rows:
                continue
            encode = statistics.mean(1e-3 * r["compress_ms"] / r["parameters"] for r in rows)
            xs = [r["world_size"] for r in rows]
            ys = [1e-3 * r["decompress_ms"] / r["parameters"] for r in rows]
            if collective == "allgather" and len(set(xs)) > 1:
                slope, intercept = statistics.linear_regression(xs, ys)
                slope = max(slope, 0.0)
            else:
                slope, intercept = 0.0, statistics.mean(ys)
            out[f"{label} {collective}"] = {
                "encode": encode,
                "decode": intercept,
                "per_rank": slope,
            }
    return out


def extrapolate(costs: dict[str, dict[str, float]]) -> list[dict]:
    rows = []
    dense = 4 * PARAMETERS
    for gbit in BANDWIDTHS:
        link = Link(LATENCY, gbit * 1e9 / 8)
        for world in WORLD_SIZES:
            rows.append(
                {
                    "gbit": gbit,
                    "world_size": world,
                    "method": "allreduce",
                    "wire_bytes": allreduce_wire(dense, world),
                    "seconds": link.allreduce(dense, world),
                    "comm_seconds": link.allreduce(dense, world),
                }
            )
            for label, per_element in PAYLOAD_PER_ELEMENT.items():
                payload = int(per_element * PARAMETERS)
                for collective in ("allgather", "two_phase"):
                    cost = costs.get(f"{label} {collective}")
                    if cost is None:
                        continue
                    codec = PARAMETERS * (
                        cost["encode"] + cost["decode"] + cost["per_rank"] * world
                    )
                    if collective == "allgather":
                        wire = allgather_wire(payload, world)
                        comm = link.allgather(payload, world)
                    else:
                        chunk = payload // world
                        wire = payload - chunk + allgather_wire(chunk, world)
                        comm = link.two_phase(payload, chunk, world)
                    rows.append(
                        {
                            "gbit": gbit,
                            "world_size": world,
                            "method": f"{label} {collective}",
                            "wire_bytes": wire,
                            "seconds": comm + codec,
                            "comm_seconds": comm,
                        }
                    )
    return rows


def _ranges(sizes: list[int]) -> str:
    """World sizes of WORLD_SIZES as runs: [4, 8, 16] -> "4-16"; [] -> "none"."""
    runs: list[list[int]] = []
    for p in sizes:
        if runs and WORLD_SIZES.index(p) == WORLD_SIZES.index(runs[-1][-1]) + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    shown = [f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs]
    return ", ".join(shown) or "none"


def crossovers(rows: list[dict]) -> list[dict]:
    """Where each method pays against dense allreduce: the world sizes at which it puts fewer
    bytes on the wire, spends less time communicating, and takes less time in all (with this
    CPU's codec times)."""
    out = []
    for gbit in BANDWIDTHS:
        at_gbit = [r for r in rows if r["gbit"] == gbit]
        dense = {r["world_size"]: r for r in at_gbit if r["method"] == "allreduce"}
        for method in dict.fromkeys(r["method"] for r in at_gbit if r["method"] != "allreduce"):
            mine = [r for r in at_gbit if r["method"] == method]

            def paying(key: str, mine: list[dict] = mine, dense: dict = dense) -> str:
                return _ranges(
                    [r["world_size"] for r in mine if r[key] < dense[r["world_size"]][key]]
                )

            out.append(
                {
                    "gbit": gbit,
                    "method": method,
                    "fewer_bytes_at": paying("wire_bytes"),
                    "faster_communication_at": paying("comm_seconds"),
                    "faster_at": paying("seconds"),
                }
            )
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, grid = plt.subplots(2, 2, figsize=(11, 8.5))
    axes = list(grid.flat)
    styles = {m: ("-" if "two_phase" in m or m == "allreduce" else "--") for m in methods}
    for method in methods:
        mine = [r for r in rows if r["method"] == method and r["gbit"] == BANDWIDTHS[0]]
        axes[0].plot([r["world_size"] for r in mine], [r["wire_bytes"] / 1e6 for r in mine],
                     styles[method], marker="o", ms=3, label=method)  # fmt: skip
    axes[0].set_title(f"bytes on the wire per rank and step\n({PARAMETERS / 1e6:.1f}M parameters)")
    axes[0].set_ylabel("MB per rank per step")
    for ax, gbit in zip(axes[1:], BANDWIDTHS, strict=True):  # one panel per link speed
        for method in methods:
            mine = [r for r in rows if r["method"] == method and r["gbit"] == gbit]
            ax.plot([r["world_size"] for r in mine], [1e3 * r["seconds"] for r in mine],
                    styles[method], marker="o", ms=3, label=method)  # fmt: skip
        ax.set_title(f"predicted communication + codec time\n{gbit:g} Gbit/s per rank")
        ax.set_ylabel("ms per step")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("ranks (P)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("measured", type=Path, help="bench_collectives.py's JSON")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    data = json.loads(args.measured.read_text())
    records = data["records"] if isinstance(data, dict) else data
    latency, per_byte = fit(records)
    checked = check(records, latency, per_byte)
    costs = codec_costs(records)
    rows = extrapolate(costs)
    cross = crossovers(rows)
    lines = [
        f"Fitted: {1e6 * latency:.0f} us per message step; inside a node "
        f"{(8e-9 / per_byte) if per_byte else float('inf'):.2f} Gbit/s.",
        "",
        "| ranks | nodes | method | measured ms | predicted ms | error | error, link bytes only |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checked:
        lines.append(
            f"| {c['world_size']} | {c['world_size'] // c['ranks_per_node']} | `{c['method']}` | "
            f"{c['measured_ms']:.0f} | {c['predicted_ms']:.0f} | {100 * c['error']:+.0f}% | "
            f"{100 * c['bytes_only_error']:+.0f}% |"
        )
    errors = [abs(c["error"]) for c in checked]
    raw = [abs(c["bytes_only_error"]) for c in checked]
    lines += ["", f"Median |error| {100 * statistics.median(errors):.0f}%, "
              f"largest {100 * max(errors):.0f}% (link bytes only: median "
              f"{100 * statistics.median(raw):.0f}%, largest {100 * max(raw):.0f}%).", "",
              "Where each method beats dense allreduce (P = ranks, of "
              f"{', '.join(map(str, WORLD_SIZES))}):", "",
              "| Gbit/s | method | fewer bytes at P | faster communication at P | faster "
              "communication + codec (this CPU's codec times) at P |",
              "|---|---|---|---|---|"]  # fmt: skip
    for c in cross:
        lines.append(
            f"| {c['gbit']:g} | {c['method']} | {c['fewer_bytes_at']} | "
            f"{c['faster_communication_at']} | {c['faster_at']} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(
            {"command": " ".join(sys.argv), "latency_s": LATENCY, "parameters": PARAMETERS,
             "fitted_latency_s": latency, "fitted_intra_node_seconds_per_byte": per_byte,
             "codec_seconds_per_element": costs, "check": checked, "extrapolation": rows,
             "crossovers": cross}, indent=1) + "\n")  # fmt: skip
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
