"""One bucket's way through the network: encode, collectives, decode, as futures.

Three shapes:

- dense: the bucket itself, pre-divided by the world size and allreduced in place, exactly as
  DDP does (the warm-up steps of ``start_iter``, and buckets whose every entry travels
  uncompressed, such as the ``none`` compressor's: no copy, no flag, one collective);
- codec: the bucket codec's messages, one collective per channel, decoded in the callback;
- PowerSGD: two allreduce rounds.

Python only orchestrates; the per-bucket work is one C++ call per phase.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.profiler import record_function

from gradcomp.comm import allgather_async, allreduce_async, exchange_lengths
from gradcomp.estimate_feedback import EstimateFeedback
from gradcomp.local_update import Entry, LocalUpdate
from gradcomp.telemetry import StepRecord

if TYPE_CHECKING:
    from gradcomp.hook import HookState

__all__ = ["exchange_bucket", "prepare_encode"]

_NOTHING = contextlib.nullcontext()


def _profiling() -> bool:
    # torch.profiler sets the module flag for every thread (the hook runs on autograd's and
    # decodes on torch.distributed's); _profiler_enabled() sees this thread's other profilers.
    flag = getattr(torch.autograd.profiler, "_is_profiler_enabled", True)
    return bool(flag) or torch.autograd._profiler_enabled()


def profiled(name: str) -> contextlib.AbstractContextManager:
    """A torch.profiler range while a profiler runs, nothing otherwise: entering a
    record_function costs about 10 us, and a bucket enters two or three per step."""
    return record_function(name) if _profiling() else _NOTHING


def _nothing() -> None:
    pass


def prepare_encode(
    local_update: LocalUpdate,
    estimates: EstimateFeedback | None,
    residuals: Any,
    buffer: torch.Tensor,
    layout: tuple[list[Entry], list[bool]],
    velocities: list[torch.Tensor],
) -> Callable[[], None]:
    """Readies one rank's bucket for the codec's encode: EF21's difference, or the values that
    momentum masking compares with; returns what to run right after encode. ``residuals``:
    the codec's error feedback (None without)."""
    entries, masked = layout
    if estimates is not None:
        pending = estimates.before_encode(buffer, entries, residuals)
        return lambda: estimates.after_encode(pending)
    if velocities and local_update.masking and residuals is not None:
        compared = local_update.compensated(residuals, entries, velocities, masked)
        return lambda: local_update.mask(compared)
    return _nothing


def exchange_bucket(
    state: HookState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    record, ratio = state._begin_bucket(buffer.device)
    plans = state.plans_at(state.step)
    velocities: list[torch.Tensor] = []
    if state.local_update.active:
        entries, _masked = plans.entries_for(bucket)
        velocities = state.local_update.apply(buffer, entries)
    if state.step < state.start_iter:  # dense warm-up, as DDP's own allreduce hook does it
        return _allreduce_bucket(state, bucket, record)
    codec = plans.codec_for(bucket)
    if codec is None:  # only empty parameters: nothing to send on any rank
        state.steps.end_issue(record, 0, 0, bucket.is_last())
        state.steps.finish_bucket(record, 0.0)
        done: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        done.set_result(buffer)
        return done
    if plans.low_rank:
        return _powersgd_exchange(state, bucket, codec, record)
    if codec.all_dense:
        # Nothing compressed: allreduce the bucket as DDP does. An inf on one rank spreads to
        # every rank through the sum, so every GradScaler skips the step without a flag.
        return _allreduce_bucket(state, bucket, record)
    return _codec_exchange(
        state, bucket, codec, plans.entries_for(bucket), record, ratio, velocities
    )


def _allreduce_bucket(
    state: HookState, bucket: dist.GradBucket, record: StepRecord
) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    dense = buffer.numel() * buffer.element_size()
    issued = time.perf_counter()
    with profiled("gradcomp::communicate"):
        buffer.div_(state.world_size)
        work, fut = allreduce_async(buffer, state.process_group)
    state.steps.end_issue(record, dense, dense, bucket.is_last())

    def finish(done: torch.futures.Future) -> torch.Tensor:
        value = done.value()[0]
        state.steps.finish_bucket(record, time.perf_counter() - issued)
        return value

    return state.in_flight.then(bucket.index(), [fut], finish, buffer.device, work)


def _codec_exchange(
    state: HookState,
    bucket: dist.GradBucket,
    codec: Any,
    layout: tuple[list[Entry], list[bool]],
    record: StepRecord,
    ratio: torch.Tensor | None,
    velocities: list[torch.Tensor],
) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    group, world = state.process_group, state.world_size
    step = state.step  # end_issue() below advances it after the last bucket
    entries = layout[0]
    estimates = state.estimates
    started = time.perf_counter()
    with profiled("gradcomp::compress"):
        after_encode = prepare_encode(
            state.local_update,
            estimates,
            state._residuals if state.error_feedback else None,
            buffer,
            layout,
            velocities,
        )
        messages = codec.encode(buffer, step, record.measure, ratio)
        after_encode()
    record.compress_seconds += time.perf_counter() - started
    if record.measure:
        input_sq, error_sq = codec.measured
        record.input_sq += input_sq
        record.error_sq += error_sq

    sent = 0
    received: list[torch.Tensor] = []
    futures: list[torch.futures.Future] = []
    works: list[dist.Work] = []
    used: list[int] = []
    issued = time.perf_counter()
    with profiled("gradcomp::communicate"):
        for index, ((collective, _dtype, _numel, variable), message) in enumerate(
            zip(codec.channels, messages, strict=True)
        ):
            if collective == "allreduce":
                work, fut = allreduce_async(message, group)
                received.append(message)
            elif variable:
                # The one blocking exchange: every rank's payload length, so all can gather
                # at the longest (a rank with nothing to send still sends its headers).
                used = exchange_lengths(message.numel(), group, world, message.device)
                sent += 8
                padded = message.new_zeros(max(used))
                padded[: message.numel()] = message
                message = padded  # what crosses the wire, and what stats() counts
                gathered, work, fut = allgather_async(message, group, world)
                received.append(gathered)
            else:
                out = codec.gather_buffer(index)
                gathered, work, fut = allgather_async(message, group, world, out=out)
                received.append(gathered)
            sent += message.numel() * message.element_size()
            works.append(work)
            futures.append(fut)
    state.steps.end_issue(record, sent, codec.numel * buffer.element_size(), bucket.is_last())

    def finish(done: torch.futures.Future) -> torch.Tensor:
        for fut in done.value() if len(futures) > 1 else [done]:
            # Re-raises a failed collective; on CUDA also orders this stream after it.
            fut.wait()
        began = time.perf_counter()
        with profiled("gradcomp::decompress"):
            outcome = codec.decode(buffer, received, step, used)
            if estimates is not None:
                estimates.after_decode(buffer, entries)
        state.steps.finish_bucket(record, began - issued, time.perf_counter() - began, outcome)
        return buffer

    return state.in_flight.then(bucket.index(), futures, finish, buffer.device, *works)


def _powersgd_exchange(
    state: HookState, bucket: dist.GradBucket, codec: Any, record: StepRecord
) -> torch.futures.Future[torch.Tensor]:
    """PowerSGD's two rounds: allreduce [flag | dense | P], orthonormalize, allreduce Q, decode.

    Round 1 is waited for here, so that every collective is issued from this thread in bucket
    order on every rank. Issuing round 2 from round 1's completion callback (as PyTorch's
    powerSGD_hook does) lets ranks interleave one bucket's Q with another bucket's P in
    different orders once a model has several buckets, which Gloo reports as a size mismatch.
    """
    buffer = bucket.buffer()
    group = state.process_group
    started = time.perf_counter()
    with profiled("gradcomp::compress"):
        first = codec.encode_first(buffer, record.measure)
    record.compress_seconds += time.perf_counter() - started
    issued = time.perf_counter()
    with profiled("gradcomp::communicate"):
        first_work, first_fut = allreduce_async(first, group)
        first_work.wait()
    record.communicate_seconds += time.perf_counter() - issued
    began = time.perf_counter()
    with profiled("gradcomp::compress"):
        second = codec.encode_second(first)
    record.compress_seconds += time.perf_counter() - began
    if record.measure:
        input_sq, error_sq = codec.measured
        record.input_sq += input_sq
        record.error_sq += error_sq
    issued = time.perf_counter()
    with profiled("gradcomp::communicate"):
        work, fut = allreduce_async(second, group)
    state.steps.end_issue(
        record, codec.bytes_sent, codec.numel * buffer.element_size(), bucket.is_last()
    )

    def finish(done: torch.futures.Future) -> torch.Tensor:
        done.wait()  # re-raises a failed collective
        began = time.perf_counter()
        with profiled("gradcomp::decompress"):
            outcome = codec.decode(buffer, first, second)
        state.steps.finish_bucket(record, began - issued, time.perf_counter() - began, outcome)
        return buffer

    return state.in_flight.then(
        bucket.index(), [fut], finish, buffer.device, work, first_work, first_fut
    )
