"""What "auto" predicts and chooses: a step's time under a per-bucket plan, from what was
measured (the backward pass's gaps between buckets, each method's encode and decode time on
each bucket, the link), and the per-bucket choice that minimises it.

Pure Python on plain numbers, so that the hook ("auto"), the probe command and the tests share
one model. The model of one step, from the first hook call on:

- the backward pass runs on one thread: bucket i becomes ready ``gap[i]`` after the previous
  hook call returned; the hook then encodes it on the same thread (``encode``), which delays
  every later bucket;
- collectives run one after another on one channel: a bucket's starts when it is encoded and
  the previous one is done, and takes the link's time for its bytes;
- decodes run one after another as their collectives finish.

The step's tail is when the last of these ends. What happens outside it (forward, the part of
backward before the first bucket, the optimizer) does not depend on the plan, so a plan's step
time is the measured step time of the running plan, minus the running plan's predicted tail,
plus the candidate's. That cancels most of what the model leaves out. (When the running
plan's predicted tail is longer than the measured period, as with a ``link=`` slower than the
real one, the outside part is taken as 0.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from gradcomp.cost_model import Link, allgather_wire, allreduce_wire

__all__ = [
    "BucketCost",
    "LinkFit",
    "Plan",
    "StepProfile",
    "channel_load",
    "choose_plan",
    "fit_link",
    "predict_step",
    "uniform_plan",
]

DENSE = "none"  # the spec of "send this bucket as DDP does"


@dataclasses.dataclass(frozen=True)
class LinkFit:
    """The network as the process group's collectives see it: one Link per collective, fitted
    from timed runs (time = message steps x latency + wire bytes / bandwidth)."""

    allreduce: Link
    allgather: Link
    world_size: int

    def seconds(self, collective: str, nbytes: int) -> float:
        if collective == "allreduce":
            return self.allreduce.allreduce(nbytes, self.world_size)
        if collective == "allgather":
            return self.allgather.allgather(nbytes, self.world_size)
        raise ValueError(f"collective must be 'allreduce' or 'allgather', got {collective!r}")

    def to_dict(self) -> dict[str, object]:
        return {
            "world_size": self.world_size,
            "allreduce": {
                "latency_s": self.allreduce.latency,
                "bandwidth_Bps": self.allreduce.bandwidth,
            },
            "allgather": {
                "latency_s": self.allgather.latency,
                "bandwidth_Bps": self.allgather.bandwidth,
            },
        }


def fit_link(samples: Sequence[tuple[int, float]], steps: int, wire_per_byte: float) -> Link:
    """A Link from (message bytes, seconds) samples of one collective: least squares of
    ``seconds = steps * latency + wire_per_byte * bytes / bandwidth``. A fit that comes out
    negative (noise at small sizes) is clamped: latency to 0, bandwidth to the fastest sample."""
    if not samples:
        raise ValueError("fit_link needs at least one (bytes, seconds) sample")
    xs = [wire_per_byte * n for n, _ in samples]
    ys = [t for _, t in samples]
    count = len(xs)
    mean_x, mean_y = sum(xs) / count, sum(ys) / count
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = (
        sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    )
    intercept = mean_y - slope * mean_x
    if slope <= 0.0:
        fastest = max(x / y for x, y in zip(xs, ys, strict=True) if y > 0)
        return Link(latency=0.0, bandwidth=fastest)
    return Link(latency=max(intercept, 0.0) / max(steps, 1), bandwidth=1.0 / slope)


@dataclasses.dataclass(frozen=True)
class BucketCost:
    """One method on one bucket: host seconds to encode (on the backward thread) and to decode
    every rank's payload, and the bytes each collective carries."""

    encode: float
    decode: float
    messages: tuple[tuple[str, int], ...]  # (collective, bytes this rank hands it)

    def communicate(self, link: LinkFit) -> float:
        return sum(link.seconds(collective, nbytes) for collective, nbytes in self.messages)

    @property
    def bytes_sent(self) -> int:
        return sum(nbytes for _, nbytes in self.messages)

    def wire_bytes(self, world_size: int) -> int:
        return sum(
            allreduce_wire(n, world_size) if c == "allreduce" else allgather_wire(n, world_size)
            for c, n in self.messages
        )


@dataclasses.dataclass(frozen=True)
class StepProfile:
    """One step as the hook saw it, buckets in the order they arrived: the compute before each
    bucket (``gaps[0]`` is 0: times count from the first hook call), the step's period (first
    hook call to the next step's first hook call), and how much longer the channel's work
    (collectives and decodes) took inside the step than the link probe and the codec timing
    predict for it (``channel_factor``, channel_load()): the link shares the machine with the
    backward pass, which an idle probe does not see."""

    buckets: tuple[int, ...]
    gaps: tuple[float, ...]
    period: float
    channel_factor: float = 1.0


def step_tail(profile: StepProfile, costs: Sequence[BucketCost], link: LinkFit) -> float:
    """Seconds from the first hook call until the backward thread, the channel and the decodes
    are all done, under the model in the module docstring."""
    thread = channel = decoded = 0.0
    load = profile.channel_factor
    for gap, cost in zip(profile.gaps, costs, strict=True):
        thread += gap + cost.encode
        channel = max(channel, thread) + load * cost.communicate(link)
        decoded = max(decoded, channel) + load * cost.decode
    return max(thread, decoded)


# channel_factor's bounds: a measurement outside them is noise, not the link.
CHANNEL_FACTOR_RANGE = (0.5, 20.0)


def channel_load(
    issued: Sequence[float], completed: Sequence[float], costs: Sequence[BucketCost], link: LinkFit
) -> float:
    """How much longer the buckets' collectives and decodes took in a step than the model
    says: each bucket's time on the channel (from when it was issued, or when the previous one
    completed if later, to its completion) summed, over the same sum predicted. Clamped to
    CHANNEL_FACTOR_RANGE; 1 when the model predicts no time at all (one rank)."""
    busy = 0.0
    previous = -float("inf")
    for start, end in zip(issued, completed, strict=True):
        busy += max(end - max(start, previous), 0.0)
        previous = end
    model = sum(c.communicate(link) + c.decode for c in costs)
    if model <= 0.0:
        return 1.0
    low, high = CHANNEL_FACTOR_RANGE
    return min(max(busy / model, low), high)


@dataclasses.dataclass
class Plan:
    """A method per bucket (by bucket index), with what the model predicts for it."""

    methods: dict[int, str]
    predicted_step: float  # seconds
    predicted_compute: float  # the step with communication and codecs taking no time
    bytes_sent: int
    wire_bytes: int

    @property
    def predicted_exposed(self) -> float:
        return self.predicted_step - self.predicted_compute

    def to_dict(self) -> dict[str, object]:
        return {
            "methods": {str(k): v for k, v in sorted(self.methods.items())},
            "predicted_step_ms": 1e3 * self.predicted_step,
            "predicted_exposed_ms": 1e3 * self.predicted_exposed,
            "bytes_sent": self.bytes_sent,
            "wire_bytes": self.wire_bytes,
        }


def predict_step(
    profile: StepProfile,
    costs: Mapping[int, Mapping[str, BucketCost]],
    link: LinkFit,
    methods: Mapping[int, str],
    running: Mapping[int, str],
) -> Plan:
    """The predicted step of ``methods`` (spec per bucket), from a profile measured while
    ``running`` ran."""
    chosen = [costs[b][methods[b]] for b in profile.buckets]
    # Outside the tail. Below 0 only when the link is not the one the period was measured on
    # (a link= given by hand): then the tail is all the model knows.
    base = max(
        profile.period - step_tail(profile, [costs[b][running[b]] for b in profile.buckets], link),
        0.0,
    )
    free = [BucketCost(0.0, 0.0, ()) for _ in profile.buckets]
    return Plan(
        methods=dict(methods),
        predicted_step=base + step_tail(profile, chosen, link),
        predicted_compute=base + step_tail(profile, free, link),
        bytes_sent=sum(c.bytes_sent for c in chosen),
        wire_bytes=sum(c.wire_bytes(link.world_size) for c in chosen),
    )


def uniform_plan(profile: StepProfile, method: str) -> dict[int, str]:
    return {b: method for b in profile.buckets}


def choose_plan(
    profile: StepProfile,
    costs: Mapping[int, Mapping[str, BucketCost]],
    link: LinkFit,
    running: Mapping[int, str],
    *,
    min_gain: float = 0.03,
    passes: int = 3,
) -> Plan:
    """The per-bucket methods with the least predicted step time: coordinate descent from
    "every bucket dense", each bucket trying every method it was measured with while the others
    stay put. A plan that is not at least ``min_gain`` (a fraction of the step) faster than
    dense everywhere is not worth the residuals and the model's error: then dense it is."""
    dense = uniform_plan(profile, DENSE)
    best = predict_step(profile, costs, link, dense, running)
    current = dict(dense)
    for _ in range(passes):
        improved = False
        for bucket in profile.buckets:
            for method in sorted(costs[bucket]):
                if method == current[bucket]:
                    continue
                trial = {**current, bucket: method}
                plan = predict_step(profile, costs, link, trial, running)
                if plan.predicted_step < best.predicted_step - 1e-9:
                    best, improved = plan, True
            current = dict(best.methods)  # the bucket's best, the others as they were
        if not improved:
            break
    dense_plan = predict_step(profile, costs, link, dense, running)
    if best.predicted_step > dense_plan.predicted_step * (1.0 - min_gain):
        return dense_plan
    return best
