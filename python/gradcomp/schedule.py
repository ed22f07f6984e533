"""Density warm-up (Deep Gradient Compression's "sparsity warm-up"): the sparsifiers start
dense-ish and their density falls exponentially to the configured one.

Over ``warmup_steps`` steps (counted from ``start_iter``, where compression begins) the
density runs through ``STAGES`` equal stages, ``start * (target / start) ** (i / STAGES)`` for
stage i, then stays at the target. The density changes in stages rather than every step
because each density is its own set of bucket codecs (buffers sized for it, and on CUDA device
tables); four stages are what DGC uses (one per epoch).
"""

from __future__ import annotations

import dataclasses

from gradcomp.config import CompressorConfig, Threshold

__all__ = ["STAGES", "DensityWarmup", "density_of", "with_density"]

STAGES = 4


def density_of(config: CompressorConfig) -> float | None:
    """The fraction of elements a sparsifier sends (None for the other methods)."""
    if isinstance(config, Threshold):
        return None if config.tau > 0 else config.density
    ratio = getattr(config, "ratio", None)
    return float(ratio) if ratio is not None else None


def with_density(config: CompressorConfig, density: float) -> CompressorConfig:
    """``config`` at another density; methods without one are returned as they are."""
    target = density_of(config)
    if target is None or density <= target:
        return config
    field = "density" if isinstance(config, Threshold) else "ratio"
    return dataclasses.replace(config, **{field: min(1.0, density)})


class DensityWarmup:
    def __init__(self, warmup_steps: int, start_density: float, target: float | None) -> None:
        self.warmup_steps = warmup_steps
        self.start_density = start_density
        self.target = target

    def stage(self, compressing_step: int) -> int:
        """The stage of a step counted from where compression starts: 0 to STAGES - 1 during
        the warm-up, STAGES after it."""
        if self.warmup_steps <= 0 or compressing_step >= self.warmup_steps:
            return STAGES
        return max(0, compressing_step) * STAGES // self.warmup_steps

    def density(self, stage: int, target: float | None = None) -> float | None:
        """The density at ``stage`` of a method whose own is ``target`` (default: the main
        method's); None for a method without one."""
        target = self.target if target is None else target
        if target is None:
            return None
        if stage >= STAGES or target >= self.start_density:
            return target
        return self.start_density * (target / self.start_density) ** (stage / STAGES)

    def config_at(self, config: CompressorConfig, stage: int) -> CompressorConfig:
        """``config`` as it runs at ``stage``: denser during the warm-up if it has a density."""
        target = density_of(config)
        density = self.density(stage, target) if target is not None else None
        return config if density is None else with_density(config, density)
