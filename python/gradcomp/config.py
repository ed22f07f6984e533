"""Compressor configurations: config objects, spec strings ("topk:ratio=0.01") and names.

Every config is validated by building its C++ compressor, so the ranges checked here are the
ones the native code enforces, with the same messages.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from gradcomp import _C

__all__ = [
    "BF16",
    "FP16",
    "QSGD",
    "CompressorConfig",
    "Int8",
    "NoCompression",
    "PowerSGD",
    "RandomK",
    "Sign",
    "Threshold",
    "TopK",
    "TopKApprox",
    "TopKBitmap",
    "TopKInt8",
    "parse_spec",
    "resolve_config",
]


@dataclasses.dataclass(frozen=True)
class CompressorConfig:
    """Base class: a compressor's registry name plus its numeric options (the dataclass fields)."""

    name: ClassVar[str]

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(field.default, bool):
                # Spec strings carry numbers: "randomk:unbiased=1" arrives as 1.0.
                if not isinstance(value, bool) and value in (0, 1):
                    object.__setattr__(self, field.name, bool(value))
                elif not isinstance(value, bool):
                    raise TypeError(
                        f"{type(self).__name__}.{field.name} must be a bool (or 0/1), "
                        f"got {type(value).__name__} {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"{type(self).__name__}.{field.name} must be a number, "
                    f"got {type(value).__name__} {value!r}"
                )
        self.build()  # raises ValueError naming the bad value and the valid range

    def options(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def build(self) -> _C.CompressionMethod:
        return _C.make_compressor(self.name, self.options())

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. "topk:ratio=0.01"."""
        return self.build().spec


@dataclasses.dataclass(frozen=True)
class TopK(CompressorConfig):
    """Exact magnitude Top-K: sends k = max(ceil(ratio * numel), min_k) (value, int32 index)
    pairs per tensor (at most numel)."""

    name: ClassVar[str] = "topk"
    ratio: float = 0.01
    min_k: int = 0


@dataclasses.dataclass(frozen=True)
class TopKApprox(CompressorConfig):
    """Sampled-threshold Top-K (Deep Gradient Compression): the same k elements as TopK, found
    by estimating a threshold from ``sample_ratio`` of the elements, refined when it misses."""

    name: ClassVar[str] = "topk_approx"
    ratio: float = 0.01
    sample_ratio: float = 0.01
    min_k: int = 0


@dataclasses.dataclass(frozen=True)
class TopKInt8(CompressorConfig):
    """Top-K whose values travel as int8 with one scale: 5 bytes per element instead of 8."""

    name: ClassVar[str] = "topk_int8"
    ratio: float = 0.01
    min_k: int = 0


@dataclasses.dataclass(frozen=True)
class TopKBitmap(CompressorConfig):
    """Top-K with int8 values (topk_int8's selection and values) whose positions travel as a
    bitmap: 4 + numel/8 + k bytes per tensor, so densities above ~3% cost fewer bytes than
    topk_int8's int32 indices (at 10% density: 0.056 of dense fp32 against 0.125)."""

    name: ClassVar[str] = "topk_bitmap"
    ratio: float = 0.1
    min_k: int = 0


@dataclasses.dataclass(frozen=True)
class RandomK(CompressorConfig):
    """k = max(ceil(ratio * numel), min_k) elements at indices every rank draws alike from
    (seed, step, parameter); only the values travel, summed by allreduce. ``unbiased`` scales
    them by ~numel/k (for use without error feedback)."""

    name: ClassVar[str] = "randomk"
    ratio: float = 0.01
    unbiased: bool = False
    min_k: int = 0


@dataclasses.dataclass(frozen=True)
class Threshold(CompressorConfig):
    """Sends every element with |g| >= tau. ``tau > 0``: a fixed threshold; ``tau = 0``
    (default): tau estimated per step so that about ``density`` of the elements pass."""

    name: ClassVar[str] = "threshold"
    tau: float = 0.0
    density: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tau >= 0:  # options() would drop a negative tau silently
            raise ValueError(
                f"threshold: tau={self.tau} is out of range; valid: tau > 0 (fixed), or 0 to "
                "adapt to density"
            )
        if self.tau > 0 and self.density != 0.01:
            raise ValueError(
                f"threshold: give tau (a fixed threshold) or density (a target fraction), not "
                f"both; got tau={self.tau} and density={self.density}"
            )

    def options(self) -> dict[str, float]:
        # The native side rejects both at once; a fixed tau makes density irrelevant.
        return {"tau": float(self.tau)} if self.tau > 0 else {"density": float(self.density)}


@dataclasses.dataclass(frozen=True)
class QSGD(CompressorConfig):
    """QSGD: 2^(bits-1) - 1 levels per sign, stochastic rounding (unbiased), one L2 norm per
    ``chunk`` elements; bits in {2, 4, 8}."""

    name: ClassVar[str] = "qsgd"
    bits: int = 4
    chunk: int = 128


@dataclasses.dataclass(frozen=True)
class Sign(CompressorConfig):
    """Scaled 1-bit sign (EF-SignSGD): one bit per element plus mean |g| per ``chunk``."""

    name: ClassVar[str] = "sign"
    chunk: int = 1024


@dataclasses.dataclass(frozen=True)
class Int8(CompressorConfig):
    """int8 with a float32 minimum and step per ``chunk`` elements; gathered."""

    name: ClassVar[str] = "int8"
    chunk: int = 512


@dataclasses.dataclass(frozen=True)
class FP16(CompressorConfig):
    """Cast to float16 (pre-divided by the world size) and allreduced."""

    name: ClassVar[str] = "fp16"


@dataclasses.dataclass(frozen=True)
class BF16(CompressorConfig):
    """Cast to bfloat16 (pre-divided by the world size) and allreduced."""

    name: ClassVar[str] = "bf16"


@dataclasses.dataclass(frozen=True)
class PowerSGD(CompressorConfig):
    """PowerSGD: rank-``rank`` approximation of each gradient matrix with warm start and error
    feedback; two allreduces per bucket. Matrices that would not shrink by at least
    ``min_compression`` travel dense, as do 1-D tensors."""

    name: ClassVar[str] = "powersgd"
    rank: int = 2
    min_compression: float = 2.0


@dataclasses.dataclass(frozen=True)
class NoCompression(CompressorConfig):
    """ "none": dense fp32 allreduce through gradcomp's machinery; the control for comparisons."""

    name: ClassVar[str] = "none"


CONFIGS: dict[str, type[CompressorConfig]] = {
    cls.name: cls
    for cls in (
        TopK,
        TopKApprox,
        TopKInt8,
        TopKBitmap,
        RandomK,
        Threshold,
        QSGD,
        Sign,
        Int8,
        FP16,
        BF16,
        PowerSGD,
        NoCompression,
    )
}


def _valid_names() -> str:
    return ", ".join(sorted(CONFIGS))


def parse_spec(spec: str) -> tuple[str, dict[str, float]]:
    """Splits "name:key=value,key=value" into the name and its options."""
    if not isinstance(spec, str):
        raise TypeError(f"compressor spec must be a str, got {type(spec).__name__}")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ValueError(
            f"malformed compressor spec {spec!r}: expected 'name' or "
            f"'name:key=value,...' (names: {_valid_names()})"
        )
    options: dict[str, float] = {}
    if sep and not rest.strip():
        raise ValueError(f"malformed compressor spec {spec!r}: nothing after ':'")
    for item in rest.split(",") if rest.strip() else []:
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise ValueError(
                f"malformed compressor spec {spec!r}: {item.strip()!r} is not 'key=value'"
            )
        if key in options:
            raise ValueError(f"malformed compressor spec {spec!r}: option {key!r} given twice")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"malformed compressor spec {spec!r}: {key}={raw!r} is not a number"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"malformed compressor spec {spec!r}: {key}={raw!r} is not finite")
        options[key] = value
    return name, options


def resolve_config(compressor: str | CompressorConfig, options: dict[str, Any]) -> CompressorConfig:
    """A config object from a name, a spec string or a config, plus keyword options."""
    if isinstance(compressor, CompressorConfig):
        if options:
            raise ValueError(
                f"options {sorted(options)} given beside a config object; set them "
                f"on the config instead, e.g. {type(compressor).__name__}(...)"
            )
        return compressor
    name, spec_options = parse_spec(compressor)
    cls = CONFIGS.get(name)
    if cls is None:
        raise ValueError(f"unknown compressor {name!r}; valid names: {_valid_names()}")
    clash = sorted(set(spec_options) & set(options))
    if clash:
        raise ValueError(
            f"option(s) {clash} given both in the spec {compressor!r} and as keyword arguments"
        )
    merged = {**spec_options, **options}
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(merged) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for compressor {name!r}; valid options: "
            f"{', '.join(valid) or 'none'}"
        )
    return cls(**merged)
