"""What each rank does to its own gradient before error feedback, after Deep Gradient
Compression (Lin et al., ICLR 2018): local clipping, then momentum correction with momentum
factor masking.

- Local clipping scales a bucket's gradient so that its L2 norm is at most
  ``clip * sqrt(bucket numel / model numel)``: the bucket's share of a norm of ``clip`` for the
  whole local gradient. Clipping happens per bucket because DDP hands the hook one bucket at a
  time; the shares' squares sum to ``clip**2``, so the whole local gradient's norm stays within
  ``clip``. It runs on the device without a host wait.
- Momentum correction keeps a velocity ``u = momentum * u + g`` per parameter (fp32, keyed by
  name, like the residuals) and hands ``u`` to the compressor in place of ``g``: error feedback
  then accumulates velocities, so an element that waits many steps is sent with the momentum it
  would have had. The optimizer must then run without momentum of its own (see
  :func:`check_optimizer`). Averaging the ranks' velocities is exactly momentum SGD for what
  travels dense, since the velocity update is linear.
- Momentum factor masking clears the velocity where a sparsifier sent values, so that a sent
  element does not keep pushing in the direction it was already moved (stale momentum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from gradcomp import _C
from gradcomp.config import (
    CompressorConfig,
    RandomK,
    Threshold,
    TopK,
    TopKApprox,
    TopKBitmap,
    TopKInt8,
)

__all__ = ["LocalUpdate", "check_optimizer", "is_sparsifier"]

# Entries as plans.py builds them: (name, offset, numel, compress, rows, method index).
Entry = tuple[str, int, int, bool, int, int]

_SPARSIFIERS = (TopK, TopKApprox, TopKInt8, TopKBitmap, RandomK, Threshold)


def is_sparsifier(config: CompressorConfig | None) -> bool:
    """True for the methods that send some elements and keep the rest (masking applies)."""
    return isinstance(config, _SPARSIFIERS)


class LocalUpdate:
    """Clipping and momentum correction of one rank's buckets; the velocities live here."""

    def __init__(
        self, *, momentum: float, clip: float | None, total_numel: int, masking: bool = True
    ) -> None:
        if not isinstance(masking, bool):
            raise TypeError(f"mask_momentum must be a bool, got {type(masking).__name__}")
        self.momentum = momentum
        self.masking = masking and momentum > 0
        self.clip = clip
        self.total_numel = max(1, total_numel)
        self.velocity = _C.ErrorFeedback()  # name -> fp32 velocity, with state_dict()/reset()

    @property
    def active(self) -> bool:
        return self.momentum > 0 or self.clip is not None

    def apply(self, buffer: torch.Tensor, entries: Sequence[Entry]) -> list[torch.Tensor]:
        """Clips and applies momentum to ``buffer`` in place; returns the velocities of
        ``entries`` in order (empty without momentum)."""
        if self.clip is not None:
            numel = sum(e[2] for e in entries)
            bound = self.clip * math.sqrt(numel / self.total_numel)
            # Per-parameter norms combined in name order: the same bits whatever the bucket
            # layout (DDP's rebuilt buckets, the simulator's), where one norm of the buffer
            # would sum in layout order.
            views = [buffer.narrow(0, e[1], e[2]).float() for e in sorted(entries)]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(views)))
            # min(1, bound / norm) without a host wait; a zero norm leaves the buffer as it is.
            factor = (bound / norm.clamp(min=1e-30)).clamp(max=1.0)
            buffer.mul_(factor.to(buffer.dtype))
        if self.momentum <= 0 or not entries:
            return []
        device = buffer.device
        velocities = [self.velocity.residual(e[0], e[2], device) for e in entries]
        grads = [buffer.narrow(0, e[1], e[2]) for e in entries]
        torch._foreach_mul_(velocities, self.momentum)
        torch._foreach_add_(velocities, grads)
        torch._foreach_copy_(grads, velocities)
        return velocities

    def compensated(
        self,
        residuals: Any,
        entries: Sequence[Entry],
        velocities: Sequence[torch.Tensor],
        masked: Sequence[bool],
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Before encoding: (velocity, residual, residual + velocity) of each masked entry; the
        codec adds the same two, so the sum is what it selects from."""
        out = []
        for entry, velocity, mask in zip(entries, velocities, masked, strict=True):
            if mask:
                residual = residuals.residual(entry[0], entry[2], velocity.device)
                out.append((velocity, residual, residual + velocity))
        return out

    @staticmethod
    def mask(pending: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """After encoding: clears the velocity where values were sent. Error feedback keeps an
        unsent element's residual equal to the compensated value, and leaves a sent one at
        zero (or at its quantization error, for topk_int8), so "residual under half the
        compensated value" marks what was sent."""
        for velocity, residual, compensated in pending:
            velocity.masked_fill_(residual.abs() < 0.5 * compensated.abs(), 0.0)


def check_optimizer(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    """Raises when the hook's momentum correction would stack on the optimizer's own momentum
    (SGD's ``momentum``, Adam's ``betas[0]``): the step would apply momentum twice."""
    if momentum <= 0:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    for index, group in enumerate(optimizer.param_groups):
        own = group.get("momentum", 0.0)
        betas = group.get("betas")
        if betas is not None:
            own = betas[0]
        if own:
            key = "betas[0]" if betas is not None else "momentum"
            raise ValueError(
                f"the hook applies momentum={momentum} (momentum correction), but "
                f"{type(optimizer).__name__} param group {index} has its own {key}={own}: "
                "the step would apply momentum twice. Build the optimizer with "
                + ("betas=(0.0, ...)" if betas is not None else "momentum=0")
                + ", or register the hook with momentum=0"
            )
