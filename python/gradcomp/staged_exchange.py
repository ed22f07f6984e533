"""The exchanges whose collectives depend on earlier ones, run in stages (staging.py):
two_phase (two_phase.py) and a hierarchy of nodes (hierarchy.py).

two_phase, per bucket: [hook] encode every chunk, issue the allreduced channels and the
all_to_all; [next stage] wait for the all_to_all, reduce and re-compress this rank's chunk,
issue the allgather; the allgather's callback decodes into the bucket and completes the future
DDP waits on.

hierarchy, per bucket: [hook] the dense allreduce inside the node; [next] wait for it, encode
this rank's slice and issue the exchange between nodes (for two_phase its first phase; one
more stage issues the second); [next] wait for it, decode, issue the allgather of slices inside
the node, whose callback completes DDP's future.

A stage that fails (a collective raised) completes DDP's future with the error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from gradcomp.comm import allgather_async, allreduce_async, alltoall_async, issue_channels
from gradcomp.cost_model import allreduce_wire
from gradcomp.hierarchy import HierarchicalCodec
from gradcomp.profiling import profiled
from gradcomp.staging import Stage
from gradcomp.telemetry import StepRecord
from gradcomp.two_phase import TwoPhaseCodec, combined_outcome

if TYPE_CHECKING:
    from gradcomp.hook import HookState

__all__ = ["hierarchy_exchange", "two_phase_exchange"]


def _guarded(result: torch.futures.Future, stage: Callable[[], Stage | None]) -> Stage:
    """``stage``, completing DDP's future with the error if it raises."""

    def run() -> Stage | None:
        try:
            following = stage()
        except BaseException as error:  # DDP re-raises it from its wait
            if not result.done():
                result.set_exception(error)
            return None
        return _guarded(result, following) if following is not None else None

    return run


class _TwoPhaseRun:
    """One bucket's two phases in ``group``: phase 1 (and the rest codec's collectives) issued
    at construction, phase 2 by issue_second(), decode() once every future has completed."""

    def __init__(
        self,
        codec: TwoPhaseCodec,
        buffer: torch.Tensor,
        step: int,
        record: StepRecord,
        ratio: torch.Tensor | None,
        group: dist.ProcessGroup,
    ) -> None:
        self.codec, self.buffer, self.step, self.record = codec, buffer, step, record
        self.ratio, self.group = ratio, group
        world = codec.world_size
        started = time.perf_counter()
        with profiled("gradcomp::compress"):
            rest, send, self.receive = codec.encode(buffer, step, record.measure, ratio)
        record.compress_seconds += time.perf_counter() - started
        if record.measure:
            record.input_sq += codec.measured[0]
            record.error_sq += codec.measured[1]
        self.issued = time.perf_counter()
        self.futures: list[torch.futures.Future] = []
        self.works: list[Any] = []
        self.rest, self.used = rest, []
        with profiled("gradcomp::communicate"):
            if codec.rest is not None:
                received, futures, works, used, _sent, _wire = issue_channels(
                    codec.rest, rest, group, world
                )
                self.rest, self.futures, self.works, self.used = received, futures, works, used
            splits = codec.splits
            out_splits = [splits[codec.rank]] * world
            self.first, _ = alltoall_async(self.receive, send, out_splits, splits, group)
        self.works.append(self.first)
        self.gathered: torch.Tensor | None = None

    def issue_second(self) -> None:
        self.first.wait()
        began = time.perf_counter()
        with profiled("gradcomp::compress"):
            mine = self.codec.reduce_own(self.buffer, self.receive, self.step, self.ratio)
        self.record.compress_seconds += time.perf_counter() - began
        with profiled("gradcomp::communicate"):
            out = self.codec.gather_buffer(self.buffer.device)
            world = self.codec.world_size
            self.gathered, work, fut = allgather_async(mine, self.group, world, out=out)
        self.works.append(work)
        self.futures.append(fut)

    def decode(self) -> int:
        assert self.gathered is not None
        with profiled("gradcomp::decompress"):
            return self.codec.decode(self.buffer, self.rest, self.gathered, self.step, self.used)


def _wait_all(futures: list[torch.futures.Future]) -> None:
    for fut in futures:
        fut.wait()  # re-raises a failed collective; on CUDA orders this stream after it


def two_phase_exchange(
    state: HookState,
    bucket: dist.GradBucket,
    codec: TwoPhaseCodec,
    record: StepRecord,
    ratio: torch.Tensor | None,
) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    index = bucket.index()
    result = state.in_flight.result_future(buffer.device)
    run = _TwoPhaseRun(codec, buffer, state.step, record, ratio, state.process_group)
    dense = codec.numel * buffer.element_size()
    wire = codec.wire_bytes
    wires = (wire, allreduce_wire(dense, state.world_size), wire)
    state.steps.end_issue(record, codec.bytes_sent, dense, bucket.is_last(), wires)

    def second() -> None:
        run.issue_second()

        def finish(_done: torch.futures.Future) -> torch.Tensor:
            _wait_all(run.futures)
            began = time.perf_counter()
            outcome = run.decode()
            state.steps.finish_bucket(
                record, began - run.issued, time.perf_counter() - began, outcome
            )
            return buffer

        state.in_flight.then(index, run.futures, finish, buffer.device, *run.works, into=result)

    state.staged.defer(_guarded(result, second))
    return result


def hierarchy_exchange(
    state: HookState,
    bucket: dist.GradBucket,
    codec: HierarchicalCodec,
    record: StepRecord,
    ratio: torch.Tensor | None,
) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    index = bucket.index()
    step = state.step
    groups = codec.groups
    inner = codec.inner
    result = state.in_flight.result_future(buffer.device)
    issued = time.perf_counter()
    with profiled("gradcomp::communicate"):
        buffer.div_(groups.local_size)
        inside, _ = allreduce_async(buffer, groups.inside)
    item = buffer.element_size()
    dense = codec.numel * item
    if isinstance(inner, TwoPhaseCodec):
        sent, between = inner.bytes_sent, inner.wire_bytes
    elif inner is not None:
        sent, between = inner.bytes_sent, codec.inner_wire
    else:
        sent = between = 0
    wires = (between + codec.node_wire(item), allreduce_wire(dense, state.world_size), between)
    handed = sent + dense + codec.stride * item
    state.steps.end_issue(record, handed, dense, bucket.is_last(), wires)
    outcomes: list[int] = []
    kept: list[Any] = [inside]

    def share() -> None:
        """The node's allgather of slices; its callback completes DDP's future."""
        mine, out = codec.staging(buffer)
        with profiled("gradcomp::communicate"):
            gathered, work, fut = allgather_async(mine, groups.inside, groups.local_size, out=out)

        def finish(_done: torch.futures.Future) -> torch.Tensor:
            _done.wait()
            codec.unstage(buffer, gathered)
            outcome = combined_outcome(outcomes) if outcomes else 1
            state.steps.finish_bucket(record, time.perf_counter() - issued, 0.0, outcome)
            return buffer

        state.in_flight.then(index, [fut], finish, buffer.device, work, *kept, into=result)

    def between_nodes() -> Stage | None:
        inside.wait()
        if isinstance(inner, TwoPhaseCodec):
            run = _TwoPhaseRun(inner, buffer, step, record, ratio, groups.across)
            kept.extend(run.works)

            def second() -> Stage:
                run.issue_second()
                kept.extend(run.works[-1:])

                def decode_and_share() -> None:
                    _wait_all(run.futures)
                    outcomes.append(run.decode())
                    share()

                return decode_and_share

            return second
        if inner is None:
            share()
            return None
        started = time.perf_counter()
        with profiled("gradcomp::compress"):
            messages = inner.encode(buffer, step, record.measure, ratio)
        record.compress_seconds += time.perf_counter() - started
        if record.measure:
            record.input_sq += inner.measured[0]
            record.error_sq += inner.measured[1]
        with profiled("gradcomp::communicate"):
            received, futures, works, used, _sent, _wire = issue_channels(
                inner, messages, groups.across, groups.nodes
            )
        kept.extend(works)

        def decode_and_share() -> None:
            _wait_all(futures)
            with profiled("gradcomp::decompress"):
                outcomes.append(inner.decode(buffer, received, step, used))
            share()

        return decode_and_share

    state.staged.defer(_guarded(result, between_nodes))
    return result
