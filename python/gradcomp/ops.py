"""torch.ops.gradcomp.*: stateless kernels usable without DDP, with fake kernels for tracing."""

from __future__ import annotations

import functools

import torch

from gradcomp import _C  # loading the extension registers the ops

__all__ = [
    "compress",
    "decompress",
    "orthonormalize",
    "parameter_key",
    "topk_compress",
    "topk_decompress",
]


@functools.lru_cache(maxsize=64)
def _method(spec: str) -> _C.CompressionMethod:
    from gradcomp.config import resolve_config  # config imports _C only; no cycle at load

    return resolve_config(spec, {}).build()


def _signed(key: int) -> int:
    """A uint64 key as the int64 the op schemas carry (same bits)."""
    return key - 2**64 if key >= 2**63 else key


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


@torch.library.register_fake("gradcomp::compress")
def _compress_fake(
    input: torch.Tensor, spec: str, step: int = 0, seed: int = 0, tensor_key: int = 0, rank: int = 0
) -> torch.Tensor:
    method = _method(spec)
    torch._check(input.dtype == torch.float32, lambda: f"input must be float32, got {input.dtype}")
    torch._check(isinstance(method, _C.Compressor), lambda: f"{spec!r} is not per-tensor")
    assert isinstance(method, _C.Compressor)
    if method.variable_size:  # threshold: the size depends on the data
        size = torch.library.get_ctx().new_dynamic_size()
    else:
        size = method.payload_numel(input.numel())
    return input.new_empty(size, dtype=method.payload_dtype)


@torch.library.register_fake("gradcomp::decompress")
def _decompress_fake(
    payload: torch.Tensor,
    spec: str,
    numel: int,
    step: int = 0,
    seed: int = 0,
    tensor_key: int = 0,
) -> torch.Tensor:
    return payload.new_empty(numel, dtype=torch.float32)


@torch.library.register_fake("gradcomp::orthonormalize")
def _orthonormalize_fake(matrices: torch.Tensor) -> torch.Tensor:
    torch._check(matrices.dim() >= 2, lambda: "matrices must be [..., n, r]")
    return torch.empty_like(matrices)


def parameter_key(name: str) -> int:
    """The RNG key gradcomp's hook derives from a parameter name (pass it as ``tensor_key`` to
    reproduce the hook's Random-K or QSGD draws)."""
    return int(_C.parameter_key(name))


def compress(
    input: torch.Tensor,
    spec: str,
    *,
    step: int = 0,
    seed: int = 0,
    tensor_key: int = 0,
    rank: int = 0,
) -> torch.Tensor:
    """The payload of ``input`` (read flat, float32) under any per-tensor method, e.g.
    ``compress(g, "qsgd:bits=4")``: exactly what the DDP hook sends for it. ``step``, ``seed``,
    ``tensor_key`` and ``rank`` drive the stochastic methods (randomk, qsgd, topk_approx)."""
    return torch.ops.gradcomp.compress.default(input, spec, step, seed, _signed(tensor_key), rank)


def decompress(
    payload: torch.Tensor,
    spec: str,
    numel: int,
    *,
    step: int = 0,
    seed: int = 0,
    tensor_key: int = 0,
) -> torch.Tensor:
    """The flat float32 tensor of ``numel`` elements that ``payload`` decodes to; pass the same
    spec and (step, seed, tensor_key) that compressed it."""
    return torch.ops.gradcomp.decompress.default(
        payload, spec, numel, step, seed, _signed(tensor_key)
    )


def orthonormalize(matrices: torch.Tensor) -> torch.Tensor:
    """PowerSGD's orthonormalization: each [..., n, r] matrix with orthonormal columns (modified
    Gram-Schmidt in column order; a column dependent on earlier ones becomes zero)."""
    return torch.ops.gradcomp.orthonormalize.default(matrices)
