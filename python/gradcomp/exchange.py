"""One bucket's way through the network: encode, collectives, decode, as futures.

Five shapes:

- dense: the bucket itself, pre-divided by the world size and allreduced in place, exactly as
  DDP does (the warm-up steps of ``start_iter``, and buckets whose every entry travels
  uncompressed, such as the ``none`` compressor's: no copy, no flag, one collective);
- codec: the bucket codec's messages, one collective per channel, decoded in the callback;
- two_phase and hierarchy (staged_exchange.py): collectives that depend on earlier ones,
  issued in stages from later hook calls (staging.py);
- PowerSGD: two allreduce rounds.

Every shape counts what this rank puts on the wire (cost_model.py) beside what it hands to
the collectives.

Python only orchestrates; the per-bucket work is one C++ call per phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from gradcomp.comm import allreduce_async, issue_channels
from gradcomp.cost_model import allreduce_wire
from gradcomp.estimate_feedback import EstimateFeedback
from gradcomp.hierarchy import HierarchicalCodec
from gradcomp.local_update import Entry, LocalUpdate
from gradcomp.profiling import profiled
from gradcomp.staged_exchange import hierarchy_exchange, two_phase_exchange
from gradcomp.telemetry import StepRecord
from gradcomp.two_phase import TwoPhaseCodec

if TYPE_CHECKING:
    from gradcomp.hook import HookState

__all__ = ["exchange_bucket", "prepare_encode"]


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
    # Later stages of earlier buckets' staged exchanges first, then this bucket's; the step's
    # last bucket finishes them all (staging.py).
    state.staged.run_ready()
    future = _exchange(state, bucket)
    if bucket.is_last():
        state.staged.drain()
    return future


def _exchange(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
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
    if isinstance(codec, TwoPhaseCodec):
        return two_phase_exchange(state, bucket, codec, record, ratio)
    if isinstance(codec, HierarchicalCodec):
        return hierarchy_exchange(state, bucket, codec, record, ratio)
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
    wire = allreduce_wire(dense, state.world_size)
    state.steps.end_issue(record, dense, dense, bucket.is_last(), (wire, wire, wire))

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

    issued = time.perf_counter()
    with profiled("gradcomp::communicate"):
        received, futures, works, used, sent, wire = issue_channels(codec, messages, group, world)
    dense = codec.numel * buffer.element_size()
    dense_wire = allreduce_wire(dense, world)
    state.steps.end_issue(record, sent, dense, bucket.is_last(), (wire, dense_wire, wire))

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
    dense = codec.numel * buffer.element_size()
    # Both rounds are allreduces (bytes_sent counts both).
    wire = allreduce_wire(codec.bytes_sent, state.world_size)
    dense_wire = allreduce_wire(dense, state.world_size)
    wires = (wire, dense_wire, wire)
    state.steps.end_issue(record, codec.bytes_sent, dense, bucket.is_last(), wires)

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
