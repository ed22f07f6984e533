"""torch.ops.gradcomp.*: stateless kernels usable without DDP, with fake kernels for tracing."""

from __future__ import annotations

import torch

from gradcomp import _C  # noqa: F401  (loading the extension registers the ops)

__all__ = ["topk_compress", "topk_decompress"]


@torch.library.register_fake("gradcomp::topk_compress")
def _topk_compress_fake(input: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch._check(input.dtype == torch.float32, lambda: f"input must be float32, got {input.dtype}")
    torch._check(1 <= k <= input.numel(), lambda: f"k={k} must be in [1, {input.numel()}]")
    return input.new_empty(k), input.new_empty(k, dtype=torch.int32)


@torch.library.register_fake("gradcomp::topk_decompress")
def _topk_decompress_fake(values: torch.Tensor, indices: torch.Tensor, numel: int) -> torch.Tensor:
    torch._check(values.dtype == torch.float32, lambda: "values must be float32")
    torch._check(indices.dtype == torch.int32, lambda: "indices must be int32")
    return values.new_empty(numel)


def topk_compress(input: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest-magnitude elements of ``input`` (read flat) as float32 values and int32
    indices in ascending index order. Ties go to the lower index; NaN ranks above inf."""
    return torch.ops.gradcomp.topk_compress.default(input, k)


def topk_decompress(values: torch.Tensor, indices: torch.Tensor, numel: int) -> torch.Tensor:
    """A flat float32 tensor of ``numel`` elements with ``values`` at ``indices`` (repeats add).
    Raises IndexError when an index is outside [0, numel)."""
    return torch.ops.gradcomp.topk_decompress.default(values, indices, numel)
