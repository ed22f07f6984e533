"""``gradcomp.register(ddp, "auto")``: measure, choose a method per bucket, and step aside
where compression does not pay.

The hook runs a HookState underneath (the running plan); this module decides what that state
is. A plan's life:

1. ``warm_steps`` steps dense, so DDP has rebuilt its buckets and the process warmed up;
2. ``measure_steps`` steps timed as they run: when each bucket reaches the hook, how long the
   hook holds the backward thread, when its exchange completes, the step's period;
3. one step in which each bucket's hook call also times every candidate method on a copy of
   the bucket (codec_timing.py);
4. at the next step's first hook call: the link is probed (link_probe.py, unless ``link=`` is
   given), rank 0 chooses (planner.py) and broadcasts the plan, and every rank switches to a
   HookState whose per-parameter overrides are the plan (the first-call fingerprint check then
   covers the plan).

Then every ``check_every`` steps rank 0 compares the measured period with the prediction, and
every rank learns (one broadcast of one number) whether to re-plan: at ``replan_every`` steps,
or when the period drifted by more than ``drift`` (at most once between two scheduled
re-plans; never with ``link=``, whose prediction is not of the link the steps run on).
Re-planning measures under the running plan (the model subtracts the running plan's own
predicted cost). Whatever rank 0 decides, or fails to, reaches every rank through the
broadcast, so no rank is left waiting in a collective.

Error feedback across a change: residuals are kept by parameter name, in gradient units, so a
parameter that stays compressed (whatever the method) keeps its residual. One that becomes
dense has its residual dropped, counted in ``stats()["auto"]["residuals_reset"]`` and logged;
with a GradScaler every residual is dropped at a change (they are in the old state's loss-scale
units).

No ``from __future__ import annotations``: DDP checks the hook's annotations at runtime.
"""

import dataclasses
import functools
import inspect
import logging
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gradcomp.checks import check_int
from gradcomp.codec_timing import time_bucket_methods
from gradcomp.config import resolve_config
from gradcomp.cost_model import Link
from gradcomp.hook import HookState, canonical_name, comm_hook
from gradcomp.link_probe import probe_link
from gradcomp.planner import (
    DENSE,
    BucketCost,
    LinkFit,
    Plan,
    StepProfile,
    channel_load,
    choose_plan,
    predict_step,
    uniform_plan,
)
from gradcomp.schedule import density_of, with_density
from gradcomp.telemetry import open_writer

__all__ = ["AutoState", "DEFAULT_METHODS", "auto_hook", "candidate_methods", "register_auto"]

_log = logging.getLogger("gradcomp")

# The methods "auto" may choose by default: the cheap quantizers and the sparsifiers that
# paid in docs/results/ddp_network_2026-11-27.md. PowerSGD is left out: its two rounds per
# bucket do not fit the one-collective model, and its residuals are not per value.
DEFAULT_METHODS = ("fp16", "int8", "sign", "topk_approx", "topk")
# Densities a sparsifier named without a ratio is tried at (those below min_ratio dropped).
SPARSIFIER_DENSITIES = (0.1, 0.03, 0.01)
# The counters that add up across the HookStates of successive plans.
_ADDITIVE = (
    "bytes_sent",
    "bytes_dense",
    "wire_bytes",
    "wire_bytes_dense",
    "wire_bytes_between_nodes",
    "compress_seconds",
    "communicate_seconds",
    "decompress_seconds",
    "nonfinite_steps",
)


def candidate_methods(methods: Sequence[str], min_ratio: float) -> list[str]:
    """The specs "auto" times on each bucket: "none", and each method; a sparsifier named
    without options at each of SPARSIFIER_DENSITIES at or above ``min_ratio`` (or at
    ``min_ratio`` when none is)."""
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise TypeError(f"methods must be a list of compressor specs, got {methods!r}")
    if not (0.0 < min_ratio <= 1.0):
        raise ValueError(f"min_ratio must be in (0, 1], got {min_ratio}")
    specs = [DENSE]
    for method in methods:
        config = resolve_config(method, {})
        if config.build().collective == "lowrank":
            raise ValueError(
                f"auto cannot use {method!r}: PowerSGD's two rounds per bucket are outside its "
                "cost model; register(ddp, 'powersgd') directly"
            )
        density = density_of(config)
        if density is None:
            candidates = [config.spec]
        elif ":" in method:  # the user gave the options: take them as they are
            if density < min_ratio:
                raise ValueError(
                    f"auto method {method!r} has density {density}, below min_ratio={min_ratio}"
                )
            candidates = [config.spec]
        else:
            densities = [d for d in SPARSIFIER_DENSITIES if d >= min_ratio] or [min_ratio]
            candidates = [with_density(config, d).spec for d in densities]
        specs += [c for c in candidates if c not in specs]
    return specs


def _pattern(name: str) -> str:
    """An fnmatch pattern that matches exactly ``name``."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class AutoState:
    """The state of the "auto" hook: the running HookState, what was measured, the plan."""

    def __init__(
        self,
        model: DistributedDataParallel,
        *,
        methods: Sequence[str] = DEFAULT_METHODS,
        min_ratio: float = 0.01,
        replan_every: int = 1000,
        check_every: int = 50,
        drift: float = 0.25,
        warm_steps: int = 3,
        measure_steps: int = 2,
        min_gain: float = 0.03,
        link: Link | None = None,
        log_every: int = 0,
        tensorboard: Any = None,
        error_feedback: bool = True,
        min_numel: int = 1024,
        process_group: dist.ProcessGroup | None = None,
        seed: int = 0,
        grad_scaler: Any = None,
    ) -> None:
        for name, value in (("min_ratio", min_ratio), ("drift", drift), ("min_gain", min_gain)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
        check_int("replan_every", replan_every, 0, 2**62)
        check_int("check_every", check_every, 1, 2**62)
        check_int("warm_steps", warm_steps, 1, 2**62)
        check_int("measure_steps", measure_steps, 2, 1000)
        if not (drift >= 0.0 and math.isfinite(drift)):
            raise ValueError(f"drift must be >= 0 (0: never re-plan on drift), got {drift}")
        if not (0.0 <= min_gain < 1.0):
            raise ValueError(f"min_gain must be in [0, 1), got {min_gain}")
        if link is not None and not isinstance(link, Link):
            raise TypeError(f"link must be a gradcomp.Link or None, got {type(link).__name__}")
        self.candidates = candidate_methods(methods, min_ratio)
        self.model = model
        self._names = {id(p): canonical_name(n) for n, p in model.module.named_parameters()}
        self._device = next(model.module.parameters()).device
        self.replan_every = replan_every
        self.check_every = check_every
        self.drift = drift
        self.warm_steps = warm_steps
        self.measure_steps = measure_steps
        self.min_gain = min_gain
        self.fixed_link = link
        self._options: dict[str, Any] = {
            "error_feedback": error_feedback,
            "min_numel": min_numel,
            "process_group": process_group,
            "seed": seed,
            "grad_scaler": grad_scaler,
        }
        self._log_every = log_every
        # One writer for every plan's HookState (rank 0 only).
        if tensorboard is not None and log_every == 0:
            raise ValueError("tensorboard= writes every log_every steps: set log_every >= 1")
        rank = dist.get_rank(process_group)
        self._writer = open_writer(tensorboard) if tensorboard is not None and rank == 0 else None
        self.current = self._state({})
        self.rank = self.current.rank
        self.world_size = self.current.world_size
        self.overrides: dict[str, str] = {}  # the plan, per parameter (exact-name patterns)
        self._compressed: set[str] = set()  # the names of the parameters the plan compresses
        self.plan: Plan | None = None
        self.link: LinkFit | None = None
        self.link_samples: list[dict[str, object]] = []
        self.profile: StepProfile | None = None
        self.running_at_plan: dict[int, str] = {}  # what ran while the plan was measured
        self.costs: dict[int, dict[str, BucketCost]] = {}
        self.replans = 0
        self.residuals_reset = 0
        self.history: list[dict[str, Any]] = []
        self._totals_before: dict[str, float] = dict.fromkeys(_ADDITIVE, 0)
        self._step = 0  # steps begun under "auto"
        self._measure_from = warm_steps
        self._planned_at: int | None = None
        self._drift_replanned = False  # at most one drift re-plan per replan_every window
        self._running: dict[int, str] = {}  # method per bucket of the running plan
        self._bucket_names: dict[int, list[tuple[str, int]]] = {}
        self._step_starts: list[tuple[int, float]] = []
        # Per measured step, per bucket: [index, gap before it, hook returned, completed].
        self._steps_seen: list[list[list[Any]]] = []
        self._this_step: list[list[Any]] = []
        self._last_exit = 0.0
        self._in_step = False

    # -- the running HookState -------------------------------------------------------------

    def _state(self, overrides: dict[str, str]) -> HookState:
        return HookState.for_model(
            self.model,
            "none",
            overrides=overrides,
            log_every=self._log_every,
            tensorboard=self._writer,
            **self._options,
        )

    @property
    def step(self) -> int:
        return self.current.step

    def _switch(self, overrides: dict[str, str], compressed: set[str]) -> None:
        old = self.current
        new = self._state(overrides)
        new.steps.restart_at(old.step)
        saved = old.residuals()
        keep = {
            name: tensor
            for name, tensor in saved.items()
            if name in compressed and old.grad_scaler is None
        }
        if keep:
            new._residuals.load_state_dict(keep)
        dropped = [name for name, t in saved.items() if name not in keep and bool(t.any())]
        self.residuals_reset += len(dropped)
        if dropped and self.rank == 0:
            _log.info("gradcomp auto: %d residual(s) dropped at the plan change", len(dropped))
        with old.telemetry.lock:
            for key in _ADDITIVE:
                self._totals_before[key] += old.telemetry.totals.get(key, 0)
        self.current = new
        self.overrides = overrides
        self._compressed = compressed

    # -- the hook --------------------------------------------------------------------------

    def hook(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        if not isinstance(bucket, dist.GradBucket):
            return comm_hook(self.current, bucket)  # raises comm_hook's clear TypeError
        now = time.perf_counter()
        if not self._in_step:
            self._begin_step(now)
            now = time.perf_counter()  # planning may have taken a while: not backward's time
            self._last_exit = now
            self._in_step = True
        measuring = self._measuring()
        entry: list[Any] = [bucket.index(), now - self._last_exit, 0.0, None]
        if measuring:
            self._this_step.append(entry)
            self._bucket_names[bucket.index()] = [
                (self._names[id(p)], p.numel()) for p in bucket.parameters()
            ]
        if self._step == self._measure_from + self.measure_steps:
            self.costs[bucket.index()] = time_bucket_methods(
                bucket,
                self.candidates,
                self._names,
                min_numel=self.current.min_numel,
                seed=self.current.seed,
                rank=self.rank,
                world_size=self.world_size,
                error_feedback=self.current.error_feedback,
            )
        future = comm_hook(self.current, bucket)
        self._last_exit = time.perf_counter()
        if measuring:  # when the bucket's exchange completes: the channel under load
            entry[2] = self._last_exit
            future = future.then(functools.partial(_stamp, entry))
        if bucket.is_last():
            if measuring:
                self._steps_seen.append(self._this_step)
            self._this_step = []
            self._in_step = False
            self._step += 1
        return future

    def _measuring(self) -> bool:
        return self._measure_from <= self._step < self._measure_from + self.measure_steps

    def _begin_step(self, now: float) -> None:
        self._step_starts.append((self._step, now))
        del self._step_starts[: -(max(self.check_every, self.measure_steps) + 2)]
        plan_step = self._measure_from + self.measure_steps + 1
        if self._step == plan_step:
            self._make_plan()
        elif (
            self._planned_at is not None
            and self._step > max(plan_step, self._planned_at)
            and (self._step - self._planned_at) % self.check_every == 0
        ):
            if self._check_replan():
                self._measure_from = self._step
                self._steps_seen.clear()
                self.costs.clear()
                self._bucket_names.clear()

    # -- planning ----------------------------------------------------------------------------

    def _periods(self, first: int, last: int) -> list[float]:
        """Measured periods of steps first..last-1 (from the recorded step starts)."""
        starts = dict(self._step_starts)
        return [
            starts[s + 1] - starts[s] for s in range(first, last) if s in starts and s + 1 in starts
        ]

    def _measured_profile(self, link: LinkFit, running: dict[int, str]) -> StepProfile:
        order = [entry[0] for entry in self._steps_seen[0]]
        gaps = [
            statistics.median(step[i][1] for step in self._steps_seen if len(step) > i)
            for i in range(len(order))
        ]
        gaps[0] = 0.0
        periods = self._periods(self._measure_from, self._measure_from + self.measure_steps)
        loads = [
            channel_load(
                [e[2] for e in step],
                [e[3] for e in step],
                [self.costs[e[0]][running.get(e[0], DENSE)] for e in step],
                link,
            )
            for step in self._steps_seen
            if all(e[3] is not None and e[0] in self.costs for e in step)
        ]
        return StepProfile(
            tuple(order),
            tuple(gaps),
            statistics.median(periods),
            statistics.median(loads) if loads else 1.0,
        )

    def _make_plan(self) -> None:
        group = self.current.process_group
        if self.fixed_link is not None:
            link = LinkFit(self.fixed_link, self.fixed_link, self.world_size)
        elif self.world_size < 2:  # nothing crosses a link: every collective takes no time
            link = LinkFit(Link(), Link(), self.world_size)
        else:
            largest = max(c[DENSE].bytes_sent for c in self.costs.values())
            link, self.link_samples = probe_link(group, self._device, max_bytes=largest)
        running = {b: self._running.get(b, DENSE) for b in self.costs}
        profile = self._measured_profile(link, running)
        payload: list[Any] = [None]
        if self.rank == 0:
            # Whatever fails here must reach every rank: the others wait in the broadcast.
            try:
                plan = choose_plan(profile, self.costs, link, running, min_gain=self.min_gain)
                compressed = {
                    name
                    for bucket, names in self._bucket_names.items()
                    if plan.methods.get(bucket, DENSE) != DENSE
                    for name, numel in names
                    if numel >= self.current.min_numel
                }
                payload = [(plan, compressed, link)]
            except Exception as error:  # noqa: BLE001 - re-raised on every rank below
                payload = [f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(payload, src=dist.get_global_rank(group, 0), group=group)
        if isinstance(payload[0], str):
            raise RuntimeError(f"gradcomp auto: planning failed on rank 0: {payload[0]}")
        plan, compressed, link = payload[0]
        self.profile, self.link, self.plan = profile, link, plan
        self.running_at_plan = running
        names = {n: b for b, entries in self._bucket_names.items() for n, _ in entries}
        overrides = {_pattern(n): plan.methods[names[n]] for n in sorted(compressed)}
        dense = predict_step(profile, self.costs, link, uniform_plan(profile, DENSE), running)
        if overrides != self.overrides:
            self._switch(overrides, compressed)
        self._running = dict(plan.methods)
        self._planned_at = self._step
        self.history.append(
            {
                "step": self.current.step,
                "plan": plan.to_dict(),
                "dense_predicted_step_ms": 1e3 * dense.predicted_step,
                "measured_step_ms": 1e3 * profile.period,
            }
        )
        if self.rank == 0:
            _log.info(
                "gradcomp auto: plan at step %d: %s; predicted %.1f ms/step (dense %.1f ms, "
                "measured %.1f ms under the previous plan)",
                self.current.step,
                ", ".join(f"bucket {b}: {m}" for b, m in sorted(plan.methods.items())),
                1e3 * plan.predicted_step,
                1e3 * dense.predicted_step,
                1e3 * profile.period,
            )
            if self._writer is not None:
                self._writer.add_scalar(
                    "gradcomp/auto_predicted_step_ms", 1e3 * plan.predicted_step, self.step
                )

    def measured_step(self) -> float | None:
        """The median period of the steps since the plan (seconds), None before any."""
        if self._planned_at is None:
            return None
        periods = self._periods(
            max(self._planned_at + 1, self._step - self.check_every), self._step
        )
        return statistics.median(periods) if periods else None

    def _check_replan(self) -> bool:
        group = self.current.process_group
        flag = torch.zeros(1, dtype=torch.int32, device=self._device)
        failure = ""
        if self.rank == 0:
            try:
                flag[0] = self._replan_reason()
            except Exception as error:  # noqa: BLE001 - re-raised on every rank below
                failure = f"{type(error).__name__}: {error}"
                flag[0] = -1
        dist.broadcast(flag, src=dist.get_global_rank(group, 0), group=group)
        reason = int(flag[0])
        if reason < 0:
            raise RuntimeError(f"gradcomp auto: the re-plan check failed on rank 0: {failure}")
        if reason:
            self.replans += 1
            self._drift_replanned = reason == 1
            if self.rank == 0:
                _log.info(
                    "gradcomp auto: re-planning at step %d (%s)",
                    self.current.step,
                    "every replan_every steps" if reason == 2 else "step time drifted",
                )
        return bool(reason)

    def _replan_reason(self) -> int:
        """Rank 0's decision: 2 at replan_every, 1 on drift, 0 to keep the plan."""
        assert self._planned_at is not None and self.plan is not None
        due = self.replan_every > 0 and self._step - self._planned_at >= self.replan_every
        measured = self.measured_step()
        # With link= the prediction is of that link, not of this one: no drift to measure.
        drifted = (
            self.drift > 0
            and self.fixed_link is None
            and not self._drift_replanned
            and measured is not None
            and self.plan.predicted_step > 0
            and abs(measured / self.plan.predicted_step - 1.0) > self.drift
        )
        if self._writer is not None and measured is not None:
            self._writer.add_scalar("gradcomp/auto_measured_step_ms", 1e3 * measured, self.step)
        return 2 if due else 1 if drifted else 0

    # -- what it reports -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The running HookState's stats() with counters summed over every plan so far, plus
        ``auto``: the plan, its prediction and what was measured since."""
        out = self.current.stats()
        for key in _ADDITIVE:
            out[key] = out[key] + self._totals_before[key]
        out["ratio"] = out["bytes_sent"] / out["bytes_dense"] if out["bytes_dense"] else None
        out["wire_ratio"] = (
            out["wire_bytes"] / out["wire_bytes_dense"] if out["wire_bytes_dense"] else None
        )
        measured = self.measured_step()
        out["compressor"] = "auto"
        out["auto"] = {
            "plan": dict(sorted(self.plan.methods.items())) if self.plan else None,
            "predicted_step_ms": 1e3 * self.plan.predicted_step if self.plan else None,
            "measured_step_ms": 1e3 * measured if measured is not None else None,
            "link": self.link.to_dict() if self.link else None,
            "channel_factor": self.profile.channel_factor if self.profile else None,
            "candidates": list(self.candidates),
            "replans": self.replans,
            "residuals_reset": self.residuals_reset,
            "history": list(self.history),
        }
        return out

    def _saved_plan(self) -> dict[str, Any]:
        return {
            "overrides": dict(self.overrides),
            "compressed": sorted(self._compressed),
            "plan": dataclasses.asdict(self.plan) if self.plan else None,
            "totals_before": dict(self._totals_before),
            "replans": self.replans,
            "residuals_reset": self.residuals_reset,
            "history": list(self.history),
        }

    def state_dict(self) -> dict[str, Any]:
        """The running HookState's state_dict plus the plan (per-parameter methods and per
        bucket, with its prediction) and the counters of earlier plans, so that a resume runs
        the same plan, checked against the same prediction, until its next re-plan."""
        return {"auto": self._saved_plan(), "hook": self.current.state_dict()}

    def gathered_state_dict(self) -> dict[str, Any]:
        """:meth:`state_dict` with every rank's part (HookState.gathered_state_dict), for
        frameworks that write one checkpoint from rank 0; every rank must call it."""
        return {"auto": self._saved_plan(), "hook": self.current.gathered_state_dict()}

    def residuals(self) -> dict[str, torch.Tensor]:
        """The running plan's residuals, by parameter name (HookState.residuals)."""
        return self.current.residuals()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`: the plan runs from the next step, with no measuring
        steps first; the re-plan schedule counts from here. Call it before the first step."""
        if not isinstance(state, dict) or "auto" not in state or "hook" not in state:
            raise ValueError(
                "not an 'auto' state_dict (expected keys 'auto' and 'hook'); a checkpoint of a "
                "fixed method loads into register(ddp, <that method>)"
            )
        if self._step:
            raise RuntimeError(
                f"load an 'auto' state before the first step (this state has run {self._step})"
            )
        saved = state["auto"]
        overrides = dict(saved["overrides"])
        self.current = self._state(overrides)
        self.overrides = overrides
        self._compressed = set(saved["compressed"])
        self.current.load_state_dict(state["hook"])
        self._totals_before = dict(saved["totals_before"])
        self.replans = int(saved["replans"])
        self.residuals_reset = int(saved["residuals_reset"])
        self.history = list(saved["history"])
        if saved["plan"] is not None:
            plan = dict(saved["plan"])
            plan["methods"] = {int(b): m for b, m in plan["methods"].items()}
            self.plan = Plan(**plan)
            self._running = dict(self.plan.methods)
            # The plan is running: no measuring at start; checks every check_every steps.
            self._measure_from = -(self.measure_steps + 2)
            self._planned_at = 0


def _stamp(entry: list[Any], done: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
    entry[3] = time.perf_counter()
    return done.value()


def auto_hook(state: AutoState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP communication hook of "auto" (register(ddp, "auto") installs it)."""
    return state.hook(bucket)


def register_auto(model: DistributedDataParallel, **options: Any) -> AutoState:
    """Builds an AutoState for ``model`` and registers :func:`auto_hook` on it."""
    valid = [n for n in inspect.signature(AutoState).parameters if n != "model"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"'auto' does not take {unknown}; its options: {valid}")
    state = AutoState(model, **options)
    model.register_comm_hook(state, auto_hook)
    return state
