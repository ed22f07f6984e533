"""The first hook call checks that every rank registered the same hook on the same model.

Ranks that disagree (another compressor, ratio or seed on one rank, a different model) would
otherwise exchange payloads of different sizes, which hangs or fails far from the cause, or,
worse, decode each other's payloads wrongly without any error. Each rank hashes what must
match into 8 bytes and the ranks allgather the hashes once; only when they differ do they
exchange the full descriptions, so that every rank raises the same message naming the
difference.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["RankMismatchError", "check_ranks_agree", "fingerprint"]

_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class RankMismatchError(RuntimeError):
    """Raised identically on every rank when the ranks' hook configurations differ."""


def fingerprint(description: dict[str, Any]) -> int:
    """A stable signed 64-bit hash of a JSON-serializable description."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def check_ranks_agree(
    description: dict[str, Any], group: dist.ProcessGroup, device: torch.device
) -> None:
    """Raises RankMismatchError on every rank unless every rank's description is the same.
    Blocking: one 8-byte allgather (and an object allgather when they differ)."""
    world = dist.get_world_size(group)
    mine = torch.tensor([fingerprint(description)], dtype=torch.int64, device=device)
    every = mine.new_empty(world)
    _all_gather_single(every, mine, group=group)
    if bool((every == every[0]).all()):
        return
    descriptions: list[Any] = [None] * world
    dist.all_gather_object(descriptions, description, group=group)
    raise RankMismatchError(_message(descriptions))


def _message(descriptions: list[dict[str, Any]]) -> str:
    keys = sorted({k for d in descriptions for k in d})
    lines = []
    for key in keys:
        values: list[Any] = [d.get(key) for d in descriptions]
        if all(v == values[0] for v in values):
            continue
        if key == "parameters":
            shown = ", ".join(
                f"rank {r}: {len(v)} parameters ({_param_summary(v, values[0])})"
                for r, v in enumerate(values)
            )
        else:
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        lines.append(f"  {key}: {shown}")
    return (
        "gradcomp: the ranks registered different hooks; every rank must call "
        "gradcomp.register with the same compressor, options and model. Differences:\n"
        + "\n".join(lines)
    )


def _param_summary(params: list[list[Any]], reference: list[list[Any]]) -> str:
    """The first parameter that differs from rank 0's list."""
    for i, (mine, theirs) in enumerate(zip(params, reference, strict=False)):
        if mine != theirs:
            return f"#{i} is {mine[0]} with {mine[1]} elements"
    return "same as rank 0" if len(params) == len(reference) else "a prefix of rank 0's"
