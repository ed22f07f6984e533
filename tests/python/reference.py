"""Plain-PyTorch reference implementations the native code is tested against."""

from __future__ import annotations

import math

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
