"""A convergence simulator: P data-parallel workers in one process, for studying how a method
trains at 8-16 workers on one machine (or one GPU) without launching P ranks.

Every worker runs what a rank of the hook runs, with the same objects: its own bucket codecs
(the C++ BucketCodec or PowerSgdCodec, built by plans.py), its own error feedback, velocities
and EF21 estimates, the same density warm-up. Only the collectives are simulated: an allreduce
is the sum of the workers' messages in worker order, an allgather their concatenation. Every
worker then decodes for itself, as every rank does, and the first worker's result becomes the
gradient. Buckets follow DDP's default assignment (reverse parameter order, 1 MiB first bucket,
then ``bucket_cap_mb``).

With 2 workers the result is bit-identical to DDP with the hook on 2 Gloo ranks (a sum of two
terms does not depend on their order); with more, Gloo's ring sums in another order, so the
dense sums can differ in the last bits. tests/python/test_simulate.py checks both.

    sim = gradcomp.Simulator(model, "topk:ratio=0.01", workers=8, momentum=0.9)
    for batches in loader:                      # one batch per worker
        for worker, batch in enumerate(batches):
            loss_fn(model, batch).backward()
            sim.take_gradient(worker)           # moves p.grad into the worker's buckets
        sim.average()                           # p.grad = the hook's averaged gradient
        optimizer.step()
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from gradcomp import _C, checks
from gradcomp.config import CompressorConfig, resolve_config
from gradcomp.estimate_feedback import EstimateFeedback
from gradcomp.exchange import prepare_encode
from gradcomp.hook import canonical_name
from gradcomp.local_update import LocalUpdate
from gradcomp.plans import StagedPlans
from gradcomp.schedule import DensityWarmup, density_of

__all__ = ["Simulator"]


class _Bucket:
    """What plans.py reads of a DDP GradBucket: one worker's copy of one bucket."""

    def __init__(self, index: int, params: list[torch.nn.Parameter], device: torch.device) -> None:
        self._index = index
        self._params = params
        dtype = params[0].dtype
        self._buffer = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=device)
        self._views = []
        offset = 0
        for p in params:
            self._views.append(self._buffer[offset : offset + p.numel()])
            offset += p.numel()

    def index(self) -> int:
        return self._index

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def parameters(self) -> list[torch.nn.Parameter]:
        return self._params

    def gradients(self) -> list[torch.Tensor]:
        return self._views


class _Worker:
    """One simulated rank: its buckets, codecs and per-rank state."""

    def __init__(self, sim: Simulator, rank: int) -> None:
        self.rank = rank
        self.residuals = _C.ErrorFeedback()
        self.warm_start = _C.ErrorFeedback()
        self.local_update = LocalUpdate(
            momentum=sim.momentum,
            clip=sim.clip,
            total_numel=sim.total_numel,
            masking=sim.mask_momentum,
        )
        self.estimates = EstimateFeedback() if sim.feedback == "ef21" else None
        self.buckets = [
            _Bucket(i, params, sim.device) for i, params in enumerate(sim.bucket_params)
        ]
        self.plans = StagedPlans(
            sim.config,
            sim.overrides,
            sim.param_names,
            sim.warmup,
            min_numel=sim.min_numel,
            seed=sim.seed,
            rank=rank,
            world_size=sim.workers,
            residuals=self.residuals if sim.error_feedback else None,
            warm_start=self.warm_start,
        )


def _sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    total = tensors[0].clone()
    for t in tensors[1:]:
        total.add_(t)
    return total


class Simulator:
    """P workers' exchange of the hook, in one process. Options as in :func:`gradcomp.register`
    (``workers`` is the simulated world size)."""

    def __init__(
        self,
        model: torch.nn.Module,
        compressor: str | CompressorConfig = "topk",
        *,
        workers: int,
        error_feedback: bool = True,
        min_numel: int = 1024,
        start_iter: int = 0,
        seed: int = 0,
        overrides: dict[str, str | CompressorConfig] | None = None,
        momentum: float = 0.0,
        mask_momentum: bool = True,
        clip: float | None = None,
        warmup_steps: int = 0,
        warmup_density: float = 0.25,
        feedback: str = "residual",
        bucket_cap_mb: float = 25.0,
        **options: Any,
    ) -> None:

        checks.check_int("workers", workers, 1, 4096)
        checks.check_int("min_numel", min_numel, 0, 2**62)
        checks.check_int("start_iter", start_iter, 0, 2**62)
        self.config = resolve_config(compressor, options)
        self.overrides = {p: resolve_config(c, {}) for p, c in (overrides or {}).items()}
        named = [(canonical_name(n), p) for n, p in model.named_parameters()]
        numels = {n: p.numel() for n, p in named}
        checks.check_overrides(self.config, self.overrides, numels)
        checks.check_recipe(
            self.config,
            self.overrides,
            momentum=momentum,
            mask_momentum=mask_momentum,
            clip=clip,
            feedback=feedback,
            warmup_steps=warmup_steps,
            warmup_density=warmup_density,
            error_feedback=error_feedback,
            scaler=None,
        )
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb={bucket_cap_mb} is out of range; valid: > 0")
        params = [p for _n, p in named if p.requires_grad]
        if not params:
            raise ValueError("the model has no parameters that require gradients")
        for n, p in named:
            checks.check_dtype(n, p.dtype)
        self.params = params
        self.param_names = {id(p): n for n, p in named}
        self.device = params[0].device
        self.workers = workers
        self.error_feedback = error_feedback
        self.min_numel = min_numel
        self.start_iter = start_iter
        self.seed = seed
        self.momentum, self.clip, self.feedback = momentum, clip, feedback
        self.mask_momentum = mask_momentum
        self.total_numel = sum(numels.values())
        self.warmup = DensityWarmup(warmup_steps, warmup_density, density_of(self.config))
        # DDP's default assignment: reverse order, a 1 MiB first bucket, then the cap.
        order: list[torch.Tensor] = list(reversed(params))
        limits = [dist._DEFAULT_FIRST_BUCKET_BYTES, int(bucket_cap_mb * 1024 * 1024)]
        indices, _ = dist._compute_bucket_assignment_by_size(order, limits, [False] * len(order))
        self.bucket_params = [[params[len(params) - 1 - i] for i in bucket] for bucket in indices]
        self._workers = [_Worker(self, rank) for rank in range(workers)]
        self.step = 0
        self.bytes_sent = 0  # by one worker, over all steps (as the hook's stats() counts)
        self.bytes_dense = 0
        self._taken = [False] * workers

    def take_gradient(self, worker: int) -> None:
        """Moves the parameters' .grad (one worker's backward) into that worker's buckets and
        clears .grad for the next worker; a parameter without .grad contributes zeros."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker={worker} is out of range; valid: 0 to {self.workers - 1}")
        for bucket in self._workers[worker].buckets:
            for param, view in zip(bucket.parameters(), bucket.gradients(), strict=True):
                if param.grad is None:
                    view.zero_()
                else:
                    view.copy_(param.grad.reshape(-1))
                    param.grad = None
        self._taken[worker] = True

    def average(self) -> None:
        """Runs every bucket's exchange over all workers and sets each parameter's .grad to the
        averaged gradient, as DDP with the hook leaves it on every rank."""
        missing = [w for w, taken in enumerate(self._taken) if not taken]
        if missing:
            raise RuntimeError(f"average(): no gradient taken from worker(s) {missing} this step")
        for index in range(len(self.bucket_params)):
            self._exchange(index)
        lead = self._workers[0]
        for bucket in lead.buckets:
            for param, view in zip(bucket.parameters(), bucket.gradients(), strict=True):
                param.grad = view.view_as(param).clone()
        self._taken = [False] * self.workers
        self.step += 1

    def stats(self) -> dict[str, Any]:
        """Steps, and the bytes one worker handed to collectives against a dense allreduce."""
        dense = self.bytes_dense
        return {
            "steps": self.step,
            "bytes_sent": self.bytes_sent,
            "bytes_dense": dense,
            "ratio": self.bytes_sent / dense if dense else float("nan"),
        }

    # -- one bucket, all workers ------------------------------------------------------------

    def _exchange(self, index: int) -> None:
        workers, world = self._workers, self.workers
        buckets = [w.buckets[index] for w in workers]
        buffers = [b.buffer() for b in buckets]
        plans = [w.plans.at(self.step - self.start_iter) for w in workers]
        velocities = []
        for worker, plan, bucket in zip(workers, plans, buckets, strict=True):
            entries = plan.entries_for(bucket)[0] if worker.local_update.active else []
            velocities.append(worker.local_update.apply(bucket.buffer(), entries))
        dense = buffers[0].numel() * buffers[0].element_size()
        self.bytes_dense += dense
        codecs = [plan.codec_for(bucket) for plan, bucket in zip(plans, buckets, strict=True)]
        if (
            self.step < self.start_iter
            or codecs[0] is None
            or (not plans[0].low_rank and codecs[0].all_dense)
        ):
            for b in buffers:
                b.div_(world)
            total = _sum(buffers)
            for b in buffers:
                b.copy_(total)
            self.bytes_sent += dense if codecs[0] is not None else 0
            return
        if plans[0].low_rank:
            self._powersgd(codecs, buffers)
            return
        messages = []
        for worker, plan, bucket, vel in zip(workers, plans, buckets, velocities, strict=True):
            after_encode = prepare_encode(
                worker.local_update,
                worker.estimates,
                worker.residuals if self.error_feedback else None,
                bucket.buffer(),
                plan.entries_for(bucket),
                vel,
            )
            encoded = plan.codec_for(bucket).encode(bucket.buffer(), self.step, False, None)
            messages.append([m.clone() for m in encoded])
            after_encode()
        received: list[torch.Tensor] = []
        used: list[int] = []
        for channel, (collective, _dtype, _numel, variable) in enumerate(codecs[0].channels):
            parts = [m[channel] for m in messages]
            if collective == "allreduce":
                received.append(_sum(parts))
                self.bytes_sent += parts[0].numel() * parts[0].element_size()
            elif variable:
                used = [p.numel() for p in parts]
                stride = max(used)
                padded = [torch.cat([p, p.new_zeros(stride - p.numel())]) for p in parts]
                received.append(torch.cat(padded))
                self.bytes_sent += 8 + stride * parts[0].element_size()
            else:
                received.append(torch.cat(parts))
                self.bytes_sent += parts[0].numel() * parts[0].element_size()
        for worker, plan, codec, bucket in zip(workers, plans, codecs, buckets, strict=True):
            mine = [r.clone() for r in received]
            codec.decode(bucket.buffer(), mine, self.step, used)
            if worker.estimates is not None:
                worker.estimates.after_decode(bucket.buffer(), plan.entries_for(bucket)[0])

    def _powersgd(self, codecs: list[Any], buffers: list[torch.Tensor]) -> None:
        firsts = [
            codec.encode_first(buffer, False).clone()
            for codec, buffer in zip(codecs, buffers, strict=True)
        ]
        first = _sum(firsts)
        mine = [first.clone() for _ in codecs]
        seconds = [codec.encode_second(f).clone() for codec, f in zip(codecs, mine, strict=True)]
        second = _sum(seconds)
        for codec, buffer, f in zip(codecs, buffers, mine, strict=True):
            codec.decode(buffer, f, second.clone())
        self.bytes_sent += codecs[0].bytes_sent
