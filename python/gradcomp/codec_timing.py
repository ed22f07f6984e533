"""What each candidate method costs on a real bucket: encode and decode time, timed on a copy
of the bucket's gradients with the codec the hook would build, and the bytes of each message
it would send. Error feedback runs too (adding and keeping the residual is a pass over the
bucket, as costly as a quantizer's encode), into scratch residuals dropped afterwards.

Decode is timed on every rank's payload: this rank's own, P times over, which is what an
allgather brings back.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from gradcomp import _C
from gradcomp.config import resolve_config
from gradcomp.link_probe import synchronize
from gradcomp.planner import DENSE, BucketCost
from gradcomp.plans import BucketLike, BucketPlans

__all__ = ["dense_cost", "time_bucket_methods"]


def dense_cost(bucket: BucketLike) -> BucketCost:
    """DDP's own way: the bucket allreduced as it is (the division by P is not worth timing)."""
    buffer = bucket.buffer()
    return BucketCost(0.0, 0.0, (("allreduce", buffer.numel() * buffer.element_size()),))


def time_bucket_methods(
    bucket: BucketLike,
    methods: Sequence[str],
    param_names: dict[int, str],
    *,
    min_numel: int,
    seed: int,
    rank: int,
    world_size: int,
    error_feedback: bool = True,
    repeats: int = 2,
) -> dict[str, BucketCost]:
    """Every method's cost on ``bucket`` (spec -> BucketCost); "none" is the dense allreduce."""
    costs: dict[str, BucketCost] = {}
    buffer = bucket.buffer()
    device = buffer.device
    for spec in methods:
        if spec == DENSE:
            costs[spec] = dense_cost(bucket)
            continue
        plans = BucketPlans(
            resolve_config(spec, {}),
            {},
            param_names,
            min_numel=min_numel,
            seed=seed,
            rank=rank,
            world_size=world_size,
            residuals=_C.ErrorFeedback() if error_feedback else None,
            warm_start=_C.ErrorFeedback(),
        )
        codec = plans.codec_for(bucket)
        if codec is None or codec.all_dense:
            costs[spec] = dense_cost(bucket)
            continue
        encodes, decodes = [], []
        messages: list[torch.Tensor] = []
        for _ in range(repeats + 1):  # the first run allocates: not counted
            work = buffer.clone()
            synchronize(device)
            began = time.perf_counter()
            messages = codec.encode(work, 0, False, None)
            synchronize(device)
            encoded = time.perf_counter()
            received, used = [], []
            for (collective, _dtype, _numel, variable), message in zip(
                codec.channels, messages, strict=True
            ):
                if collective == "allreduce":
                    received.append(message.clone())
                else:
                    received.append(message.repeat(world_size))
                    if variable:
                        used = [message.numel()] * world_size
            synchronize(device)
            decoding = time.perf_counter()
            codec.decode(work, received, 0, used)
            synchronize(device)
            encodes.append(encoded - began)
            decodes.append(time.perf_counter() - decoding)
        sent: list[tuple[str, int]] = []
        for (collective, _dtype, _numel, variable), message in zip(
            codec.channels, messages, strict=True
        ):
            if variable:
                sent.append(("allgather", 8))  # the lengths, exchanged first
            sent.append((collective, message.numel() * message.element_size()))
        costs[spec] = BucketCost(
            statistics.median(encodes[1:]), statistics.median(decodes[1:]), tuple(sent)
        )
    return costs
