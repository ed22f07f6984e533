"""End-to-end DDP steps over emulated networks: every method against plain allreduce and
PyTorch's own hooks.

    python benchmarks/bench_ddp_network.py --models resnet50 --world-sizes 4 \\
        --bandwidth 1 10 loopback --json docs/results/ddp_network.json \\
        --markdown docs/results/ddp_network.md --plot docs/results/ddp_network.png

For each bandwidth, model and world size, one torchrun job runs ddp_step_worker.py, which
measures every method in turn (median step time, the same step without DDP, bytes per step).
A bandwidth in Gbit/s puts each rank in its own network namespace on a bridge, with both
directions of its link shaped by tc tbf (shaped_network.py; needs root; the rate is checked
with a quick transfer first and recorded). The ranks are launched as the nodes of one
multi-node torchrun job (--nnodes W --node-rank i, one per namespace). "loopback" runs one
single-node torchrun on 127.0.0.1, unshaped. Exposed communication = step time minus the
same step without DDP; speedup = allreduce's step time / the method's, both from the same job.

--plot draws step time relative to allreduce's, per model, world size, method and link speed.
To redraw that figure from a saved --json without rerunning (no torch needed):

    python benchmarks/plot_ddp_network.py docs/results/ddp_network.json \\
        --out docs/results/ddp_network.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import write_records
from models import MODELS

HERE = Path(__file__).resolve().parent
WORKER = HERE / "ddp_step_worker.py"
DEFAULT_METHODS = [
    "allreduce",
    "torch_fp16",
    "torch_bf16",
    "torch_powersgd@1bucket",
    "torch_batched_powersgd@1bucket",
    "powersgd:rank=2@1bucket",
    "powersgd:rank=2",
    "topk:ratio=0.01",
    "topk_approx:ratio=0.01",
    "threshold:density=0.01",
    "qsgd:bits=4",
    "sign",
    "int8",
    "fp16",
    "none",
]


def torchrun(nodes: int, node_rank: int, master: str, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
            "--nproc-per-node", "1", "--node-rank", str(node_rank), "--master-addr", master,
            "--master-port", str(port)]  # fmt: skip


def run_job(
    commands: list[list[str]], env: dict[str, str], timeout: float, out: Path
) -> list[dict]:
    """Starts every command (one per node, or one for loopback), waits, returns rank 0's
    records. Kills them all on timeout or on the first failure."""
    processes = [subprocess.Popen(c, env=env, start_new_session=True) for c in commands]
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in processes):
            failed = [p for p in processes if p.poll() not in (None, 0)]
            if failed:
                raise RuntimeError(f"a rank exited with status {failed[0].returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the job ran past --timeout {timeout:.0f} s")
            time.sleep(0.5)
        codes = [p.returncode for p in processes]
        if any(codes):
            raise RuntimeError(f"ranks exited with status {codes}")
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    return json.loads(out.read_text())


def bandwidth_label(bandwidth: str) -> str:
    return "loopback (unshaped)" if bandwidth == "loopback" else f"{float(bandwidth):g} Gbit/s"


def add_ratios(records: list[dict]) -> None:
    """speedup and exposed-communication ratio vs allreduce in the same job."""
    baselines = {
        (r["bandwidth"], r["model"], r["world_size"]): r
        for r in records
        if r["method"] == "allreduce" and "step_ms" in r
    }
    for r in records:
        base = baselines.get((r["bandwidth"], r["model"], r["world_size"]))
        if base is None or "step_ms" not in r:
            continue
        r["speedup_vs_allreduce"] = base["step_ms"] / r["step_ms"]
        if base["exposed_comm_ms"] > 0:
            r["exposed_comm_vs_allreduce"] = r["exposed_comm_ms"] / base["exposed_comm_ms"]
        r["bytes_vs_dense"] = r["bytes_per_step"] / r["dense_bytes"]


def markdown(records: list[dict]) -> str:
    lines = []
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["world_size"], r["bandwidth"]), []).append(r)
    for (model, world, bandwidth), rows in groups.items():
        measured = rows[0].get("measured_gbit")
        rate = f", measured {measured:.2f} Gbit/s" if measured else ""
        params = next((r["parameters"] for r in rows if "parameters" in r), 0)
        lines += [
            f"#### {model} ({params / 1e6:.1f}M parameters), {world} ranks, "
            f"{bandwidth_label(bandwidth)}{rate}",
            "",
            "| method | step ms | compute ms | exposed comm ms | vs allreduce: comm | "
            "speedup | MB/step | bytes vs dense |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "step_ms" not in r:
                reason = r.get("skipped") or r.get("failed")
                lines.append(f"| {r['method']} | not measured: {reason} | | | | | | |")
                continue
            comm = r.get("exposed_comm_vs_allreduce")
            lines.append(
                f"| {r['method']} | {r['step_ms']:.0f} | {r['compute_ms']:.0f} | "
                f"{r['exposed_comm_ms']:.0f} | {'' if comm is None else f'{comm:.3f}x'} | "
                f"{r.get('speedup_vs_allreduce', float('nan')):.2f}x | "
                f"{r['bytes_per_step'] / 1e6:.2f} | {r['bytes_vs_dense']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    """Step time relative to allreduce: one row of panels per model, one column per world
    size, one bar per method and link speed (plot_ddp_network.py, which also redraws it from a
    saved --json)."""
    from plot_ddp_network import plot as draw

    draw(records, path)


def _bandwidth_order(bandwidth: str) -> float:
    return float("inf") if bandwidth == "loopback" else float(bandwidth)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50"], choices=sorted(MODELS))
    parser.add_argument("--world-sizes", nargs="+", type=int, default=[4])
    parser.add_argument(
        "--bandwidth", nargs="+", default=["1", "loopback"],
        help="Gbit/s per rank link (shaped; needs root), or 'loopback' (unshaped)",
    )  # fmt: skip
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay (sch_netem)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=0, help="per rank (0: the model's default)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per torchrun job")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    for b in args.bandwidth:
        if b != "loopback":
            try:
                if float(b) <= 0:
                    raise ValueError
            except ValueError:
                parser.error(f"--bandwidth {b!r}: valid: a rate in Gbit/s > 0, or 'loopback'")
    if any(w < 2 for w in args.world_sizes):
        parser.error(f"--world-sizes {args.world_sizes}: every world size must be >= 2")
    shaped = [b for b in args.bandwidth if b != "loopback"]
    if (shaped or args.delay_ms) and os.geteuid() != 0:
        print(
            f"bench_ddp_network: shaped links ({', '.join(shaped) or 'delay'}) need root for "
            "network namespaces and tc; run as root, or use --bandwidth loopback",
            file=sys.stderr,
        )
        return 2
    if args.delay_ms and not shaped:
        parser.error("--delay-ms needs a shaped --bandwidth (loopback is not delayed)")

    from shaped_network import ShapedNetwork

    records: list[dict] = []
    port = 29600 + os.getpid() % 300
    with tempfile.TemporaryDirectory() as tmp:
        for bandwidth in args.bandwidth:
            network = None
            measured = None
            if bandwidth != "loopback":
                network = ShapedNetwork(max(args.world_sizes), float(bandwidth) * 1000,
                                        args.delay_ms).__enter__()  # fmt: skip
            try:
                if network is not None:
                    measured = network.measure_rate_gbit()
                    print(
                        f"== {bandwidth_label(bandwidth)}: measured {measured:.3f} Gbit/s "
                        "(TCP payload, rank 0 -> rank 1)",
                        flush=True,
                    )
                for model in args.models:
                    for world in args.world_sizes:
                        port += 1
                        out = Path(tmp) / f"{bandwidth}-{model}-{world}.json"
                        worker = [str(WORKER), "--model", model, "--methods", *args.methods,
                                  "--steps", str(args.steps), "--warmup", str(args.warmup),
                                  "--batch", str(args.batch), "--out", str(out)]  # fmt: skip
                        # TORCH_CPP_LOG_LEVEL: c10d warns on every connection that it cannot resolve
                        # the namespaces' addresses to host names, which drowns the progress lines.
                        env = dict(os.environ, PYTHONPATH=str(HERE), OMP_NUM_THREADS="1",
                                   TORCH_CPP_LOG_LEVEL="ERROR")  # fmt: skip
                        if network is None:
                            commands = [
                                [
                                    sys.executable,
                                    "-m",
                                    "torch.distributed.run",
                                    "--nproc-per-node",
                                    str(world),
                                    "--master-port",
                                    str(port),
                                    *worker,
                                ]  # fmt: skip
                            ]
                        else:
                            env["GLOO_SOCKET_IFNAME"] = "eth0"
                            commands = [
                                network.command(
                                    i, torchrun(world, i, network.addresses[0], port) + worker
                                )
                                for i in range(world)
                            ]
                        print(f"-- {model}, {world} ranks, {bandwidth_label(bandwidth)}",
                              flush=True)  # fmt: skip
                        for r in run_job(commands, env, args.timeout, out):
                            r["bandwidth"] = bandwidth
                            r["bandwidth_gbit"] = None if network is None else float(bandwidth)
                            r["measured_gbit"] = measured
                            records.append(r)
            finally:
                if network is not None:
                    network.close()
    add_ratios(records)
    if args.json:
        write_records(args.json, records)
    table = markdown(records)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    print(table)
    if args.plot:
        plot(records, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
