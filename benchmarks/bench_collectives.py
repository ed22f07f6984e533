"""Bytes per rank and step time against the number of ranks, for the ways gradcomp's payloads
travel: allgather, two_phase, and a hierarchy of nodes, beside plain DDP.

    python benchmarks/bench_collectives.py --layouts 2 4 8 8:4 8:2 --bandwidth 1 \\
        --json docs/results/collectives.json --markdown docs/results/collectives.md

A layout "P" is P ranks, each a node of its own; "P:L" is P ranks as P/L nodes of L ranks.
Every node is a network namespace whose link to the others is shaped to --bandwidth Gbit/s
(shaped_network.py, needs root): ranks of one node talk over that namespace's loopback,
unshaped, and share the node's link, as GPUs of one machine share its NIC. Each layout is one
multi-node torchrun job (one node per namespace, L processes each) running
ddp_step_worker.py, which measures every method in turn; LOCAL_WORLD_SIZE is L, which is what
hierarchy="node" reads. Ranks run one thread each: the default model, "mlp" (4.2M parameters
in four matrices), computes little, so 8 ranks fit on 2 cores and the network sets the pace.
benchmarks/collective_model.py checks the cost model against these measurements.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench_ddp_network import WORKER, run_job

from harness import write_records
from models import MODELS

HERE = Path(__file__).resolve().parent
TOPK = "topk:ratio=0.01"
FLAT_METHODS = [
    "allreduce",
    TOPK,
    f"{TOPK}|collective=two_phase",
    "sign",
    "sign|collective=two_phase",
]
NODE_METHODS = [
    f"{TOPK}|hierarchy=node",
    f"{TOPK}|hierarchy=node|collective=two_phase",
    "sign|hierarchy=node",
]


def parse_layout(text: str) -> tuple[int, int]:
    """ "8" -> (8, 1); "8:4" -> (8, 4): ranks, ranks per node."""
    ranks, _, per_node = text.partition(":")
    try:
        world, local = int(ranks), int(per_node or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"layout {text!r}: valid: P or P:L, e.g. 8 or 8:4"
        ) from None
    if world < 2 or local < 1 or world % local or world // local < 2:
        raise argparse.ArgumentTypeError(
            f"layout {text!r}: P >= 2 ranks, L >= 1 per node, L divides P, at least 2 nodes"
        )
    return world, local


def markdown(records: list[dict]) -> str:
    lines = [
        "| ranks | nodes | method | step ms | vs allreduce | wire MB/rank | wire ratio | "
        "between nodes MB/rank | collectives |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {
        (r["world_size"], r["ranks_per_node"]): r["step_ms"]
        for r in records
        if r["method"] == "allreduce" and "step_ms" in r
    }
    for r in records:
        nodes = r["world_size"] // r["ranks_per_node"]
        if "step_ms" not in r:
            reason = r.get("skipped") or r.get("failed")
            lines.append(
                f"| {r['world_size']} | {nodes} | {r['method']} | not measured: {reason} |"
            )
            continue
        allreduce = base.get((r["world_size"], r["ranks_per_node"]))
        speed = f"{allreduce / r['step_ms']:.2f}x" if allreduce else ""
        lines.append(
            f"| {r['world_size']} | {nodes} | `{r['method']}` | {r['step_ms']:.0f} | {speed} | "
            f"{r['wire_bytes_per_step'] / 1e6:.3f} | {r['wire_ratio']:.4f} | "
            f"{r['wire_bytes_between_nodes'] / 1e6:.3f} | {', '.join(r.get('collectives', []))} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--layouts", nargs="+", type=parse_layout, default=["2", "4", "8", "8:4", "8:2"]
    )
    parser.add_argument("--bandwidth", type=float, default=1.0, help="Gbit/s per node link")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--methods", nargs="+", default=None, help="default: by layout")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per torchrun job")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    layouts = [parse_layout(x) if isinstance(x, str) else x for x in args.layouts]
    if args.bandwidth <= 0:
        parser.error(f"--bandwidth {args.bandwidth}: valid: a rate in Gbit/s > 0")
    if os.geteuid() != 0:
        print("bench_collectives: shaped links need root (namespaces and tc)", file=sys.stderr)
        return 2

    from shaped_network import ShapedNetwork

    records: list[dict] = []
    port = 29300 + os.getpid() % 200
    with tempfile.TemporaryDirectory() as tmp:
        for world, local in layouts:
            nodes = world // local
            methods = args.methods or (FLAT_METHODS + (NODE_METHODS if local > 1 else []))
            port += 1
            out = Path(tmp) / f"{world}-{local}.json"
            worker = [str(WORKER), "--model", args.model, "--methods", *methods,
                      "--steps", str(args.steps), "--warmup", str(args.warmup),
                      "--out", str(out)]  # fmt: skip
            env = dict(os.environ, PYTHONPATH=str(HERE), OMP_NUM_THREADS="1",
                       TORCH_CPP_LOG_LEVEL="ERROR", GLOO_SOCKET_IFNAME="eth0")  # fmt: skip
            with ShapedNetwork(nodes, args.bandwidth * 1000) as network:
                measured = network.measure_rate_gbit()
                print(f"-- {world} ranks as {nodes} nodes of {local}, {args.bandwidth:g} Gbit/s "
                      f"per node (measured {measured:.3f})", flush=True)  # fmt: skip
                commands = [
                    network.command(
                        node,
                        [
                            sys.executable,
                            "-m",
                            "torch.distributed.run",
                            "--nnodes",
                            str(nodes),
                            "--nproc-per-node",
                            str(local),
                            "--node-rank",
                            str(node),
                            "--master-addr",
                            network.addresses[0],
                            "--master-port",
                            str(port),
                            *worker,
                        ],
                    )  # fmt: skip
                    for node in range(nodes)
                ]
                for r in run_job(commands, env, args.timeout, out):
                    r["bandwidth_gbit"] = args.bandwidth
                    r["measured_gbit"] = measured
                    records.append(r)
            if args.json:  # after every layout, so an interrupted run keeps what it measured
                write_records(args.json, records)
    table = markdown(records)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
