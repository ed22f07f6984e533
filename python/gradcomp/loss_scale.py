"""The loss scale the error-feedback residuals are in, kept in step with AMP's GradScaler.

Gradients arrive multiplied by the GradScaler's current scale; residuals carry gradient left
over from earlier steps, so when the scale changes they must change with it (new / old) before
this step's gradient is added to them.

- On the CPU, and for PowerSGD, the scale is read on the host at each step's first bucket and a
  change rescales every residual there.
- On CUDA the host never reads it (``get_scale()`` waits for the device): the step's first
  bucket computes new / old on the device, and every bucket codec multiplies its residuals by
  that ratio in the same pass that adds the gradient.
"""

from __future__ import annotations

from typing import Any

import torch

from gradcomp import _C

__all__ = ["ResidualScale"]


class ResidualScale:
    def __init__(self, grad_scaler: Any, residuals: _C.ErrorFeedback, device_ratio: bool) -> None:
        """``device_ratio``: whether CUDA buckets take the ratio as a tensor (BucketCodec) rather
        than having every residual rescaled on the host (PowerSGD's codec)."""
        self._scaler = grad_scaler
        self._residuals = residuals
        self._device_ratio = device_ratio
        self._host: float | None = None  # the scale the residuals are in, when known on the host
        self._device: torch.Tensor | None = None  # ... or on the device (CUDA)

    def begin_step(
        self, device: torch.device, compressing: bool = True
    ) -> tuple[float | torch.Tensor, torch.Tensor | None]:
        """At a step's first bucket: the step's loss scale (a float, or a one-element tensor
        on the device) and the ratio every bucket codec must apply to its residuals (None when
        the residuals were already brought to the step's scale here). On a step that compresses
        nothing (start_iter's dense warm-up) no codec applies a ratio, so the residuals stay in
        the scale they were in and the next ratio is taken from it."""
        scaler = self._scaler
        enabled = scaler is not None and scaler.is_enabled()
        current = getattr(scaler, "_get_scale_async", lambda: None)() if enabled else None
        if not (device.type == "cuda" and self._device_ratio and isinstance(current, torch.Tensor)):
            return self._begin_on_host(float(scaler.get_scale()) if enabled else 1.0), None
        current = current.reshape(1).to(torch.float32)
        if not compressing:
            return current, None
        previous = self._device
        if previous is None:
            if self._host is None:  # the first step: nothing to rescale
                self._device = current.clone()
                return self._device, None
            previous = torch.full_like(current, self._host)  # residuals loaded at a known scale
        ratio = current / previous
        # A new tensor per step, so that each step's record keeps its own scale.
        self._device = current.clone()
        self._host = None
        return self._device, ratio

    def _begin_on_host(self, scale: float) -> float:
        if self._device is not None:  # switching from the device: one read, outside the hot path
            self._host = float(self._device.item())
            self._device = None
        if self._host is not None and scale != self._host:
            self._residuals.scale(scale / self._host)
        self._host = scale
        return scale

    def value(self) -> float | None:
        """The scale the residuals are in (None before the first step); reads the device."""
        if self._device is not None:
            return float(self._device.item())
        return self._host

    def load(self, value: float | None) -> None:
        """Residuals loaded from a checkpoint are in ``value``'s scale."""
        self._host = value
        self._device = None
