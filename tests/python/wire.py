"""Analytic wire sizes per method, written independently of the native code, so tests can
check what the hook reports against what each payload format should cost."""

from __future__ import annotations

import math

from reference import topk_k


def align8(n: int) -> int:
    return (n + 7) // 8 * 8


def payload_bytes(name: str, numel: int, **opt: float) -> int:
    """Bytes of one tensor's payload (before channel alignment)."""
    ratio = opt.get("ratio", 0.01)
    if name == "topk" or name == "topk_approx":
        return 8 * topk_k(ratio, numel)
    if name == "topk_int8":
        return 4 + 5 * topk_k(ratio, numel)
    if name == "topk_bitmap":  # scale, one bit per element, k int8 codes; default ratio 0.1
        return 4 + math.ceil(numel / 8) + topk_k(opt.get("ratio", 0.1), numel)
    if name == "randomk":
        return 4 * topk_k(ratio, numel)
    if name == "qsgd":
        bits, chunk = int(opt.get("bits", 4)), int(opt.get("chunk", 128))
        return 4 * math.ceil(numel / chunk) + math.ceil(numel * bits / 8)
    if name == "sign":
        chunk = int(opt.get("chunk", 1024))
        return 4 * math.ceil(numel / chunk) + math.ceil(numel / 8)
    if name == "int8":
        chunk = int(opt.get("chunk", 512))
        return 8 * math.ceil(numel / chunk) + numel
    if name in ("fp16", "bf16"):
        return 2 * numel
    if name == "none":
        return 4 * numel
    raise ValueError(name)


def byte_channel(name: str) -> bool:
    """Methods whose payloads are bytes packed 8-byte aligned in a channel of their own."""
    return name in (
        "topk", "topk_approx", "topk_int8", "topk_bitmap", "qsgd", "sign", "int8", "threshold"
    )  # fmt: skip


def flag_bytes(name: str) -> int:
    """The non-finite flag at the start of a bucket's first channel: one element of it."""
    if byte_channel(name):
        return 8
    return 2 if name in ("fp16", "bf16") else 4


def bucket_bytes(name: str, numels: list[int], **opt: float) -> int:
    """What the codec sends for one bucket whose tensors are all compressed."""
    if not byte_channel(name):
        return flag_bytes(name) + sum(payload_bytes(name, n, **opt) for n in numels)
    total = flag_bytes(name)
    for n in numels:
        total = align8(total) + payload_bytes(name, n, **opt)
    return align8(total)


def powersgd_bytes(
    shapes: list[tuple[int, ...]], rank: int = 2, min_compression: float = 2.0
) -> int:
    total = 4  # the non-finite flag
    for shape in shapes:
        numel = math.prod(shape)
        if len(shape) >= 2 and shape[0] >= 2 and numel // shape[0] >= 2:
            n, m = shape[0], numel // shape[0]
            r = min(rank, n, m)
            if (n + m) * r * min_compression <= n * m:
                total += 4 * (n + m) * r
                continue
        total += 4 * numel
    return total
