"""Compressor configurations: config objects, spec strings ("topk:ratio=0.01") and names.

Every config is validated by building its C++ compressor, so the ranges checked here are the
ones the native code enforces, with the same messages.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from gradcomp import _C

__all__ = ["CompressorConfig", "NoCompression", "TopK", "parse_spec", "resolve_config"]


@dataclasses.dataclass(frozen=True)
class CompressorConfig:
    """Base class: a compressor's registry name plus its numeric options (the dataclass fields)."""

    name: ClassVar[str]

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"{type(self).__name__}.{field.name} must be a number, "
                    f"got {type(value).__name__} {value!r}"
                )
        self.build()  # raises ValueError naming the bad value and the valid range

    def options(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def build(self) -> _C.Compressor:
        return _C.make_compressor(self.name, self.options())

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. "topk:ratio=0.01"."""
        return self.build().spec


@dataclasses.dataclass(frozen=True)
class TopK(CompressorConfig):
    """Exact magnitude Top-K: sends k = ceil(ratio * numel) (value, int32 index) pairs."""

    name: ClassVar[str] = "topk"
    ratio: float = 0.01


@dataclasses.dataclass(frozen=True)
class NoCompression(CompressorConfig):
    """ "none": dense fp32 allreduce through gradcomp's machinery; the control for comparisons."""

    name: ClassVar[str] = "none"


CONFIGS: dict[str, type[CompressorConfig]] = {cls.name: cls for cls in (TopK, NoCompression)}


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
