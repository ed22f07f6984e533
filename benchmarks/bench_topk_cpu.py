"""CPU Top-K: gradcomp's radix select vs torch.topk, and the fused error-feedback path.

    python benchmarks/bench_topk_cpu.py --numel 1000000 25000000 --ratio 0.01 --json out.json

For each size, in one run (so ratios compare like with like): a memcpy of the buffer
(torch clone), torch.topk on |x| (what a plain-PyTorch Top-K compressor does), gradcomp's
topk_compress op, and gradcomp's fused compensate+select+residual (Compressor
.compress_with_feedback). Median of --repeat timed runs after one warm-up. JSON records:
compressor, device, numel, ratio, k, threads, *_ms medians, and ratios to copy and torch.topk.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

import gradcomp
from gradcomp import _C

from harness import median_ms, write_records


def bench(numel: int, ratio: float, repeat: int) -> dict:
    k = max(1, math.ceil(ratio * numel))
    x = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    grad = torch.randn(numel, generator=torch.Generator().manual_seed(1))
    residual = torch.zeros(numel)
    compressor = _C.make_compressor("topk", {"ratio": ratio})

    def torch_topk() -> None:
        idx = torch.topk(x.abs(), k, sorted=False).indices
        x[idx]  # the values travel too

    copy_ms = median_ms(lambda: x.clone(), repeat)
    torch_ms = median_ms(torch_topk, repeat)
    ours_ms = median_ms(lambda: gradcomp.ops.topk_compress(x, k), repeat)
    # The residual changes every call (as in training); that is what a step costs.
    fused_ms = median_ms(lambda: compressor.compress_with_feedback(grad, residual), repeat)
    return {
        "compressor": "topk",
        "device": "cpu",
        "numel": numel,
        "ratio": ratio,
        "k": k,
        "threads": torch.get_num_threads(),
        "copy_ms": copy_ms,
        "torch_topk_ms": torch_ms,
        "compress_ms": ours_ms,
        "compensate_compress_residual_ms": fused_ms,
        "compress_vs_copy": ours_ms / copy_ms,
        "fused_vs_copy": fused_ms / copy_ms,
        "speedup_vs_torch_topk": torch_ms / ours_ms,
        "wire_bytes": 8 * k,
        "dense_bytes": 4 * numel,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--numel", type=int, nargs="+", default=[1_000_000, 25_000_000])
    parser.add_argument("--ratio", type=float, nargs="+", default=[0.01])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    for numel in args.numel:
        for ratio in args.ratio:
            r = bench(numel, ratio, args.repeat)
            records.append(r)
            print(
                f"numel={numel:>11,} ratio={ratio:<6} copy {r['copy_ms']:8.2f} ms | "
                f"torch.topk {r['torch_topk_ms']:8.2f} ms | gradcomp {r['compress_ms']:8.2f} ms "
                f"({r['speedup_vs_torch_topk']:.1f}x faster, "
                f"{r['compress_vs_copy']:.2f}x copy) | "
                f"fused EF {r['compensate_compress_residual_ms']:8.2f} ms "
                f"({r['fused_vs_copy']:.2f}x copy)",
                flush=True,
            )
    if args.json:
        write_records(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
