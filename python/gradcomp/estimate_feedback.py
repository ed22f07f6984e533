"""EF21 error feedback (Richtarik et al., 2021; with momentum, EF21-SGDM: Fatkhullin et al.,
2023): ranks compress the change of a gradient estimate instead of the gradient plus a residual.

Each rank keeps its estimate ``g_i`` of its own (momentum) gradient ``u_i``, and every rank
keeps the same estimate ``G`` of their average. Per step a rank compresses ``u_i - g_i``, adds
what it sent, ``c_i``, to ``g_i``, and every rank adds the average of the ``c_i`` to ``G``,
which is what the optimizer receives. The optimizer so always sees a dense estimate that
tracks the averaged gradient; compression only slows how fast it follows. With classic error
feedback the optimizer sees the sparse update itself, and an element that waits many steps
arrives as one burst.

Only compressed entries take part; what travels dense is averaged as it is. The codec's error
feedback serves as scratch: its residual is zeroed before each encode, so afterwards it holds
``(u_i - g_i) - c_i``, from which ``g_i`` is updated without decoding this rank's own payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gradcomp import _C
from gradcomp.local_update import Entry

__all__ = ["EstimateFeedback"]

# (the entry's view of the bucket, this rank's estimate g_i, the codec's residual)
Pending = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class EstimateFeedback:
    def __init__(self) -> None:
        self.local = _C.ErrorFeedback()  # g_i: this rank's estimate, by parameter name
        self.shared = _C.ErrorFeedback()  # G: the average's estimate, the same on every rank

    def before_encode(
        self, buffer: torch.Tensor, entries: Sequence[Entry], residuals: Any
    ) -> Pending:
        """Turns each compressed entry of ``buffer`` into ``u_i - g_i`` and zeroes its
        residual; returns what :meth:`after_encode` needs."""
        pending: Pending = []
        device = buffer.device
        for name, offset, numel, compress, _rows, _method in entries:
            if not compress:
                continue
            view = buffer.narrow(0, offset, numel)
            estimate = self.local.residual(name, numel, device)
            residual = residuals.residual(name, numel, device)
            view.sub_(estimate)
            residual.zero_()
            pending.append((view, estimate, residual))
        return pending

    @staticmethod
    def after_encode(pending: Pending) -> None:
        """g_i += c_i, where c_i = (u_i - g_i) - residual is what this rank sent."""
        for view, estimate, residual in pending:
            estimate.add_(view).sub_(residual)

    def after_decode(self, buffer: torch.Tensor, entries: Sequence[Entry]) -> None:
        """G += the decoded average of the c_i; the bucket then holds G."""
        device = buffer.device
        for name, offset, numel, compress, _rows, _method in entries:
            if not compress:
                continue
            view = buffer.narrow(0, offset, numel)
            estimate = self.shared.residual(name, numel, device)
            estimate.add_(view)
            view.copy_(estimate)

    def reset(self) -> None:
        self.local.reset()
        self.shared.reset()
