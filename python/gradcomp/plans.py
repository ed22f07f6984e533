"""One bucket codec per DDP bucket layout: which parameter is compressed by which method, and
the C++ object (BucketCodec, or PowerSgdCodec) that encodes and decodes the bucket.

DDP rebuilds its buckets after the first step (and may again), so codecs are keyed by the
bucket index and rebuilt when the parameters in that bucket change.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from gradcomp import _C
from gradcomp.config import CompressorConfig, NoCompression
from gradcomp.cost_model import Link
from gradcomp.hierarchy import HierarchicalCodec, NodeGroups
from gradcomp.local_update import Entry, is_sparsifier
from gradcomp.schedule import STAGES, DensityWarmup, density_of, with_density
from gradcomp.two_phase import Collective, TwoPhaseCodec, chunked_entries

__all__ = ["BucketLike", "BucketPlans", "StagedPlans", "method_for"]


class BucketLike(Protocol):
    """What plans read of a bucket: DDP's GradBucket, or the simulator's stand-in."""

    def index(self) -> int: ...
    def buffer(self) -> torch.Tensor: ...
    def parameters(self) -> Sequence[torch.Tensor]: ...
    def gradients(self) -> Sequence[torch.Tensor]: ...


def method_for(
    config: CompressorConfig, overrides: dict[str, CompressorConfig], name: str
) -> CompressorConfig | None:
    """The config a parameter is compressed with: the first override whose pattern matches its
    name (None for "none": sent dense), else ``config``."""
    for pattern, override in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return None if isinstance(override, NoCompression) else override
    return config


class BucketPlans:
    def __init__(
        self,
        config: CompressorConfig,
        overrides: dict[str, CompressorConfig],
        param_names: dict[int, str],
        *,
        min_numel: int,
        seed: int,
        rank: int,
        world_size: int,
        residuals: _C.ErrorFeedback | None,
        warm_start: _C.ErrorFeedback,
        collective: Collective = "allgather",
        groups: NodeGroups | None = None,
        link: Link | None = None,
        reduced_density_factor: float = 1.0,
    ) -> None:
        self.config = config
        self.compressor = config.build()
        self.overrides = overrides
        # Method 0 is the main compressor; each distinct override config adds one.
        self.methods: list[CompressorConfig] = [config]
        for override in overrides.values():
            if not isinstance(override, NoCompression) and override not in self.methods:
                self.methods.append(override)
        self._method_objects = [m.build() for m in self.methods]
        # What two_phase's owners re-compress with: the sparsifiers reduced_density_factor
        # times denser (the others as they are).
        self._reduced_objects = [
            with_density(m, d * reduced_density_factor).build()
            if (d := density_of(m)) is not None and reduced_density_factor != 1.0
            else built
            for m, built in zip(self.methods, self._method_objects, strict=True)
        ]
        self._param_names = param_names
        self._min_numel = min_numel
        self._seed = seed
        self._rank = rank
        self._world_size = world_size
        self._residuals = residuals
        self._warm_start = warm_start
        self._collective = collective
        self._groups = groups
        self._link = link or Link()
        # bucket index -> (parameter ids, codec, entries, which entries a sparsifier sends)
        self._codecs: dict[int, tuple[tuple[int, ...], Any, list[Entry], list[bool]]] = {}

    def __len__(self) -> int:
        """How many bucket layouts have a codec."""
        return len(self._codecs)

    def collectives(self) -> dict[int, str]:
        """How each bucket's compressed payloads travel, by bucket index: "allgather",
        "two_phase", "hierarchy/<inner>", "lowrank", "allreduce" (nothing gathered) or "none"
        (empty parameters)."""
        out = {}
        for index, (_key, codec, _entries, _masked) in self._codecs.items():
            if codec is None:
                out[index] = "none"
            elif isinstance(codec, HierarchicalCodec):
                out[index] = f"hierarchy/{codec.inner_kind}"
            elif isinstance(codec, TwoPhaseCodec):
                out[index] = "two_phase"
            elif self.low_rank:
                out[index] = "lowrank"
            elif any(ch[0] == "allgather" for ch in codec.channels):
                out[index] = "allgather"
            else:
                out[index] = "allreduce"
        return out

    def codecs(self) -> list[Any]:
        """The codecs of the current bucket layouts (None for a bucket of empty parameters)."""
        return [cached[1] for cached in self._codecs.values() if cached[1] is not None]

    @property
    def low_rank(self) -> bool:
        """True for PowerSGD, which runs two allreduce rounds per bucket."""
        return self.compressor.collective == "lowrank"

    def method_for(self, name: str) -> CompressorConfig | None:
        """The config a parameter is compressed with; None when it is sent dense because an
        override says "none" (the size cut, min_numel, is applied separately)."""
        return method_for(self.config, self.overrides, name)

    def codec_for(self, bucket: BucketLike) -> Any:
        """The bucket's codec, rebuilt when DDP changes the layout; None for a bucket of empty
        parameters only."""
        return self._cached(bucket)[1]

    def entries_for(self, bucket: BucketLike) -> tuple[list[Entry], list[bool]]:
        """The bucket's entries (name, offset, numel, compress, rows, method) and, for each,
        whether a sparsifier sends it (what momentum factor masking applies to)."""
        cached = self._cached(bucket)
        return cached[2], cached[3]

    def _cached(self, bucket: BucketLike) -> tuple[tuple[int, ...], Any, list[Entry], list[bool]]:
        params = bucket.parameters()
        key = tuple(map(id, params))
        cached = self._codecs.get(bucket.index())
        if cached is not None and cached[0] == key:
            return cached
        entries = self._entries(bucket)
        codec: Any = None
        if entries and self.low_rank:
            codec = _C.PowerSgdCodec(
                self.compressor,
                [e[:5] for e in entries],
                self._residuals,
                self._warm_start,
                self._seed,
                self._world_size,
            )
        elif entries and self._groups is not None:
            codec = HierarchicalCodec(
                self._method_objects,
                entries,
                self._residuals,
                self._seed,
                self._groups,
                self._collective,
                self._link,
                self._reduced_objects,
            )
        elif entries:
            chunk = chunked_entries(
                self._collective,
                self._method_objects,
                entries,
                self._rank,
                self._world_size,
                self._link,
                self._reduced_objects,
            )
            common = (self._method_objects, entries, self._residuals, self._seed)
            where = (self._rank, self._world_size)
            if chunk is not None:
                codec = TwoPhaseCodec(*common, *where, self._reduced_objects, chunk)
            else:
                codec = _C.BucketCodec(*common, *where)
        masked = [e[3] and is_sparsifier(self.methods[e[5]]) for e in entries]
        cached = (key, codec, entries, masked)
        self._codecs[bucket.index()] = cached
        return cached

    def _entries(self, bucket: BucketLike) -> list[Entry]:
        """(name, offset, numel, compress, rows, method) per non-empty parameter."""
        buffer = bucket.buffer()
        base, item = buffer.data_ptr(), buffer.element_size()
        entries = []
        for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
            name = self._param_names.get(id(param))
            if name is None:
                raise RuntimeError(
                    "gradcomp: a bucket holds a parameter that was not in the "
                    "model given to register()"
                )
            numel = grad.numel()
            if numel == 0:  # an empty parameter has nothing to send
                continue
            offset = (grad.data_ptr() - base) // item
            rows = param.shape[0] if param.dim() >= 2 else 0
            method = self.method_for(name)
            overridden = any(fnmatch.fnmatchcase(name, p) for p in self.overrides)
            # An override applies whatever the size; otherwise small tensors travel dense.
            compress = method is not None and (overridden or numel >= self._min_numel)
            index = self.methods.index(method) if method is not None else 0
            entries.append((name, offset, numel, compress, rows, index))
        return entries


class StagedPlans:
    """The configured BucketPlans and, during the density warm-up, one denser BucketPlans per
    stage, built at the stage's first step and dropped once the warm-up is over. ``options``
    are BucketPlans' keyword arguments (the residuals are shared by every stage)."""

    def __init__(
        self,
        config: CompressorConfig,
        overrides: dict[str, CompressorConfig],
        param_names: dict[int, str],
        warmup: DensityWarmup,
        **options: Any,
    ) -> None:
        self.target = BucketPlans(config, overrides, param_names, **options)
        self.warmup = warmup
        self._param_names = param_names
        self._options = options
        self._stages: dict[int, BucketPlans] = {}

    def at(self, compressing_step: int) -> BucketPlans:
        """The plans of a step counted from where compression starts."""
        stage = self.warmup.stage(compressing_step)
        if stage >= STAGES:
            self._stages.clear()
            return self.target
        plans = self._stages.get(stage)
        if plans is None:
            config = self.warmup.config_at(self.target.config, stage)
            overrides = {
                pattern: self.warmup.config_at(c, stage)
                for pattern, c in self.target.overrides.items()
            }
            plans = BucketPlans(config, overrides, self._param_names, **self._options)
            self._stages[stage] = plans
        return plans
