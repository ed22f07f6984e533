"""The DDP communication hook: register(), HookState and comm_hook().

HookState holds the configuration and composes the parts that do the work, each in its own
module: the bucket codecs (plans.py), one bucket's exchange (exchange.py), the futures and
callbacks in flight (lifetime.py), the loss scale of the residuals (loss_scale.py), step
accounting and telemetry (telemetry.py) and checkpoints (checkpoint.py).

No `from __future__ import annotations` here: DDP checks comm_hook's annotations at runtime
(bucket: dist.GradBucket -> torch.futures.Future[torch.Tensor]).
"""

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gradcomp import _C, checkpoint
from gradcomp.checks import (
    check_collective,
    check_device,
    check_dtype,
    check_int,
    check_overrides,
    check_recipe,
    check_reducer,
)
from gradcomp.config import CompressorConfig, RandomK, resolve_config
from gradcomp.consistency import check_ranks_agree
from gradcomp.cost_model import Link
from gradcomp.estimate_feedback import EstimateFeedback
from gradcomp.exchange import exchange_bucket
from gradcomp.hierarchy import NodeGroups, ranks_per_node
from gradcomp.lifetime import InFlight
from gradcomp.local_update import LocalUpdate, check_optimizer
from gradcomp.loss_scale import ResidualScale
from gradcomp.plans import BucketPlans, StagedPlans, method_for
from gradcomp.schedule import DensityWarmup, density_of
from gradcomp.staging import StagedIssue
from gradcomp.telemetry import (
    ScalarWriter,
    StepRecord,
    StepTracker,
    Telemetry,
    check_writer,
    open_writer,
    ratio,
    scalar,
)

if TYPE_CHECKING:
    from gradcomp.auto import AutoState

__all__ = ["HookState", "comm_hook", "register"]

# Bumped whenever what crosses the wire changes, so that ranks running different gradcomp
# versions fail the first-call agreement check instead of misreading each other's payloads.
# 4: buckets whose every entry travels uncompressed are allreduced as they are (no flag slot).
_WIRE_VERSION = 4

Overrides = Mapping[str, "str | CompressorConfig"]


class HookState:
    """Everything the hook keeps between steps: the bucket codecs, per-parameter error
    feedback, the step counter, the loss scale and the telemetry.

    Build it with :func:`register`, or with :meth:`for_model` to register :func:`comm_hook`
    by hand. Built before torch.distributed is initialized (Lightning's ``ddp_comm_state``),
    it binds to its process group at its first use: until then ``bound`` is False, and
    what needs the group (world size, rank, the bucket codecs, state_dict, stats) is there
    only once it is bound.
    """

    def __init__(
        self,
        config: CompressorConfig,
        param_names: dict[int, str],
        *,
        process_group: dist.ProcessGroup | None = None,
        error_feedback: bool = True,
        min_numel: int = 1024,
        start_iter: int = 0,
        seed: int = 0,
        overrides: dict[str, CompressorConfig] | None = None,
        param_numels: dict[str, int] | None = None,
        grad_scaler: Any = None,
        log_every: int = 0,
        tensorboard: str | os.PathLike[str] | ScalarWriter | None = None,
        momentum: float = 0.0,
        mask_momentum: bool = True,
        clip: float | None = None,
        warmup_steps: int = 0,
        warmup_density: float = 0.25,
        feedback: str = "residual",
        collective: "str | Mapping[str, str]" = "allgather",
        hierarchy: str | int | None = None,
        link: Link | None = None,
        reduced_density_factor: float = 1.0,
    ) -> None:
        check_int("min_numel", min_numel, 0, 2**62)
        check_int("start_iter", start_iter, 0, 2**62)
        check_int("seed", seed, 0, 2**64 - 1)
        check_int("log_every", log_every, 0, 2**62)
        if not isinstance(error_feedback, bool):
            raise TypeError(f"error_feedback must be a bool, got {type(error_feedback).__name__}")
        if isinstance(config, RandomK) and config.unbiased and error_feedback:
            raise ValueError(
                "randomk with unbiased=1 scales each sent value by ~numel/k, so error feedback "
                "would keep -(numel/k - 1) times it and diverge; use unbiased=0 with "
                "error_feedback=True, or error_feedback=False with unbiased=1"
            )
        if grad_scaler is not None and not callable(getattr(grad_scaler, "get_scale", None)):
            raise TypeError(
                "grad_scaler must be a torch.amp.GradScaler (anything with get_scale()), "
                f"got {type(grad_scaler).__name__}"
            )
        if tensorboard is not None and log_every == 0:
            raise ValueError("tensorboard= writes every log_every steps: set log_every >= 1")
        if tensorboard is not None:
            check_writer(tensorboard)
        overrides = dict(overrides or {})
        check_overrides(config, overrides, param_numels)
        check_recipe(
            config,
            overrides,
            momentum=momentum,
            mask_momentum=mask_momentum,
            clip=clip,
            feedback=feedback,
            warmup_steps=warmup_steps,
            warmup_density=warmup_density,
            error_feedback=error_feedback,
            scaler=grad_scaler,
        )
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(
                "process_group must be a torch.distributed.ProcessGroup (e.g. from "
                f"dist.new_group) or None for the world, got {type(process_group).__name__}"
            )
        check_collective(
            collective,
            hierarchy,
            link,
            config,
            momentum=momentum,
            mask_momentum=mask_momentum,
            feedback=feedback,
            world_group=process_group is None or process_group == dist.group.WORLD,
            reduced_density_factor=reduced_density_factor,
            param_names=list(param_numels) if param_numels else None,
        )
        self._config = config
        self._overrides = overrides
        self.collective = collective
        self.link = link or Link()
        self.error_feedback = error_feedback
        self.min_numel = min_numel
        self.start_iter = start_iter
        self.seed = seed
        self.grad_scaler = grad_scaler
        self.parameter_names = list(param_names.values())
        self._residuals = _C.ErrorFeedback()
        self._warm_start = _C.ErrorFeedback()  # PowerSGD's Q per parameter
        self.warmup = DensityWarmup(warmup_steps, warmup_density, density_of(config))
        total = sum(param_numels.values()) if param_numels else 0
        self.local_update = LocalUpdate(
            momentum=momentum, clip=clip, total_numel=total, masking=mask_momentum
        )
        self.feedback = feedback
        self.estimates = EstimateFeedback() if feedback == "ef21" else None
        self.in_flight = InFlight()
        self.staged = StagedIssue()  # later stages of two_phase and hierarchy exchanges
        self._ratio: torch.Tensor | None = None  # this step's loss-scale ratio for the codecs
        # What every rank must agree on, checked once at the first hook call (_bind adds the
        # node size).
        numels = param_numels or {name: -1 for name in param_names.values()}
        self._description: dict[str, Any] = {
            "wire_version": _WIRE_VERSION,
            "compressor": config.spec,
            "overrides": {p: c.spec for p, c in overrides.items()},
            "error_feedback": error_feedback,
            "min_numel": min_numel,
            "start_iter": start_iter,
            "seed": seed,
            "loss_scaling": grad_scaler is not None,
            "momentum": [momentum, mask_momentum],
            "clip": clip,
            "warmup": [warmup_steps, warmup_density],
            "feedback": feedback,
            "collective": collective if isinstance(collective, str) else dict(collective),
            "link": [self.link.latency, self.link.bandwidth],
            "reduced_density_factor": reduced_density_factor,
            "parameters": [[name, numel] for name, numel in numels.items()],
        }
        self._ranks_agree = False
        # What _bind needs: the parts that depend on the process group's size and this rank.
        self._group_request = (process_group, hierarchy, tensorboard, log_every)
        self._plan_args: dict[str, Any] = {
            "param_names": param_names,
            "min_numel": min_numel,
            "seed": seed,
            "residuals": self._residuals if error_feedback else None,
            "warm_start": self._warm_start,
            "collective": collective,
            "link": self.link,
            "reduced_density_factor": reduced_density_factor,
        }
        self.bound = False
        # Frameworks that take the state before they start the process group (Lightning's
        # ddp_comm_state) get a state that binds at its first use instead.
        if dist.is_initialized():
            self._bind()

    def _bind(self, needed_by: str = "") -> None:
        """Binds the state to its process group: the world size and rank, the node groups of a
        hierarchy, the bucket codecs (which depend on both), the loss scale and the telemetry
        (rank 0 logs). Runs at construction when torch.distributed is initialized by then, and
        otherwise at the first use that needs it (``needed_by`` names it for the error)."""
        if self.bound:
            return
        if not dist.is_initialized():
            raise RuntimeError(
                f"torch.distributed is not initialized{f' at {needed_by}' if needed_by else ''}"
                ": call dist.init_process_group(...) (torchrun sets up the env) first. A "
                "HookState built before that binds to its process group at its first use (the "
                "first comm_hook call, state_dict, load_state_dict, stats), which must come "
                "after the group is started (Lightning and Accelerate start it in fit/prepare)"
            )
        process_group, hierarchy, tensorboard, log_every = self._group_request
        group = process_group if process_group is not None else dist.group.WORLD
        if group is None:  # initialized, yet no world group: not expected, but say so clearly
            raise RuntimeError("torch.distributed has no default process group")
        world_size = dist.get_world_size(group)
        rank = dist.get_rank(group)
        node_size = ranks_per_node(hierarchy, world_size)
        self.node_groups = (
            NodeGroups(node_size, rank, world_size) if node_size is not None else None
        )
        self.process_group: dist.ProcessGroup = group
        self.world_size = world_size
        self.rank = rank
        self.staged_plans = StagedPlans(
            self._config,
            self._overrides,
            warmup=self.warmup,
            rank=rank,
            world_size=world_size,
            groups=self.node_groups,
            **self._plan_args,
        )
        self.plans = self.staged_plans.target
        # PowerSGD's codec takes no ratio: its residuals are rescaled on the host.
        self.loss_scale = ResidualScale(
            self.grad_scaler, self._residuals, device_ratio=not self.plans.low_rank
        )
        writer = open_writer(tensorboard) if tensorboard is not None and rank == 0 else None
        self.telemetry = Telemetry(log_every, writer, log_rank=rank == 0)
        self.steps = StepTracker(self.telemetry, self._complete)
        self._description["ranks_per_node"] = node_size
        self.bound = True

    @classmethod
    def for_model(
        cls,
        model: DistributedDataParallel,
        compressor: str | CompressorConfig = "topk",
        *,
        error_feedback: bool = True,
        min_numel: int = 1024,
        start_iter: int = 0,
        process_group: dist.ProcessGroup | None = None,
        seed: int = 0,
        overrides: Overrides | None = None,
        grad_scaler: Any = None,
        log_every: int = 0,
        tensorboard: str | os.PathLike[str] | ScalarWriter | None = None,
        momentum: float = 0.0,
        mask_momentum: bool = True,
        clip: float | None = None,
        warmup_steps: int = 0,
        warmup_density: float = 0.25,
        feedback: str = "residual",
        collective: "str | Mapping[str, str]" = "allgather",
        hierarchy: str | int | None = None,
        link: Link | None = None,
        reduced_density_factor: float = 1.0,
        **options: Any,
    ) -> "HookState":
        """A state for ``model`` without registering it: for
        ``ddp.register_comm_hook(state, gradcomp.comm_hook)``. Arguments as in register().

        ``model`` may also be the module before DDP wraps it (frameworks that build the hook
        state first, e.g. Lightning's ``ddp_comm_state``): DDP keeps the same parameters.
        """
        if isinstance(model, DistributedDataParallel):
            check_reducer(model)
            module = model.module
        elif isinstance(model, torch.nn.Module):
            module = model
        else:
            raise TypeError(
                "gradcomp expects a torch.nn.parallel.DistributedDataParallel model (or the "
                f"module it wraps), got {type(model).__name__}"
            )
        config = resolve_config(compressor, options)
        names: dict[int, str] = {}
        numels: dict[str, int] = {}
        for raw_name, param in module.named_parameters():
            name = canonical_name(raw_name)
            check_device(name, param.device)
            check_dtype(name, param.dtype)
            names[id(param)] = name
            numels[name] = param.numel()
        if overrides is not None and not isinstance(overrides, Mapping):
            raise TypeError(
                "overrides must map parameter-name patterns to compressors, e.g. "
                f"{{'embed*': 'none'}}, got {type(overrides).__name__}"
            )
        resolved: dict[str, CompressorConfig] = {}
        for pattern, override in (overrides or {}).items():
            if not isinstance(pattern, str):
                raise TypeError(f"override pattern {pattern!r} must be a str")
            try:
                resolved[pattern] = resolve_config(override, {})
            except (ValueError, TypeError) as error:
                raise type(error)(f"override {pattern!r}: {error}") from error
        state = cls(
            config,
            names,
            process_group=process_group,
            error_feedback=error_feedback,
            min_numel=min_numel,
            start_iter=start_iter,
            seed=seed,
            overrides=resolved,
            param_numels=numels,
            grad_scaler=grad_scaler,
            log_every=log_every,
            tensorboard=tensorboard,
            momentum=momentum,
            mask_momentum=mask_momentum,
            clip=clip,
            warmup_steps=warmup_steps,
            warmup_density=warmup_density,
            feedback=feedback,
            collective=collective,
            hierarchy=hierarchy,
            link=link,
            reduced_density_factor=reduced_density_factor,
        )
        if isinstance(model, DistributedDataParallel):
            state._bind("for_model")  # a DDP model means a started group: bind now
        return state

    def _require_bound(self, needed_by: str) -> None:
        if not self.bound:
            self._bind(needed_by)

    # -- what it is configured with --------------------------------------------------------

    @property
    def config(self) -> CompressorConfig:
        return self._config

    @property
    def compressor(self) -> Any:
        """The main method (a gradcomp._C.Compressor, or PowerSgd); before the state is bound,
        one built from ``config`` (the bucket codecs build theirs when it binds)."""
        return self.plans.compressor if self.bound else self._config.build()

    @property
    def overrides(self) -> dict[str, CompressorConfig]:
        return self._overrides

    @property
    def low_rank(self) -> bool:
        """True for PowerSGD, which runs two allreduce rounds per bucket."""
        return bool(self.compressor.collective == "lowrank")

    @property
    def step(self) -> int:
        """Steps completed (or restored from a checkpoint); 0 before the state is bound."""
        return self.steps.step if self.bound else 0

    def method_for(self, name: str) -> CompressorConfig | None:
        """The config a parameter is compressed with; None when it is sent dense because an
        override says "none" (the size cut, min_numel, is applied separately)."""
        return method_for(self._config, self._overrides, name)

    def plans_at(self, step: int) -> BucketPlans:
        """The bucket codecs of a step: the configured ones, or during the density warm-up
        those of the step's stage."""
        self._require_bound("plans_at")
        return self.staged_plans.at(step - self.start_iter)

    @property
    def density(self) -> float | None:
        """The main method's density at the current step (None for a method without one)."""
        return self.warmup.density(self.warmup.stage(self.step - self.start_iter))

    # -- step accounting, for exchange.py --------------------------------------------------

    def _begin_bucket(self, device: torch.device) -> tuple[StepRecord, torch.Tensor | None]:
        """The record of the step this bucket belongs to and the step's loss-scale ratio for
        the codecs; the first bucket of a step opens the record, bringing the residuals to the
        step's loss scale (or computing the ratio that does, on the device)."""
        record = self.steps.record
        if record is None:
            compressing = self.steps.step >= self.start_iter
            scale, self._ratio = self.loss_scale.begin_step(device, compressing)
            record = self.steps.open(scale)
        record.issued += 1
        return record, self._ratio

    def _complete(self, record: StepRecord) -> None:
        if record.measure:
            scale = scalar(record.loss_scale) or 1.0
            record.residual_norm = math.sqrt(self._residuals.squared_norm()) / scale
        self.telemetry.complete(record)

    def wait_for_callbacks(self, timeout: float = 10.0) -> bool:
        """Waits until every communication callback of earlier steps has been torn down on
        torch.distributed's threads. gradcomp calls this at interpreter exit; returns False if
        callbacks were still alive after ``timeout`` seconds."""
        return self.in_flight.wait_for_callbacks(timeout)

    # -- telemetry and checkpoints -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Cumulative counters since registration (or since the step a checkpoint was saved
        at), plus ``last_step``: the latest completed step's counters.

        bytes_sent: bytes this rank handed to collectives; bytes_dense: what DDP's dense
        allreduce of the same gradients would hand over; ratio = bytes_sent / bytes_dense.
        wire_bytes: what this rank put on the wire as the collectives' algorithms move it (ring
        allreduce 2(P-1)/P of its input, allgather P-1 times its payload, all_to_all (P-1)/P
        of its input); wire_bytes_dense: what a dense ring allreduce of the same gradients
        would; wire_ratio = wire_bytes / wire_bytes_dense: the figure to compare across world
        sizes. wire_bytes_between_nodes: the part of wire_bytes that crosses between nodes
        with a hierarchy (all of it without). collectives: how each bucket's payloads travel,
        by bucket index (BucketPlans.collectives).
        Times are summed over buckets, which overlap each other and the backward pass.
        relative_error = ||g - C(g)|| / ||g|| over the whole gradient (g compensated by error
        feedback), and residual_norm (the error-feedback residuals' norm after that step, in
        unscaled gradient units), are measured on every ``log_every``-th step only: the latest
        measurement, of step ``relative_error_step``.
        A value not measured is None, never 0.0 or NaN: relative_error, relative_error_step and
        residual_norm before the first measured step (always with log_every=0), ratio and
        wire_ratio before anything was sent (also in ``last_step``).
        density: the main method's density at the next step (the warm-up's while it runs;
        None for methods without one); warmup_steps_left: steps until it reaches its own.
        """
        self._require_bound("stats()")
        with self.telemetry.lock:
            totals = dict(self.telemetry.totals)
            last = dict(self.telemetry.last) if self.telemetry.last else None
            measured = self.telemetry.last_measured
        if last is not None:
            last["loss_scale"] = scalar(last["loss_scale"])
        return {
            "compressor": self.compressor.spec,
            "steps": self.step,
            "bytes_sent": totals["bytes_sent"],
            "bytes_dense": totals["bytes_dense"],
            "ratio": ratio(totals["bytes_sent"], totals["bytes_dense"]),
            "bytes_sent_last_step": self.steps.last_bytes_sent,
            "wire_bytes": totals["wire_bytes"],
            "wire_bytes_dense": totals["wire_bytes_dense"],
            "wire_ratio": ratio(totals["wire_bytes"], totals["wire_bytes_dense"]),
            "wire_bytes_between_nodes": totals["wire_bytes_between_nodes"],
            "collectives": self.plans_at(self.step).collectives(),
            "compress_seconds": totals["compress_seconds"],
            "communicate_seconds": totals["communicate_seconds"],
            "decompress_seconds": totals["decompress_seconds"],
            "nonfinite_steps": totals["nonfinite_steps"],
            "residual_norm": measured["residual_norm"] if measured else None,
            "relative_error": measured["relative_error"] if measured else None,
            "relative_error_step": measured["step"] + 1 if measured else None,
            "density": self.density,
            "warmup_steps_left": max(0, self.start_iter + self.warmup.warmup_steps - self.step)
            if self.warmup.warmup_steps
            else 0,
            "last_step": last,
        }

    def residuals(self) -> dict[str, torch.Tensor]:
        """A copy of every error-feedback residual, by parameter name, in the units of the
        current loss scale (gradients as the hook receives them)."""
        return self._residuals.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """This rank's hook state, for torch.save (one file per rank) or for
        torch.distributed.checkpoint (DCP).

        Shared values (compressor, step, world size) sit at the top; what differs per rank
        (residuals, PowerSGD's warm-start Q, counters) is one serialized entry under the key
        ``rank<r>``, so DCP, which keeps a single copy of equal keys, keeps every rank's.
        """
        self._require_bound("state_dict()")
        return checkpoint.state_dict(self)

    def gathered_state_dict(self) -> dict[str, Any]:
        """:meth:`state_dict` holding every rank's part, returned on every rank (one
        all_gather_object; every rank must call it). For frameworks that write one checkpoint
        from rank 0 (PyTorch Lightning, Hugging Face Trainer): each rank's
        :meth:`load_state_dict` of the same dict picks its own part."""
        self._require_bound("gathered_state_dict()")
        return checkpoint.gathered_state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from :meth:`state_dict`.

        A different compressor is an error. A different world size keeps the step, resets the
        residuals to zero and warns (a rank's residual is only meaningful for the data that
        rank saw); PowerSGD's warm-start Q, the same on every rank, is kept. Residuals saved at
        another loss scale are brought to the current one at the next step.
        """
        self._require_bound("load_state_dict()")
        checkpoint.load_state_dict(self, state)


def comm_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP communication hook: compensate, compress, exchange, decompress, average.

    Use through :func:`register`, or ``ddp.register_comm_hook(state, gradcomp.comm_hook)``.
    """
    if not isinstance(bucket, dist.GradBucket):
        raise TypeError(
            f"gradcomp.comm_hook got a {type(bucket).__name__}, not a GradBucket: DDP's Python "
            "reducer (compiled autograd, optimize_ddp='python_reducer') calls hooks per "
            "parameter; gradcomp needs DDP's C++ reducer (the default)"
        )
    if not state.bound:
        state._bind("the first comm_hook call")
    if not state._ranks_agree:
        check_ranks_agree(state._description, state.process_group, bucket.buffer().device)
        state._ranks_agree = True
    return exchange_bucket(state, bucket)


def canonical_name(name: str) -> str:
    """A parameter's name without torch.compile's ``_orig_mod.`` segments, so that residuals,
    overrides and checkpoints use the same names whether or not (and where) a model is
    compiled."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def register(
    model: DistributedDataParallel,
    compressor: str | CompressorConfig = "topk",
    *,
    error_feedback: bool = True,
    min_numel: int = 1024,
    start_iter: int = 0,
    process_group: dist.ProcessGroup | None = None,
    seed: int = 0,
    overrides: Overrides | None = None,
    grad_scaler: Any = None,
    log_every: int = 0,
    tensorboard: str | os.PathLike[str] | ScalarWriter | None = None,
    momentum: float = 0.0,
    mask_momentum: bool = True,
    clip: float | None = None,
    warmup_steps: int = 0,
    warmup_density: float = 0.25,
    feedback: str = "residual",
    optimizer: torch.optim.Optimizer | None = None,
    collective: "str | Mapping[str, str]" = "allgather",
    hierarchy: str | int | None = None,
    link: Link | None = None,
    reduced_density_factor: float = 1.0,
    **options: Any,
) -> "HookState | AutoState":
    """Registers gradcomp's communication hook on a DDP model and returns its HookState (an
    AutoState for "auto").

    Args:
        model: the DistributedDataParallel-wrapped model.
        compressor: a name ("topk"), a spec string ("topk:ratio=0.01") or a config object
            (``gradcomp.TopK(ratio=0.01)``); or "auto": measure the link and each method's
            cost on the real buckets, then choose per bucket (dense where nothing pays), and
            re-plan as step times drift (gradcomp.auto; its options: ``methods``,
            ``min_ratio``, ``replan_every``, ``check_every``, ``drift``, ``warm_steps``,
            ``measure_steps``, ``min_gain``; see docs/training.md).
        error_feedback: keep what compression dropped and add it to the next step's gradient.
        min_numel: parameters with fewer elements (biases, norms) are allreduced densely.
        start_iter: dense allreduce steps before compression starts.
        process_group: the group to communicate in (default: the world).
        seed: seed for stochastic compressors (the same on every rank).
        overrides: per-parameter compressors by fnmatch pattern on the full parameter name,
            first match wins, e.g. ``{"embed.*": "none", "*.bias": "topk:ratio=0.1"}``;
            "none" sends a tensor dense. An override applies whatever the tensor's size.
        grad_scaler: the torch.amp.GradScaler the training loop uses, so that residuals
            follow its loss scale when it changes.
        log_every: every N steps, measure the relative compression error and residual norm
            and log a line (rank 0, logger "gradcomp"); 0: never.
        tensorboard: a log directory or a SummaryWriter: the logged values as scalars
            (needs log_every).
        momentum: momentum correction (Deep Gradient Compression): the hook keeps a velocity
            per parameter and compresses it in place of the gradient, and clears it where a
            sparsifier sent values. The optimizer must then have no momentum of its own
            (SGD's momentum=0, Adam's betas[0]=0): pass it as ``optimizer`` to have that
            checked. 0: off.
        mask_momentum: with momentum, clear the velocity where a sparsifier sent values
            (DGC's momentum factor masking); False keeps it.
        clip: clip each rank's own gradient to this L2 norm before error feedback (each
            bucket to its share, clip * sqrt(bucket numel / model numel)). None: off.
        warmup_steps: density warm-up: over this many steps from start_iter the sparsifiers'
            density falls exponentially, in 4 stages, from ``warmup_density`` to their own.
        warmup_density: the density the warm-up starts at.
        feedback: "residual" (classic error feedback: what compression dropped is added to
            the next step's gradient) or "ef21" (EF21: each rank compresses the change of its
            gradient estimate, and the optimizer receives the dense estimate of the average;
            see docs/convergence.md for when it pays).
        optimizer: the training loop's optimizer, checked against ``momentum``.
        collective: how payloads that are gathered rather than summed (the Top-K family,
            sign, QSGD, int8) travel: "allgather" (each rank sends its payload P-1 times),
            "two_phase" (all_to_all of per-chunk payloads, reduce at the chunk's owner,
            re-compress, allgather: about two payloads per rank whatever P) or "auto" (per
            bucket, whichever ``link``'s cost model predicts faster; see docs/design.md). Or
            per parameter: fnmatch patterns to those, first match wins, unmatched parameters
            "allgather", e.g. ``{"embed.*": "allgather", "*": "two_phase"}``.
        hierarchy: "node" (ranks per node from torchrun's LOCAL_WORLD_SIZE) or the number of
            ranks per node: a dense allreduce inside each node, compression only between
            nodes, then an allgather inside the node. None: one flat group.
        link: the network "auto" plans for (gradcomp.Link(latency, bandwidth)); default a
            10 Gbit/s link with 50 us per message step.
        reduced_density_factor: with two_phase, the owners re-compress a reduced chunk with
            the sparsifiers this many times denser (1: the same density; at most the world
            size, where they keep as many values as the allgather's union can hold). More
            values applied per step, at (factor - 1) payloads more per rank.
        **options: compressor options, e.g. ``ratio=0.01``.
    """
    if not isinstance(model, DistributedDataParallel):
        raise TypeError(
            "gradcomp expects a torch.nn.parallel.DistributedDataParallel model, got "
            f"{type(model).__name__}; wrap it first: model = DistributedDataParallel(model)"
        )
    if isinstance(compressor, str) and compressor == "auto":
        from gradcomp.auto import register_auto  # auto.py builds HookStates: import it late

        fixed = {
            "start_iter": (start_iter, 0),
            "overrides": (overrides, None),
            "momentum": (momentum, 0.0),
            "clip": (clip, None),
            "warmup_steps": (warmup_steps, 0),
            "feedback": (feedback, "residual"),
            "collective": (collective, "allgather"),
            "hierarchy": (hierarchy, None),
            "reduced_density_factor": (reduced_density_factor, 1.0),
        }
        refused = sorted(name for name, (value, default) in fixed.items() if value != default)
        if refused:
            raise ValueError(
                f"'auto' chooses the methods itself and does not take {refused}; pass a fixed "
                "compressor to use them"
            )
        if optimizer is not None:
            check_optimizer(optimizer, 0.0)
        return register_auto(
            model,
            error_feedback=error_feedback,
            min_numel=min_numel,
            process_group=process_group,
            seed=seed,
            grad_scaler=grad_scaler,
            log_every=log_every,
            tensorboard=tensorboard,
            link=link,
            **options,
        )
    state = HookState.for_model(
        model,
        compressor,
        error_feedback=error_feedback,
        min_numel=min_numel,
        start_iter=start_iter,
        process_group=process_group,
        seed=seed,
        overrides=overrides,
        grad_scaler=grad_scaler,
        log_every=log_every,
        tensorboard=tensorboard,
        momentum=momentum,
        mask_momentum=mask_momentum,
        clip=clip,
        warmup_steps=warmup_steps,
        warmup_density=warmup_density,
        feedback=feedback,
        collective=collective,
        hierarchy=hierarchy,
        link=link,
        reduced_density_factor=reduced_density_factor,
        **options,
    )
    if optimizer is not None:
        check_optimizer(optimizer, momentum)
    model.register_comm_hook(state, comm_hook)
    return state
