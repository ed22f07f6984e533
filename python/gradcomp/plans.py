"""One bucket codec per DDP bucket layout: which parameter is compressed by which method, and
the C++ object (BucketCodec, or PowerSgdCodec) that encodes and decodes the bucket.

DDP rebuilds its buckets after the first step (and may again), so codecs are keyed by the
bucket index and rebuilt when the parameters in that bucket change.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch.distributed as dist

from gradcomp import _C
from gradcomp.config import CompressorConfig, NoCompression

__all__ = ["BucketPlans"]


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
        self._param_names = param_names
        self._min_numel = min_numel
        self._seed = seed
        self._rank = rank
        self._world_size = world_size
        self._residuals = residuals
        self._warm_start = warm_start
        self._codecs: dict[int, tuple[tuple[int, ...], Any]] = {}

    def __len__(self) -> int:
        """How many bucket layouts have a codec."""
        return len(self._codecs)

    def codecs(self) -> list[Any]:
        """The codecs of the current bucket layouts (None for a bucket of empty parameters)."""
        return [codec for _key, codec in self._codecs.values() if codec is not None]

    @property
    def low_rank(self) -> bool:
        """True for PowerSGD, which runs two allreduce rounds per bucket."""
        return self.compressor.collective == "lowrank"

    def method_for(self, name: str) -> CompressorConfig | None:
        """The config a parameter is compressed with; None when it is sent dense because an
        override says "none" (the size cut, min_numel, is applied separately)."""
        for pattern, override in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return None if isinstance(override, NoCompression) else override
        return self.config

    def codec_for(self, bucket: dist.GradBucket) -> Any:
        """The bucket's codec, rebuilt when DDP changes the layout; None for a bucket of empty
        parameters only."""
        params = bucket.parameters()
        key = tuple(map(id, params))
        cached = self._codecs.get(bucket.index())
        if cached is not None and cached[0] == key:
            return cached[1]
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
        elif entries:
            codec = _C.BucketCodec(
                self._method_objects,
                entries,
                self._residuals,
                self._seed,
                self._rank,
                self._world_size,
            )
        self._codecs[bucket.index()] = (key, codec)
        return codec

    def _entries(self, bucket: dist.GradBucket) -> list[tuple[str, int, int, bool, int, int]]:
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
