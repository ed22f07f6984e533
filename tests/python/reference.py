"""Plain-PyTorch reference implementations the native code is tested against."""

from __future__ import annotations

import math

import numpy as np
import torch


def magnitude_key(x: torch.Tensor) -> torch.Tensor:
    """|x| as the IEEE-754 bits with the sign cleared: orders like |x|, NaN above inf."""
    return x.contiguous().view(torch.int32) & 0x7FFFFFFF


def topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(-1)
    order = torch.sort(magnitude_key(flat), descending=True, stable=True).indices[:k]
    indices = order.sort().values
    return flat[indices], indices.to(torch.int32)


def topk_k(ratio: float, numel: int) -> int:
    return min(max(math.ceil(ratio * numel), 1), numel)


# -- counter-based randomness (Philox-4x32-10), as documented in csrc/kernels/common/philox.h --

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF


def philox_key(seed: int, tensor_key: int) -> int:
    """splitmix64's finalizer over seed * golden + tensor_key."""
    z = (seed * 0x9E3779B97F4A7C15 + tensor_key) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def philox_words(key: int, step: int, count: int) -> np.ndarray:
    """Words [0, count) of the stream of (key, step): word i is lane i % 4 of the block i // 4."""
    blocks = (count + 3) // 4
    b = np.arange(blocks, dtype=np.uint64)
    x = [b & _MASK32, b >> np.uint64(32)]
    x += [np.full(blocks, step & _MASK32, np.uint64), np.full(blocks, step >> 32, np.uint64)]
    k0, k1 = key & _MASK32, key >> 32
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * x[0]
        p1 = np.uint64(0xCD9E8D57) * x[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & np.uint64(_MASK32)
        hi1, lo1 = p1 >> np.uint64(32), p1 & np.uint64(_MASK32)
        x = [hi1 ^ x[1] ^ np.uint64(k0), lo1, hi0 ^ x[3] ^ np.uint64(k1), lo0]
        k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
    return np.stack(x, axis=1).reshape(-1)[:count]


def randomk_indices(n: int, k: int, key: int, step: int) -> torch.Tensor:
    """One index per stratum [i*n//k, (i+1)*n//k), uniform inside it."""
    i = np.arange(k, dtype=np.int64)
    begin, end = i * n // k, (i + 1) * n // k
    words = philox_words(key, step, k)
    offset = (words * (end - begin).astype(np.uint64)) >> np.uint64(32)
    return torch.from_numpy(begin + offset.astype(np.int64))


def qsgd(x: torch.Tensor, bits: int, chunk: int, key: int, step: int) -> torch.Tensor:
    """QSGD's decoded values: per chunk L2 norm, s = 2^(bits-1)-1 levels, stochastic rounding
    with u from the Philox stream at the element's index."""
    s = 2 ** (bits - 1) - 1
    u = torch.from_numpy((philox_words(key, step, x.numel()) >> np.uint64(8)).astype(np.float64))
    u = u / 2**24
    out = torch.empty(x.numel(), dtype=torch.float64)
    for begin in range(0, x.numel(), chunk):
        part = x[begin : begin + chunk].double()
        norm = part.norm()
        if norm == 0:
            out[begin : begin + chunk] = 0
            continue
        r = part.abs() / norm * s
        low = r.floor()
        level = low + (u[begin : begin + chunk] < r - low).double()
        sign = torch.where(torch.signbit(part), -1.0, 1.0)
        out[begin : begin + chunk] = sign * norm * level.clamp(max=s) / s
    return out.float()


def sign(x: torch.Tensor, chunk: int) -> torch.Tensor:
    out = torch.empty_like(x)
    for begin in range(0, x.numel(), chunk):
        part = x[begin : begin + chunk]
        scale = part.double().abs().mean().float()
        out[begin : begin + chunk] = torch.where(torch.signbit(part), -scale, scale)
    return out


def int8(x: torch.Tensor, chunk: int) -> torch.Tensor:
    out = torch.empty_like(x)
    for begin in range(0, x.numel(), chunk):
        part = x[begin : begin + chunk]
        low, high = part.min(), part.max()
        step = (high - low) / 255
        q = torch.zeros_like(part) if step == 0 else torch.round((part - low) / step).clamp(0, 255)
        out[begin : begin + chunk] = low + q * step
    return out
