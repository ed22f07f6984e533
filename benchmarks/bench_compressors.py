"""Every compressor on CPU or CUDA: compress, decompress and error-feedback time vs a copy.

    python benchmarks/bench_compressors.py --numel 25000000 --json out.json
    python benchmarks/bench_compressors.py --device cuda --numel 25000000 --json out.json

For each method and size, in one run (so ratios compare like with like): a copy of the float32
buffer on the device (torch clone: a memcpy, or a device-to-device copy); compress (payload of
the gradient); decompress (one payload decoded into a zeroed buffer, as the hook does per
rank); and compensate+compress+residual (Compressor.compress_with_feedback, what a training
step with error feedback costs). The Top-K family also times torch.topk on |x| with the same
k, what a plain-PyTorch Top-K compressor does. PowerSGD runs on the buffer viewed as a
near-square matrix through its bucket codec with one rank: compress = P = MQ, orthonormalize,
Q = M^T P and the residual; decompress = P Q^T. Median of --repeat timed runs after one
warm-up; on CUDA every run ends with a device synchronize. JSON records: compressor, device,
numel, ratio, threads, *_ms medians, *_vs_copy ratios, torch_topk_ms and
speedup_vs_torch_topk (Top-K family), wire_bytes and dense_bytes; codec_encode_ms (the hook's
whole per-bucket encode: non-finite check, message, compensate+compress+residual; on CUDA the
bucket-level device path), codec_encode_50_entries_ms (the same elements as 50 parameters of
one bucket: what the per-parameter cost is) and finite_check_ms (that check alone), per-tensor
methods only. On CUDA also cuda_graph_encode_ms: the codec's encode captured once in a CUDA
graph and replayed (or cuda_graph_error), to measure what graphs would save; the hook does not
use them.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

import gradcomp
from gradcomp import _C

from harness import cuda_unavailable, median_ms, write_records

DEFAULT_COMPRESSORS = [
    "topk",
    "topk_approx",
    "topk_int8",
    "randomk",
    "threshold",
    "qsgd:bits=4",
    "qsgd:bits=8",
    "sign",
    "int8",
    "fp16",
    "bf16",
    "powersgd:rank=2",
]
# Methods whose size is set by a ratio (or, for threshold, a density).
RATIO_OPTION = {"topk": "ratio", "topk_approx": "ratio", "topk_int8": "ratio"}
RATIO_OPTION |= {"randomk": "ratio", "threshold": "density"}


def with_ratio(spec: str, ratio: float) -> str | None:
    """spec with its ratio option set, or None for methods without one."""
    name, options = gradcomp.parse_spec(spec)
    option = RATIO_OPTION.get(name)
    if option is None:
        return None
    options[option] = ratio
    return name + ":" + ",".join(f"{k}={v:g}" for k, v in options.items())


TOPK_FAMILY = ("topk", "topk_approx", "topk_int8")
# Timed quantities that get a *_vs_copy ratio; the table shows all but the CUDA-graph replay.
TIMED = (
    "compress",
    "decompress",
    "compensate_compress_residual",
    "codec_encode",
    "codec_encode_50_entries",
    "cuda_graph_encode",
)


def bench_powersgd(
    spec: str, x: torch.Tensor, grad: torch.Tensor, repeat: int, device: str
) -> dict:
    name, options = gradcomp.parse_spec(spec)
    method = _C.make_compressor(name, options)
    numel = x.numel()
    rows = math.isqrt(numel)
    while numel % rows:
        rows -= 1
    entries = [("w", 0, numel, True, rows)]
    residuals, warm = _C.ErrorFeedback(), _C.ErrorFeedback()
    codec = _C.PowerSgdCodec(method, entries, residuals, warm, 0, 1)
    out = torch.empty_like(grad)

    def compress() -> tuple[torch.Tensor, torch.Tensor]:
        first = codec.encode_first(grad)
        return first, codec.encode_second(first)

    def full_step() -> None:
        # decode needs the same step's encode state, so it is timed as the difference.
        first, second = compress()
        codec.decode(out, first, second)

    compress_ms = median_ms(compress, repeat, device)
    full_ms = median_ms(full_step, repeat, device)
    return {
        "compress_ms": compress_ms,
        "decompress_ms": max(full_ms - compress_ms, 0.0),
        "compensate_compress_residual_ms": compress_ms,
        "wire_bytes": codec.bytes_sent,
        "matrix": [rows, numel // rows],
    }


def bench_cuda_graph(codec: _C.BucketCodec, grad: torch.Tensor, repeat: int) -> dict:
    """The codec's encode captured in a CUDA graph, replayed."""
    try:
        codec.encode(grad, 1)  # tables and workspaces are built outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="relaxed"):
            codec.encode(grad, 1)
        return {"cuda_graph_encode_ms": median_ms(graph.replay, repeat, "cuda")}
    except Exception as error:  # a measurement, not a feature: say why it could not run
        return {"cuda_graph_error": f"{type(error).__name__}: {error}"}


def split_entries(numel: int, parts: int) -> list[tuple[str, int, int, bool, int]]:
    """numel elements as `parts` parameters of one bucket (sizes differing by at most one)."""
    bounds = [numel * i // parts for i in range(parts + 1)]
    return [(f"p{i}", bounds[i], bounds[i + 1] - bounds[i], True, 0) for i in range(parts)]


def bench(spec: str, numel: int, repeat: int, device: str = "cpu") -> dict:
    x = torch.randn(numel, generator=torch.Generator().manual_seed(0)).to(device)
    grad = torch.randn(numel, generator=torch.Generator().manual_seed(1)).to(device)
    copy_ms = median_ms(lambda: x.clone(), repeat, device)
    name, options = gradcomp.parse_spec(spec)
    if name == "powersgd":
        timed = bench_powersgd(spec, x, grad, repeat, device)
    else:
        method = _C.make_compressor(name, options)
        residual = torch.zeros(numel, device=device)
        payload = method.compress(x, step=1)
        out = torch.zeros(numel, device=device)
        timed = {
            "compress_ms": median_ms(lambda: method.compress(x, step=1), repeat, device),
            "decompress_ms": median_ms(
                lambda: (out.zero_(), method.decompress_add(payload, out, step=1)), repeat, device
            ),
            # The residual changes every call (as in training); that is what a step costs.
            "compensate_compress_residual_ms": median_ms(
                lambda: method.compress_with_feedback(grad, residual, step=1), repeat, device
            ),
            "wire_bytes": payload.numel() * payload.element_size(),
        }
        # What the hook runs per bucket: the non-finite check, the message allocation, then
        # the same compensate+compress+residual.
        codec = _C.BucketCodec(method, [("x", 0, numel, True, 0)], _C.ErrorFeedback(), 0)
        timed["codec_encode_ms"] = median_ms(lambda: codec.encode(grad, 1), repeat, device)
        if numel >= 50:
            split = _C.BucketCodec(method, split_entries(numel, 50), _C.ErrorFeedback(), 0)
            timed["codec_encode_50_entries_ms"] = median_ms(
                lambda: split.encode(grad, 1), repeat, device
            )
        timed["finite_check_ms"] = median_ms(lambda: _C.all_finite(grad), repeat, device)
        if device == "cuda" and not method.variable_size:
            timed.update(bench_cuda_graph(codec, grad, repeat))
        if name in TOPK_FAMILY:
            k = max(1, min(numel, math.ceil(options.get("ratio", 0.01) * numel)))

            def torch_topk() -> None:
                indices = torch.topk(x.abs(), k, sorted=False).indices
                x.index_select(0, indices)

            timed["torch_topk_ms"] = median_ms(torch_topk, repeat, device)
            timed["speedup_vs_torch_topk"] = timed["torch_topk_ms"] / timed["compress_ms"]
    record = {
        "compressor": spec,
        "device": device,
        "numel": numel,
        "ratio": options.get(RATIO_OPTION.get(name, ""), None),
        "threads": torch.get_num_threads(),
        "copy_ms": copy_ms,
        **timed,
        "dense_bytes": 4 * numel,
    }
    for key in TIMED:
        if f"{key}_ms" in record:
            record[f"{key}_vs_copy"] = record[f"{key}_ms"] / copy_ms
    record["wire_vs_dense"] = record["wire_bytes"] / record["dense_bytes"]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compressors", nargs="+", default=DEFAULT_COMPRESSORS)
    parser.add_argument("--numel", type=int, nargs="+", default=[25_000_000])
    parser.add_argument(
        "--ratio", type=float, nargs="+", default=[0.01], help="for topk*, randomk, threshold"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--markdown", type=Path, help="write a table of the records here")
    args = parser.parse_args()
    problem = cuda_unavailable("bench_compressors") if args.device == "cuda" else None
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    for numel in args.numel:
        for spec in args.compressors:
            variants = [with_ratio(spec, r) for r in args.ratio]
            specs = [v for v in variants if v is not None] or [spec]
            for variant in specs:
                r = bench(variant, numel, args.repeat, args.device)
                records.append(r)
                print(
                    f"{variant:<28} numel={numel:>11,} copy {r['copy_ms']:7.2f} ms | "
                    f"compress {r['compress_ms']:8.2f} ms ({r['compress_vs_copy']:5.2f}x) | "
                    f"decompress {r['decompress_ms']:8.2f} ms ({r['decompress_vs_copy']:5.2f}x) | "
                    f"EF {r['compensate_compress_residual_ms']:8.2f} ms "
                    f"({r['compensate_compress_residual_vs_copy']:5.2f}x) | "
                    f"wire {r['wire_vs_dense']:.4f} of dense"
                    + (
                        f" | {r['speedup_vs_torch_topk']:.1f}x faster than torch.topk"
                        if "torch_topk_ms" in r
                        else ""
                    ),
                    flush=True,
                )
    if args.json:
        write_records(args.json, records)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(records) + "\n")
    return 0


def markdown(records: list[dict]) -> str:
    """One table per size: times in ms with their multiple of the copy, wire bytes vs dense."""
    lines: list[str] = []
    for numel in dict.fromkeys(r["numel"] for r in records):
        rows = [r for r in records if r["numel"] == numel]
        copy = statistics.median(r["copy_ms"] for r in rows)
        lines += [
            f"#### {numel:,} float32 on {rows[0]['device']} (copy: median {copy:.2f} ms)",
            "",
            "| method | compress ms (x copy) | decompress ms (x copy) | "
            "compensate+compress+residual ms (x copy) | bucket encode ms (x copy) | "
            "as 50 entries ms (x copy) | torch.topk ms (gradcomp faster by) | wire / dense |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            cells = [f"`{r['compressor']}`"]
            for key in TIMED[:-1]:
                ms = r.get(key + "_ms")
                cells.append("" if ms is None else f"{ms:.2f} ({r[key + '_vs_copy']:.2f}x)")
            topk = r.get("torch_topk_ms")
            cells.append("" if topk is None else f"{topk:.2f} ({r['speedup_vs_torch_topk']:.1f}x)")
            cells.append(f"{r['wire_vs_dense']:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
        graphs = [r for r in rows if "cuda_graph_encode_ms" in r or "cuda_graph_error" in r]
        if graphs:
            lines += ["", "Bucket encode replayed from a CUDA graph (vs launched directly):", ""]
            for r in graphs:
                if "cuda_graph_encode_ms" in r:
                    shown = f"{r['cuda_graph_encode_ms']:.3f} ms vs {r['codec_encode_ms']:.3f} ms"
                else:
                    shown = f"not capturable: {r['cuda_graph_error']}"
                lines.append(f"- `{r['compressor']}`: {shown}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
