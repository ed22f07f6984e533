"""collective="two_phase": a compressed allreduce whose bytes per rank do not grow with the
number of ranks (the reduce-scatter-then-allgather shape of DeepSpeed's compressed allreduce),
for the methods whose payloads are gathered rather than summed.

Per bucket, with P ranks in the group:

1. the entries whose payloads an allgather would carry are cut into P chunks: chunk j holds
   run j of every parameter (bucket_split.py); every rank compresses each chunk with its own
   error feedback, and one all_to_all sends chunk j to rank j;
2. rank j decodes and averages the P payloads of its chunk, compresses the average again with
   a second residual of its own (named ``<entry>/reduced``, beside the first-stage residuals,
   so checkpoints and loss-scale changes cover both), and one allgather brings every rank
   every re-compressed chunk, which each rank decodes into the bucket.

Entries that travel summed (dense tensors, fp16/bf16, Random-K) keep their allreduce, and
gathered ones whose collective= choice is "allgather" (or whose payload size varies,
threshold) their allgather, in a codec of their own (``rest``). Each rank sends about
(P-1)/P of one payload in phase 1 and (P-1)/P of one in phase 2.

This module builds the codecs and sizes the messages; staged_exchange.py runs the phases.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

import torch

from gradcomp import _C
from gradcomp.bucket_split import base_name, split_entries
from gradcomp.comm import channels_wire
from gradcomp.cost_model import Link, allgather_wire, alltoall_wire, choose_collective
from gradcomp.local_update import Entry

__all__ = [
    "COLLECTIVES",
    "Collective",
    "chunked_entries",
    "collective_of",
    "REDUCED_SUFFIX",
    "ByteLayout",
    "TwoPhaseCodec",
    "combined_outcome",
    "gathered_entries",
]

# The values of the hook's collective= option (checks.py refuses others).
COLLECTIVES = ("allgather", "two_phase", "auto")
# Names the second-stage residual of a (sub-)entry: "<entry>/reduced".
REDUCED_SUFFIX = "/reduced"
# The second stage draws its randomness (QSGD's rounding) apart from the first.
_REDUCED_SEED = 0x9E3779B97F4A7C15

_ALIGN = 8  # bytes: every channel starts 8-byte aligned in a packed message


def _align(nbytes: int) -> int:
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN


def gathered_entries(entries: list[Entry], methods: list[Any]) -> list[bool]:
    """Which entries an allgather would carry: compressed by a fixed-size method whose
    payloads are not summable (the Top-K family, sign, QSGD, int8)."""
    return [
        bool(e[3]) and methods[e[5]].collective == "allgather" and not methods[e[5]].variable_size
        for e in entries
    ]


Collective = str | Mapping[str, str]


def collective_of(collective: Collective, name: str) -> str:
    """The collective= choice of a parameter (or a part of one): the option itself, or the
    first fnmatch pattern of a mapping that matches it ("allgather" when none does)."""
    if isinstance(collective, str):
        return collective
    parameter = base_name(name)
    for pattern, choice in collective.items():
        if fnmatch.fnmatchcase(parameter, pattern):
            return choice
    return "allgather"


def chunked_entries(
    collective: Collective,
    methods: list[Any],
    entries: list[Entry],
    rank: int,
    world_size: int,
    link: Link,
    reduced_methods: list[Any] | None = None,
) -> list[bool] | None:
    """Which entries of a bucket travel in two phases (None: none do). An entry must be
    gathered (gathered_entries) and choose "two_phase", or "auto" where the cost model
    predicts two phases faster for the bucket's "auto" entries; sizing them takes codecs that
    hold no residuals (so that sizing takes no residual slot)."""
    if world_size < 2:
        return None
    gathered = gathered_entries(entries, methods)
    wants = [collective_of(collective, e[0]) for e in entries]
    fixed = [g and w == "two_phase" for g, w in zip(gathered, wants, strict=True)]
    auto = [g and w == "auto" for g, w in zip(gathered, wants, strict=True)]
    if any(auto):
        sizing = TwoPhaseCodec(methods, entries, None, 0, rank, world_size, reduced_methods, auto)
        choice = choose_collective(sizing.payload_bytes, sizing.reduced_stride, world_size, link)
        if choice == "two_phase":
            fixed = [f or a for f, a in zip(fixed, auto, strict=True)]
    return fixed if any(fixed) else None


class ByteLayout:
    """A codec's channels packed into one byte message, each 8-byte aligned: where channel c
    starts and how long it is, so that P such messages back to back can be read per channel."""

    def __init__(self, codec: Any) -> None:
        self.channels: list[tuple[int, int, torch.dtype, int]] = []  # offset, bytes, dtype, numel
        offset = 0
        for _collective, dtype, numel, _variable in codec.channels:
            nbytes = numel * torch.empty(0, dtype=dtype).element_size()
            self.channels.append((offset, nbytes, dtype, numel))
            offset = _align(offset + nbytes)
        self.nbytes = offset

    def pack(self, messages: list[torch.Tensor], out: torch.Tensor) -> None:
        """Writes the channel messages into ``out`` (``nbytes`` uint8), padding zeroed."""
        for (offset, nbytes, _dtype, _numel), message in zip(self.channels, messages, strict=True):
            out[offset : offset + nbytes].copy_(message.reshape(-1).view(torch.uint8))
            end = _align(offset + nbytes)
            if end > offset + nbytes:
                out[offset + nbytes : end].zero_()

    def unpack(self, received: torch.Tensor, count: int, stride: int) -> list[torch.Tensor]:
        """Channel c of ``count`` messages that start every ``stride`` bytes of ``received``,
        back to back per channel (what BucketCodec.decode reads from an allgather)."""
        rows = received[: count * stride].view(count, stride)
        out = []
        for offset, nbytes, dtype, _numel in self.channels:
            part = rows[:, offset : offset + nbytes]
            out.append(part.contiguous().view(-1).view(dtype))
        return out


class TwoPhaseCodec:
    """The two-phase codec of one bucket layout: the first-stage codec of every chunk (each rank
    encodes all of them), the second-stage codec of every chunk (the owner encodes its own,
    every rank decodes all), and a BucketCodec for the entries that are allreduced."""

    def __init__(
        self,
        methods: list[Any],
        entries: list[Entry],
        residuals: _C.ErrorFeedback | None,
        seed: int,
        rank: int,
        world_size: int,
        reduced_methods: list[Any] | None = None,
        chunk: list[bool] | None = None,
    ) -> None:
        """``reduced_methods``: what the owners re-compress with (default ``methods``; the
        hook's ``reduced_density_factor`` makes the sparsifiers among them denser). ``chunk``:
        which entries travel in two phases (default: every gathered one); they must be
        gathered. The others travel in ``rest``, a BucketCodec of their own collectives."""
        gathered = gathered_entries(entries, methods)
        chunk = gathered if chunk is None else chunk
        if any(c and not g for c, g in zip(chunk, gathered, strict=True)):
            raise ValueError("two_phase can only chunk entries whose payloads are gathered")
        rest = [e for e, c in zip(entries, chunk, strict=True) if not c]
        chunked = [e for e, c in zip(entries, chunk, strict=True) if c]
        if not chunked:
            raise ValueError("two_phase needs at least one entry whose payload is gathered")
        self.rank, self.world_size = rank, world_size
        self.rest = (
            _C.BucketCodec(methods, rest, residuals, seed, rank, world_size) if rest else None
        )
        parts = split_entries(chunked, world_size)

        def codec(
            part: list[Entry], feedback: Any, seed: int, rank: int, world: int, how: list[Any]
        ) -> Any:
            return _C.BucketCodec(how, part, feedback, seed, rank, world) if part else None

        reduced_methods = reduced_methods or methods
        self.chunks = [codec(p, residuals, seed, rank, world_size, methods) for p in parts]
        own = parts[rank]
        reduced_names = [(e[0] + REDUCED_SUFFIX, *e[1:]) for e in own]
        self.reduced = [
            codec(
                reduced_names if j == rank else p,
                residuals if j == rank else None,
                seed ^ _REDUCED_SEED,
                0,
                1,
                reduced_methods,
            )
            for j, p in enumerate(parts)
        ]
        self.chunk_layouts = [ByteLayout(c) if c is not None else None for c in self.chunks]
        self.reduced_layouts = [ByteLayout(c) if c is not None else None for c in self.reduced]
        self.splits = [layout.nbytes if layout else 0 for layout in self.chunk_layouts]
        self.reduced_stride = max(layout.nbytes if layout else 0 for layout in self.reduced_layouts)
        self.numel = sum(e[2] for e in entries)
        self.wire_bytes = self._wire_bytes()
        # Per device: the packed chunks to send, where this rank's chunks arrive, its packed
        # re-compressed chunk, and every rank's re-compressed chunk.
        self._buffers: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        self.measured = (0.0, 0.0)

    # -- what it sends ----------------------------------------------------------------------

    @property
    def bytes_sent(self) -> int:
        """What this rank hands to its collectives per step."""
        rest = self.rest.bytes_sent if self.rest is not None else 0
        return rest + sum(self.splits) + self.reduced_stride

    def _wire_bytes(self) -> int:
        """What this rank puts on the wire per step (cost_model's algorithms); fixed for the
        layout, so computed once (``wire_bytes``)."""
        rest = channels_wire(self.rest, self.world_size) if self.rest is not None else 0
        return (
            rest
            + alltoall_wire(sum(self.splits), self.splits[self.rank])
            + allgather_wire(self.reduced_stride, self.world_size)
        )

    @property
    def payload_bytes(self) -> int:
        """The first-stage payload of the whole bucket, and one re-compressed chunk."""
        return sum(self.splits)

    def _buffers_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        buffers = self._buffers.get(device)
        if buffers is None:
            sizes = (
                sum(self.splits),
                self.world_size * self.splits[self.rank],
                self.reduced_stride,
                self.world_size * self.reduced_stride,
            )
            buffers = tuple(torch.empty(n, dtype=torch.uint8, device=device) for n in sizes)
            self._buffers[device] = buffers
        return buffers

    # -- the phases ------------------------------------------------------------------------

    def encode(
        self, bucket: torch.Tensor, step: int, measure: bool, ratio: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Phase 1's messages: the rest codec's (one per channel), the packed chunks to send
        (chunk j at offset sum(splits[:j])) and where the P payloads of this rank's chunk
        arrive."""
        send, receive, _, _ = self._buffers_on(bucket.device)
        input_sq = error_sq = 0.0
        rest = []
        if self.rest is not None:
            rest = self.rest.encode(bucket, step, measure, ratio)
            if measure:
                input_sq, error_sq = self.rest.measured
        offset = 0
        for codec, layout in zip(self.chunks, self.chunk_layouts, strict=True):
            if codec is None or layout is None:
                continue
            messages = codec.encode(bucket, step, measure, ratio)
            layout.pack(messages, send[offset : offset + layout.nbytes])
            offset += layout.nbytes
            if measure:
                chunk_input, chunk_error = codec.measured
                input_sq += chunk_input
                error_sq += chunk_error
        self.measured = (input_sq, error_sq)
        return rest, send, receive

    def reduce_own(
        self, bucket: torch.Tensor, received: torch.Tensor, step: int, ratio: torch.Tensor | None
    ) -> torch.Tensor:
        """Phase 2's message: this rank's chunk averaged over the P payloads received, then
        compressed again with its second-stage residual, packed at the common stride."""
        out = self._buffers_on(bucket.device)[2]
        codec, layout = self.chunks[self.rank], self.chunk_layouts[self.rank]
        if codec is None or layout is None:
            return out.zero_()  # an empty chunk: fewer chunked elements than ranks
        codec.decode(bucket, layout.unpack(received, self.world_size, layout.nbytes), step)
        reduced, reduced_layout = self.reduced[self.rank], self.reduced_layouts[self.rank]
        assert reduced is not None and reduced_layout is not None
        messages = reduced.encode(bucket, step, False, ratio)
        reduced_layout.pack(messages, out[: reduced_layout.nbytes])
        out[reduced_layout.nbytes :].zero_()
        return out

    def gather_buffer(self, device: torch.device) -> torch.Tensor:
        """Where phase 2's allgather lands (world_size * reduced_stride bytes)."""
        return self._buffers_on(device)[3]

    def decode(
        self,
        bucket: torch.Tensor,
        rest: list[torch.Tensor],
        gathered: torch.Tensor,
        step: int,
        used: list[int] | None = None,
    ) -> int:
        """Writes every rank's re-compressed chunk and the rest codec's entries (``rest``: what
        its collectives returned; ``used``: every rank's length of a variable channel) into the
        bucket;
        0 when some rank's gradient was not finite (those entries are then NaN), -1 when the
        flags stayed on the device (CUDA), else 1."""
        outcomes = []
        for j, (codec, layout) in enumerate(zip(self.reduced, self.reduced_layouts, strict=True)):
            if codec is None or layout is None:
                continue
            start = j * self.reduced_stride
            received = layout.unpack(gathered[start : start + layout.nbytes], 1, layout.nbytes)
            outcomes.append(codec.decode(bucket, received, step))
        if self.rest is not None:
            outcomes.append(self.rest.decode(bucket, rest, step, used or []))
        return combined_outcome(outcomes)


def combined_outcome(outcomes: list[int]) -> int:
    """One bucket's decode outcome from its codecs': 0 if any saw a non-finite rank, -1 if any
    left the flags on the device unread, else 1."""
    if 0 in outcomes:
        return 0
    return -1 if -1 in outcomes else 1
