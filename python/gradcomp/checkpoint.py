"""HookState's checkpoints: what state_dict() holds, and how load_state_dict() reads it back.

Version 3: shared values (compressor spec, overrides, seed, world size, step) at the top, and
each rank's own part (residuals, PowerSGD's warm-start Q, momentum correction's velocities,
EF21's estimates, the loss scale of the residuals, the counters) serialized with torch.save into
bytes under the key ``rank<r>``. The rank-unique key is what makes
torch.distributed.checkpoint work: it keeps one copy of keys that are equal on every rank.
Versions 1 and 2 (one flat per-rank layout) still load.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from gradcomp.hook import HookState

__all__ = ["STATE_VERSION", "gathered_state_dict", "load_state_dict", "state_dict"]

# 2: adds PowerSGD's warm-start matrices. 3: per-rank parts under rank-unique keys (so that
# torch.distributed.checkpoint keeps every rank's), loss scale of the residuals, overrides.
STATE_VERSION = 3


def state_dict(state: HookState) -> dict[str, Any]:
    part = {
        "residuals": state._residuals.state_dict(),
        "warm_start": state._warm_start.state_dict(),
        "velocity": state.local_update.velocity.state_dict(),
        "estimates": state.estimates.local.state_dict() if state.estimates else {},
        "shared_estimates": state.estimates.shared.state_dict() if state.estimates else {},
        "residual_scale": state.loss_scale.value(),
        "counters": state.telemetry.state(),
    }
    buffer = io.BytesIO()
    torch.save(part, buffer)
    return {
        "version": STATE_VERSION,
        "compressor": state.compressor.spec,
        "overrides": {pattern: c.spec for pattern, c in state.overrides.items()},
        "seed": state.seed,
        "world_size": state.world_size,
        "step": state.step,
        "ranks": {f"rank{state.rank}": buffer.getvalue()},
    }


def gathered_state_dict(state: HookState) -> dict[str, Any]:
    mine = state_dict(state)
    parts: list[Any] = [None] * state.world_size
    dist.all_gather_object(parts, mine["ranks"], group=state.process_group)
    return {**mine, "ranks": {key: blob for part in parts for key, blob in part.items()}}


def load_state_dict(state: HookState, saved: dict[str, Any]) -> None:
    version = saved.get("version")
    if version not in (1, 2, STATE_VERSION):
        raise ValueError(
            f"unsupported gradcomp state version {version!r}; "
            f"this gradcomp reads versions 1 to {STATE_VERSION}"
        )
    if saved["compressor"] != state.compressor.spec:
        raise ValueError(
            f"checkpoint was saved with compressor {saved['compressor']!r} but "
            f"this hook uses {state.compressor.spec!r}"
        )
    part = _own_part(state, saved, version)
    state._residuals.reset()
    state._warm_start.reset()
    state.local_update.velocity.reset()
    if state.estimates is not None:
        state.estimates.reset()
    if part is not None:
        # Q is the same on every rank and does not depend on the world size.
        state._warm_start.load_state_dict(_known(state, part["warm_start"], "warm-start Q"))
    if saved["world_size"] != state.world_size:
        warnings.warn(
            f"gradcomp: checkpoint world size {saved['world_size']} != current "
            f"{state.world_size}; error-feedback residuals reset to zero",
            stacklevel=3,
        )
    elif part is not None:
        state._residuals.load_state_dict(_known(state, part["residuals"], "residual"))
        # Momentum correction's velocities (absent before 0.4: no momentum then).
        velocity = part.get("velocity", {})
        state.local_update.velocity.load_state_dict(_known(state, velocity, "velocity"))
        if state.estimates is not None:  # EF21's estimates (absent before 0.4)
            local, shared = part.get("estimates", {}), part.get("shared_estimates", {})
            state.estimates.local.load_state_dict(_known(state, local, "estimate"))
            state.estimates.shared.load_state_dict(_known(state, shared, "shared estimate"))
    state.loss_scale.load(part["residual_scale"] if part is not None else None)
    state.steps.restart_at(int(saved["step"]))
    if version != STATE_VERSION:
        state.telemetry.load({"totals": dict(saved["counters"])})
    elif part is not None and part["counters"] is not None:
        state.telemetry.load(part["counters"])


def _own_part(state: HookState, saved: dict[str, Any], version: int) -> dict[str, Any] | None:
    """This rank's part (or, from another world size, some rank's shared warm start)."""
    if version != STATE_VERSION:  # the flat per-rank layout of versions 1 and 2
        return {
            "residuals": saved["residuals"],
            "warm_start": saved.get("warm_start", {}),
            "residual_scale": None,
            "counters": None,
        }
    saved_overrides = dict(saved.get("overrides", {}))
    mine = {p: c.spec for p, c in state.overrides.items()}
    if saved_overrides != mine:
        warnings.warn(
            f"gradcomp: checkpoint overrides {saved_overrides} differ from this hook's {mine}",
            stacklevel=4,
        )
    if saved.get("seed", state.seed) != state.seed:
        warnings.warn(
            f"gradcomp: checkpoint seed {saved['seed']} != this hook's {state.seed}; "
            "stochastic compressors will draw differently than the saved run",
            stacklevel=4,
        )
    blobs = saved["ranks"]
    own = blobs.get(f"rank{state.rank}")
    blob = own if own else next((b for b in blobs.values() if b), None)
    part = torch.load(io.BytesIO(blob), weights_only=True) if blob else None
    if part is not None and not own:
        part["residuals"] = {}  # another rank's: only its warm start is shared
        part["velocity"] = {}
        part["estimates"] = {}
        part["shared_estimates"] = {}
        part["counters"] = None
    return part


def _known(
    state: HookState, tensors: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """The entries whose names are parameters of this model (names saved before gradcomp
    stripped torch.compile's prefix are mapped); warns about the rest, which are dropped."""
    from gradcomp.bucket_split import base_name
    from gradcomp.hook import canonical_name

    known = set(state.parameter_names)
    kept = {canonical_name(name): t for name, t in tensors.items()}
    # Parts of parameters (two_phase, hierarchy) are named "<parameter>[start:stop]...".
    unknown = sorted(name for name in kept if base_name(name) not in known)
    if unknown:
        warnings.warn(
            f"gradcomp: checkpoint has {what}s for {len(unknown)} name(s) that are not "
            f"parameters of this model, dropped: {', '.join(unknown[:8])}",
            stacklevel=4,
        )
    return {name: t for name, t in kept.items() if base_name(name) in known}
