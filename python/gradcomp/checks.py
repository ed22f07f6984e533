"""The checks register(), HookState and the simulator run on their arguments: each names the
bad value and what is valid, before anything is built."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from gradcomp import _C
from gradcomp.config import CompressorConfig, NoCompression, PowerSGD, RandomK
from gradcomp.local_update import is_sparsifier
from gradcomp.schedule import density_of

__all__ = [
    "check_collective",
    "check_device",
    "check_dtype",
    "check_feedback",
    "check_int",
    "check_local_update",
    "check_overrides",
    "check_recipe",
    "check_reducer",
    "check_warmup",
]


def check_device(name: str, device: torch.device) -> None:
    """Parameters must be on the CPU, or on CUDA when this build has the CUDA kernels."""
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise NotImplementedError(
            f"parameter {name!r} is on {device}; gradcomp supports cpu and cuda devices"
        )
    if not _C.has_cuda_kernels():
        raise NotImplementedError(
            f"parameter {name!r} is on {device} but this gradcomp build has no CUDA kernels "
            "(nvcc was not on PATH when it was built); reinstall with nvcc available and a "
            "CUDA build of torch"
        )


def check_reducer(model: DistributedDataParallel) -> None:
    if getattr(model, "_use_python_reducer", False):
        raise ValueError(
            "this DDP model uses DDP's Python reducer (torch._dynamo.config.optimize_ddp = "
            "'python_reducer', for compiled autograd), which calls comm hooks per parameter; "
            "gradcomp needs DDP's C++ reducer: use optimize_ddp='ddp_optimizer' (the default) "
            "and do not enable compiled autograd"
        )


def check_overrides(
    config: CompressorConfig,
    overrides: dict[str, CompressorConfig],
    param_numels: dict[str, int] | None,
) -> None:
    """PowerSGD's codec takes one method: with it, overrides may only send tensors dense. Every
    pattern must match a parameter (a typo would otherwise silently compress everything)."""
    for pattern, override in overrides.items():
        if isinstance(override, NoCompression):
            continue
        if isinstance(config, PowerSGD) or isinstance(override, PowerSGD):
            raise ValueError(
                f"override {pattern!r}: {override.spec!r} beside main compressor {config.spec!r}; "
                "PowerSGD compresses a whole bucket at once, so with powersgd (as the main "
                "compressor or an override) an override may only be 'none' (send dense)"
            )
        if isinstance(override, RandomK) and override.unbiased:
            raise ValueError(
                f"override {pattern!r}: randomk with unbiased=1 cannot run with error feedback; "
                "use unbiased=0"
            )
    if param_numels is None:
        return
    for pattern in overrides:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in param_numels):
            names = list(param_numels)
            shown = ", ".join(names[:12])
            if len(names) > 12:
                shown += f", ... ({len(names)} in all)"
            raise ValueError(
                f"override pattern {pattern!r} matches no parameter (fnmatch syntax, matched "
                f"against full names); parameters: {shown}"
            )


def check_local_update(
    config: CompressorConfig,
    overrides: dict[str, CompressorConfig],
    momentum: float,
    clip: float | None,
    *,
    error_feedback: bool,
    scaler: Any,
    masking: bool = True,
) -> None:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"momentum must be a number, got {type(momentum).__name__} {momentum!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum={momentum} is out of range; valid: 0 <= momentum < 1")
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, (int, float)):
            raise TypeError(f"clip must be a number or None, got {type(clip).__name__} {clip!r}")
        if not (clip > 0 and math.isfinite(clip)):
            raise ValueError(f"clip={clip} is out of range; valid: a finite clip > 0, or None")
    if momentum == 0 and clip is None:
        return
    if scaler is not None:
        raise ValueError(
            "momentum= and clip= act on gradients in their own units, but with grad_scaler "
            "the hook receives loss-scaled gradients whose scale changes; unscale in the "
            "optimizer instead (no momentum/clip in the hook) when training with a GradScaler"
        )
    methods = [config, *overrides.values()]
    if momentum > 0 and masking and not error_feedback and any(map(is_sparsifier, methods)):
        raise ValueError(
            "momentum correction with a sparsifier needs error_feedback=True: momentum factor "
            "masking reads what was sent from the residuals (or set mask_momentum=False)"
        )


_FEEDBACK = ("residual", "ef21")


def check_feedback(
    config: CompressorConfig, feedback: str, *, error_feedback: bool, scaler: Any
) -> None:
    if feedback not in _FEEDBACK:
        raise ValueError(f"feedback={feedback!r}; valid: {', '.join(map(repr, _FEEDBACK))}")
    if feedback == "residual":
        return
    if not error_feedback:
        raise ValueError("feedback='ef21' is a kind of error feedback: set error_feedback=True")
    if isinstance(config, PowerSGD):
        raise ValueError(
            "feedback='ef21' works with the codec methods; PowerSGD keeps its own error "
            "feedback: use feedback='residual' with powersgd"
        )
    if scaler is not None:
        raise ValueError(
            "feedback='ef21' keeps gradient estimates in the gradients' own units, but with "
            "grad_scaler their loss scale changes; use feedback='residual' with a GradScaler"
        )


def check_warmup(config: CompressorConfig, warmup_steps: int, warmup_density: float) -> None:
    if isinstance(warmup_density, bool) or not isinstance(warmup_density, (int, float)):
        raise TypeError(
            f"warmup_density must be a number, got {type(warmup_density).__name__} "
            f"{warmup_density!r}"
        )
    if not 0.0 < warmup_density <= 1.0:
        raise ValueError(
            f"warmup_density={warmup_density} is out of range; valid: 0 < warmup_density <= 1"
        )
    if warmup_steps == 0:
        return
    target = density_of(config)
    if target is None:
        raise ValueError(
            f"warmup_steps={warmup_steps} warms up a density, but {config.spec!r} has none; "
            "valid with topk, topk_approx, topk_int8, randomk and threshold (density=)"
        )
    if warmup_density <= target:
        raise ValueError(
            f"warmup_density={warmup_density} must exceed the method's density {target} "
            f"({config.spec!r}): the warm-up starts denser and falls to it"
        )


_GRADIENT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_dtype(name: str, dtype: torch.dtype) -> None:
    """Residuals, payloads and the dense channel are float32: wider or complex gradients would
    lose precision or meaning, so they are refused rather than silently rounded."""
    if dtype not in _GRADIENT_DTYPES:
        raise TypeError(
            f"parameter {name!r} is {dtype}; gradcomp compresses float32, bfloat16 and float16 "
            "gradients (keep such parameters out of the DDP model, or convert them)"
        )


def check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range; valid: {low} <= {name} <= {high}")


def check_recipe(
    config: CompressorConfig,
    overrides: dict[str, CompressorConfig],
    *,
    momentum: float,
    mask_momentum: bool,
    clip: float | None,
    feedback: str,
    warmup_steps: int,
    warmup_density: float,
    error_feedback: bool,
    scaler: Any,
) -> None:
    """The convergence-recipe options together (the hook and the simulator take the same)."""
    check_int("warmup_steps", warmup_steps, 0, 2**62)
    check_local_update(
        config,
        overrides,
        momentum,
        clip,
        error_feedback=error_feedback,
        scaler=scaler,
        masking=mask_momentum,
    )
    check_feedback(config, feedback, error_feedback=error_feedback, scaler=scaler)
    check_warmup(config, warmup_steps, warmup_density)


def check_collective(
    collective: str | Mapping[str, str],
    hierarchy: str | int | None,
    link: Any,
    config: CompressorConfig,
    *,
    momentum: float,
    mask_momentum: bool,
    feedback: str,
    world_group: bool,
    reduced_density_factor: float = 1.0,
    param_names: list[str] | None = None,
) -> None:
    """collective=, hierarchy= and link=. Both cut parameters into parts with residuals of
    their own, which momentum masking and EF21 (they look residuals up by parameter) cannot
    read. A per-parameter collective= is a mapping of fnmatch patterns, each of which must
    match a parameter (when the names are known)."""
    from gradcomp.cost_model import Link
    from gradcomp.two_phase import COLLECTIVES

    valid = ", ".join(map(repr, COLLECTIVES))
    if isinstance(collective, str):
        choices = [collective]
    elif isinstance(collective, Mapping):
        choices = list(collective.values())
        for pattern, choice in collective.items():
            if not isinstance(pattern, str):
                raise TypeError(f"collective pattern {pattern!r} must be a str")
            if choice not in COLLECTIVES:
                raise ValueError(f"collective {pattern!r}: {choice!r}; valid: {valid}")
            if param_names is not None and not any(
                fnmatch.fnmatchcase(name, pattern) for name in param_names
            ):
                raise ValueError(
                    f"collective pattern {pattern!r} matches no parameter (fnmatch syntax, "
                    f"matched against full names); parameters: {', '.join(param_names[:12])}"
                )
    else:
        raise TypeError(
            "collective must be a str or a mapping of parameter-name patterns to one, got "
            f"{type(collective).__name__}"
        )
    if any(choice not in COLLECTIVES for choice in choices):
        raise ValueError(f"collective={collective!r}; valid: {valid}")
    factor = reduced_density_factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise TypeError(f"reduced_density_factor must be a number, got {type(factor).__name__}")
    if not 1.0 <= factor <= 1024.0:
        raise ValueError(
            f"reduced_density_factor={factor} is out of range; valid: 1 <= factor <= 1024"
        )
    if link is not None and not isinstance(link, Link):
        raise TypeError(f"link must be a gradcomp.Link or None, got {type(link).__name__}")
    if all(choice == "allgather" for choice in choices) and hierarchy is None:
        return
    what = f"collective={collective!r}" if hierarchy is None else f"hierarchy={hierarchy!r}"
    if "two_phase" in choices and isinstance(config, PowerSGD):
        raise ValueError(
            "collective='two_phase' applies to gathered payloads; powersgd allreduces its "
            "factors: use collective='allgather' (the default) with powersgd"
        )
    if hierarchy is not None and isinstance(config, PowerSGD):
        raise ValueError(
            f"{what} does not support powersgd (its factors span the whole bucket); use a "
            "per-tensor method or hierarchy=None"
        )
    if hierarchy is not None and not world_group:
        raise ValueError(
            f"{what} builds its node groups from the world; it cannot run inside "
            "process_group=: leave process_group=None"
        )
    if momentum > 0 and mask_momentum:
        raise ValueError(
            f"{what} cuts parameters into parts with residuals of their own, which momentum "
            "factor masking cannot read: use mask_momentum=False, or collective='allgather' "
            "without hierarchy"
        )
    if feedback == "ef21":
        raise ValueError(
            f"{what} cuts parameters into parts with residuals of their own, which "
            "feedback='ef21' cannot read: use feedback='residual', or collective='allgather' "
            "without hierarchy"
        )
