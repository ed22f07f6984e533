"""The DDP communication hook: register(), HookState and comm_hook().

No `from __future__ import annotations` here: DDP checks comm_hook's annotations at runtime
(bucket: dist.GradBucket -> torch.futures.Future[torch.Tensor]).
"""

import atexit
import fnmatch
import functools
import io
import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from gradcomp import _C
from gradcomp.comm import allgather_async, allreduce_async, exchange_lengths
from gradcomp.config import CompressorConfig, NoCompression, PowerSGD, RandomK, resolve_config
from gradcomp.consistency import check_ranks_agree
from gradcomp.telemetry import ScalarWriter, StepRecord, Telemetry, open_writer

__all__ = ["HookState", "comm_hook", "register"]

# 2: adds PowerSGD's warm-start matrices. 3: per-rank parts under rank-unique keys (so that
# torch.distributed.checkpoint keeps every rank's), loss scale of the residuals, overrides.
_STATE_VERSION = 3

# Bumped whenever what crosses the wire changes, so that ranks running different gradcomp
# versions fail the first-call agreement check instead of misreading each other's payloads.
_WIRE_VERSION = 3  # 3: the non-finite flag slot

Overrides = Mapping[str, "str | CompressorConfig"]

# Every live HookState, so that interpreter exit can wait for their callbacks (see _drain_at_exit).
_LIVE_STATES: weakref.WeakSet["HookState"] = weakref.WeakSet()


class _CallbackTail:
    """Lives exactly as long as one `.then()` callback that the hook gave torch.

    torch runs such a callback on a torch.distributed worker thread and destroys it there
    afterwards, which needs the GIL. If the interpreter has begun shutting down by then,
    CPython ends that thread with a forced unwind and the process aborts ("terminate called
    without an active exception"). Counting the live callbacks lets exit wait for them.
    """

    __slots__ = ("_state",)

    def __init__(self, state: "HookState") -> None:
        self._state = state
        with state._pending_lock:  # += is not atomic across threads, even with the GIL
            state._pending_callbacks += 1

    def __del__(self) -> None:
        with self._state._pending_lock:
            self._state._pending_callbacks -= 1


class HookState:
    """Everything the hook keeps between steps: the compressors, per-parameter error feedback,
    one codec per bucket layout, the step counter and the telemetry.

    Build it with :func:`register`, or with :meth:`for_model` to register :func:`comm_hook`
    by hand.
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
    ) -> None:
        _check_int("min_numel", min_numel, 0, 2**62)
        _check_int("start_iter", start_iter, 0, 2**62)
        _check_int("seed", seed, 0, 2**64 - 1)
        _check_int("log_every", log_every, 0, 2**62)
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
        if not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialized: call "
                "dist.init_process_group(...) (torchrun sets up the env) first"
            )
        self.config = config
        self.compressor = config.build()
        self.overrides = dict(overrides or {})
        # Method 0 is the main compressor; each distinct override config adds one.
        self._methods: list[CompressorConfig] = [config]
        for override in self.overrides.values():
            if not isinstance(override, NoCompression) and override not in self._methods:
                self._methods.append(override)
        _check_overrides(config, self.overrides, param_numels)
        self._method_objects = [m.build() for m in self._methods]
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(
                "process_group must be a torch.distributed.ProcessGroup (e.g. from "
                f"dist.new_group) or None for the world, got {type(process_group).__name__}"
            )
        group = process_group if process_group is not None else dist.group.WORLD
        if group is None:  # initialized, yet no world group: not expected, but say so clearly
            raise RuntimeError("torch.distributed has no default process group")
        self.process_group: dist.ProcessGroup = group
        self.world_size = dist.get_world_size(self.process_group)
        self.rank = dist.get_rank(self.process_group)
        self.error_feedback = error_feedback
        self.min_numel = min_numel
        self.start_iter = start_iter
        self.seed = seed
        self.grad_scaler = grad_scaler
        self.step = 0
        self._param_names = param_names
        self._residuals = _C.ErrorFeedback()
        self._warm_start = _C.ErrorFeedback()  # PowerSGD's Q per parameter
        # The loss scale the residuals are in (GradScaler); None until the first step.
        self._residual_scale: float | None = None
        self._codecs: dict[int, tuple[tuple[int, ...], Any]] = {}
        self._record: StepRecord | None = None  # the step whose buckets are being issued
        self._last_step_bytes_sent = 0
        writer = open_writer(tensorboard) if tensorboard is not None and self.rank == 0 else None
        self.telemetry = Telemetry(log_every, writer, log_rank=self.rank == 0)
        self._pending_callbacks = 0
        self._pending_lock = threading.Lock()
        # The futures and Work handles of the latest step per bucket: holding them here means
        # the teardown on the communication thread never drops the last reference to an object
        # that owns Python state (see comm.py and _CallbackTail).
        self._in_flight: dict[int, tuple[torch.futures.Future | dist.Work, ...]] = {}
        # What every rank must agree on, checked once at the first hook call.
        numels = param_numels or {name: -1 for name in param_names.values()}
        self._description: dict[str, Any] = {
            "wire_version": _WIRE_VERSION,
            "compressor": self.compressor.spec,
            "overrides": {p: c.spec for p, c in self.overrides.items()},
            "error_feedback": error_feedback,
            "min_numel": min_numel,
            "start_iter": start_iter,
            "seed": seed,
            "loss_scaling": grad_scaler is not None,
            "parameters": [[name, numel] for name, numel in numels.items()],
        }
        self._ranks_agree = False
        _LIVE_STATES.add(self)

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
        **options: Any,
    ) -> "HookState":
        """A state for ``model`` without registering it: for
        ``ddp.register_comm_hook(state, gradcomp.comm_hook)``. Arguments as in register().

        ``model`` may also be the module before DDP wraps it (frameworks that build the hook
        state first, e.g. Lightning's ``ddp_comm_state``): DDP keeps the same parameters.
        """
        if isinstance(model, DistributedDataParallel):
            _check_reducer(model)
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
            _check_device(name, param.device)
            _check_dtype(name, param.dtype)
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
        return cls(
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
        )

    # -- the per-bucket work -----------------------------------------------------------------

    @property
    def low_rank(self) -> bool:
        """True for PowerSGD, which runs two allreduce rounds per bucket."""
        return self.compressor.collective == "lowrank"

    def method_for(self, name: str) -> CompressorConfig | None:
        """The config a parameter is compressed with; None when it is sent dense because an
        override says "none" (the size cut, min_numel, is applied separately)."""
        for pattern, override in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return None if isinstance(override, NoCompression) else override
        return self.config

    def _codec_for(self, bucket: dist.GradBucket) -> Any:
        """The bucket's BucketCodec (or PowerSgdCodec), rebuilt when DDP changes the layout."""
        params = bucket.parameters()
        key = tuple(map(id, params))
        cached = self._codecs.get(bucket.index())
        if cached is not None and cached[0] == key:
            return cached[1]
        buffer = bucket.buffer()
        base, item = buffer.data_ptr(), buffer.element_size()
        entries = []
        for param, grad in zip(params, bucket.gradients(), strict=True):
            name = self._param_names.get(id(param))
            if name is None:
                raise RuntimeError(
                    "gradcomp: a bucket holds a parameter that was not in the "
                    "model given to register()"
                )
            numel = grad.numel()
            if numel == 0:  # an empty parameter has nothing to send
                continue
            offset = (grad.data_ptr() - base) // item
            rows = param.shape[0] if param.dim() >= 2 else 0
            method = self.method_for(name)
            overridden = any(fnmatch.fnmatchcase(name, p) for p in self.overrides)
            # An override applies whatever the size; otherwise small tensors travel dense.
            compress = method is not None and (overridden or numel >= self.min_numel)
            index = self._methods.index(method) if method is not None else 0
            entries.append((name, offset, numel, compress, rows, index))
        if not entries:
            self._codecs[bucket.index()] = (key, None)
            return None
        residuals = self._residuals if self.error_feedback else None
        codec: Any
        if self.low_rank:
            codec = _C.PowerSgdCodec(
                self.compressor,
                [e[:5] for e in entries],
                residuals,
                self._warm_start,
                self.seed,
                self.world_size,
            )
        else:
            codec = _C.BucketCodec(
                self._method_objects, entries, residuals, self.seed, self.rank, self.world_size
            )
        self._codecs[bucket.index()] = (key, codec)
        return codec

    def _begin_bucket(self) -> StepRecord:
        """The record of the step this bucket belongs to; the first bucket of a step opens it,
        bringing the residuals to the step's loss scale."""
        if self._record is None:
            scale = 1.0
            if self.grad_scaler is not None and self.grad_scaler.is_enabled():
                scale = float(self.grad_scaler.get_scale())
            if self._residual_scale is not None and scale != self._residual_scale:
                self._residuals.scale(scale / self._residual_scale)
            self._residual_scale = scale
            self._record = StepRecord(self.step, scale, self.telemetry.measures(self.step))
        self._record.issued += 1
        return self._record

    def _end_issue(self, record: StepRecord, sent: int, dense: int, last: bool) -> None:
        """Counts a bucket's bytes once its collectives are issued; the last one ends the step.
        Its callback may already have run (collectives can finish first), so the step may
        complete here."""
        with self.telemetry.lock:
            record.bytes_sent += sent
            record.bytes_dense += dense
            if not last:
                return
            record.closed = True
            done = record.finished == record.issued
        self._record = None
        self._last_step_bytes_sent = record.bytes_sent
        self.step += 1
        if done:
            self._complete(record)

    def _finish_bucket(
        self,
        record: StepRecord,
        communicate: float,
        decompress: float = 0.0,
        outcome: int = 1,
    ) -> None:
        """A bucket's result is written (decode's outcome: 0 when a rank's bucket was not
        finite); the step completes with its last finished bucket. Buckets finish on several
        threads at once, hence the lock."""
        with self.telemetry.lock:
            record.communicate_seconds += communicate
            record.decompress_seconds += decompress
            record.nonfinite_buckets += outcome == 0
            record.finished += 1
            done = record.closed and record.finished == record.issued
        if done:
            self._complete(record)

    def _complete(self, record: StepRecord) -> None:
        if record.measure:
            scale = record.loss_scale or 1.0
            record.residual_norm = math.sqrt(self._residuals.squared_norm()) / scale
        self.telemetry.complete(record)

    def _then(
        self,
        bucket_index: int,
        parent: torch.futures.Future,
        fn: Callable[[torch.futures.Future], torch.Tensor],
        *keep: torch.futures.Future | dist.Work,
    ) -> torch.futures.Future[torch.Tensor]:
        # The partial owns the tail, so the tail dies exactly when torch frees the callback.
        result = parent.then(functools.partial(_call_with_tail, fn, _CallbackTail(self)))
        self._in_flight[bucket_index] = (parent, result, *keep)
        return result

    def wait_for_callbacks(self, timeout: float = 10.0) -> bool:
        """Waits until every communication callback of earlier steps has been torn down on
        torch.distributed's threads. gradcomp calls this at interpreter exit; returns False if
        callbacks were still alive after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._pending_callbacks > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)  # releases the GIL, which the teardown needs
        return True

    # -- telemetry and checkpoints -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Cumulative counters since registration (or since the step a checkpoint was saved
        at), plus ``last_step``: the latest completed step's counters.

        bytes_sent: bytes this rank handed to collectives; bytes_dense: what DDP's dense
        allreduce of the same gradients would hand over; ratio = bytes_sent / bytes_dense.
        Times are summed over buckets, which overlap each other and the backward pass.
        relative_error = ||g - C(g)|| / ||g|| over the whole gradient (g compensated by error
        feedback), and residual_norm (in unscaled gradient units), are measured on every
        ``log_every``-th step only: the latest measurement, NaN before the first.
        """
        with self.telemetry.lock:
            totals = dict(self.telemetry.totals)
            last = dict(self.telemetry.last) if self.telemetry.last else None
            measured = self.telemetry.last_measured
        dense = totals["bytes_dense"]
        scale = self._residual_scale or 1.0
        return {
            "compressor": self.compressor.spec,
            "steps": self.step,
            "bytes_sent": totals["bytes_sent"],
            "bytes_dense": dense,
            "ratio": totals["bytes_sent"] / dense if dense else float("nan"),
            "bytes_sent_last_step": self._last_step_bytes_sent,
            "compress_seconds": totals["compress_seconds"],
            "communicate_seconds": totals["communicate_seconds"],
            "decompress_seconds": totals["decompress_seconds"],
            "nonfinite_steps": totals["nonfinite_steps"],
            "residual_norm": math.sqrt(self._residuals.squared_norm()) / scale,
            "relative_error": measured["relative_error"] if measured else float("nan"),
            "relative_error_step": measured["step"] + 1 if measured else None,
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
        part = {
            "residuals": self._residuals.state_dict(),
            "warm_start": self._warm_start.state_dict(),
            "residual_scale": self._residual_scale,
            "counters": self.telemetry.state(),
        }
        buffer = io.BytesIO()
        torch.save(part, buffer)
        return {
            "version": _STATE_VERSION,
            "compressor": self.compressor.spec,
            "overrides": {pattern: c.spec for pattern, c in self.overrides.items()},
            "seed": self.seed,
            "world_size": self.world_size,
            "step": self.step,
            "ranks": {f"rank{self.rank}": buffer.getvalue()},
        }

    def gathered_state_dict(self) -> dict[str, Any]:
        """:meth:`state_dict` holding every rank's part, returned on every rank (one
        all_gather_object; every rank must call it). For frameworks that write one checkpoint
        from rank 0 (PyTorch Lightning, Hugging Face Trainer): each rank's
        :meth:`load_state_dict` of the same dict picks its own part."""
        mine = self.state_dict()
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, mine["ranks"], group=self.process_group)
        return {**mine, "ranks": {key: blob for part in parts for key, blob in part.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from :meth:`state_dict`.

        A different compressor is an error. A different world size keeps the step, resets the
        residuals to zero and warns (a rank's residual is only meaningful for the data that
        rank saw); PowerSGD's warm-start Q, the same on every rank, is kept. Residuals saved at
        another loss scale are brought to the current one at the next step.
        """
        version = state.get("version")
        if version not in (1, 2, _STATE_VERSION):
            raise ValueError(
                f"unsupported gradcomp state version {version!r}; "
                f"this gradcomp reads versions 1 to {_STATE_VERSION}"
            )
        if state["compressor"] != self.compressor.spec:
            raise ValueError(
                f"checkpoint was saved with compressor {state['compressor']!r} but "
                f"this hook uses {self.compressor.spec!r}"
            )
        part: dict[str, Any] | None
        if version != _STATE_VERSION:  # the flat per-rank layout of versions 1 and 2
            part = {
                "residuals": state["residuals"],
                "warm_start": state.get("warm_start", {}),
                "residual_scale": None,
                "counters": None,
            }
        else:
            saved = dict(state.get("overrides", {}))
            mine = {p: c.spec for p, c in self.overrides.items()}
            if saved != mine:
                warnings.warn(
                    f"gradcomp: checkpoint overrides {saved} differ from this hook's {mine}",
                    stacklevel=2,
                )
            if state.get("seed", self.seed) != self.seed:
                warnings.warn(
                    f"gradcomp: checkpoint seed {state['seed']} != this hook's {self.seed}; "
                    "stochastic compressors will draw differently than the saved run",
                    stacklevel=2,
                )
            blobs = state["ranks"]
            own = blobs.get(f"rank{self.rank}")
            blob = own if own else next((b for b in blobs.values() if b), None)
            part = torch.load(io.BytesIO(blob), weights_only=True) if blob else None
            if part is not None and not own:
                part["residuals"] = {}  # another rank's: only its warm start is shared
                part["counters"] = None
        self._residuals.reset()
        self._warm_start.reset()
        if part is not None:
            # Q is the same on every rank and does not depend on the world size.
            self._warm_start.load_state_dict(self._known(part["warm_start"], "warm-start Q"))
        same_world = state["world_size"] == self.world_size
        if not same_world:
            warnings.warn(
                f"gradcomp: checkpoint world size {state['world_size']} != current "
                f"{self.world_size}; error-feedback residuals reset to zero",
                stacklevel=2,
            )
        elif part is not None:
            self._residuals.load_state_dict(self._known(part["residuals"], "residual"))
        self._residual_scale = part["residual_scale"] if part is not None else None
        self.step = int(state["step"])
        self._record = None
        if version != _STATE_VERSION:
            self.telemetry.load({"totals": dict(state["counters"])})
        elif part is not None and part["counters"] is not None:
            self.telemetry.load(part["counters"])

    def _known(self, tensors: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
        """The entries whose names are parameters of this model (names saved before gradcomp
        stripped torch.compile's prefix are mapped); warns about the rest, which are dropped."""
        known = set(self._param_names.values())
        kept = {canonical_name(name): t for name, t in tensors.items()}
        unknown = sorted(name for name in kept if name not in known)
        if unknown:
            warnings.warn(
                f"gradcomp: checkpoint has {what}s for {len(unknown)} name(s) that are not "
                f"parameters of this model, dropped: {', '.join(unknown[:8])}",
                stacklevel=3,
            )
        return {name: t for name, t in kept.items() if name in known}


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
    buffer = bucket.buffer()
    group, world = state.process_group, state.world_size
    if not state._ranks_agree:
        check_ranks_agree(state._description, group, buffer.device)
        state._ranks_agree = True
    record = state._begin_bucket()
    if state.step < state.start_iter:  # dense warm-up, as DDP's own allreduce hook does it
        dense = buffer.numel() * buffer.element_size()
        issued = time.perf_counter()
        with record_function("gradcomp::communicate"):
            buffer.div_(world)
            work, fut = allreduce_async(buffer, group)
        state._end_issue(record, dense, dense, bucket.is_last())

        def finish_dense(done: torch.futures.Future) -> torch.Tensor:
            value = done.value()[0]
            state._finish_bucket(record, time.perf_counter() - issued)
            return value

        return state._then(bucket.index(), fut, finish_dense, work)

    codec = state._codec_for(bucket)
    if codec is None:  # only empty parameters: nothing to send on any rank
        state._end_issue(record, 0, 0, bucket.is_last())
        state._finish_bucket(record, 0.0)
        done: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        done.set_result(buffer)
        return done
    if state.low_rank:
        return _powersgd_exchange(state, bucket, codec, record)
    step = state.step  # _end_issue() below advances it after the last bucket
    started = time.perf_counter()
    with record_function("gradcomp::compress"):
        messages = codec.encode(buffer, step, record.measure)
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
    with record_function("gradcomp::communicate"):
        for (collective, _dtype, _numel, variable), message in zip(
            codec.channels, messages, strict=True
        ):
            if collective == "allreduce":
                work, fut = allreduce_async(message, group)
                received.append(message)
            else:
                if variable:
                    # The one blocking exchange: every rank's payload length, so all can gather
                    # at the longest (a rank with nothing to send still sends its headers).
                    used = exchange_lengths(message.numel(), group, world, message.device)
                    sent += 8
                    padded = message.new_zeros(max(used))
                    padded[: message.numel()] = message
                    message = padded  # what crosses the wire, and what stats() counts
                gathered, work, fut = allgather_async(message, group, world)
                received.append(gathered)
            sent += message.numel() * message.element_size()
            works.append(work)
            futures.append(fut)
    state._end_issue(record, sent, codec.numel * buffer.element_size(), bucket.is_last())

    def finish(done: torch.futures.Future) -> torch.Tensor:
        for fut in done.value() if len(futures) > 1 else [done]:
            fut.wait()  # re-raises a failed collective
        began = time.perf_counter()
        with record_function("gradcomp::decompress"):
            outcome = codec.decode(buffer, received, step, used)
        state._finish_bucket(record, began - issued, time.perf_counter() - began, outcome)
        return buffer

    combined = futures[0] if len(futures) == 1 else torch.futures.collect_all(futures)
    return state._then(bucket.index(), combined, finish, *futures, *works)


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
    with record_function("gradcomp::compress"):
        first = codec.encode_first(buffer, record.measure)
    record.compress_seconds += time.perf_counter() - started
    issued = time.perf_counter()
    with record_function("gradcomp::communicate"):
        first_work, _first_fut = allreduce_async(first, group)
        first_work.wait()
    record.communicate_seconds += time.perf_counter() - issued
    began = time.perf_counter()
    with record_function("gradcomp::compress"):
        second = codec.encode_second(first)
    record.compress_seconds += time.perf_counter() - began
    if record.measure:
        input_sq, error_sq = codec.measured
        record.input_sq += input_sq
        record.error_sq += error_sq
    issued = time.perf_counter()
    with record_function("gradcomp::communicate"):
        work, fut = allreduce_async(second, group)
    state._end_issue(
        record, codec.bytes_sent, codec.numel * buffer.element_size(), bucket.is_last()
    )

    def finish(done: torch.futures.Future) -> torch.Tensor:
        done.wait()  # re-raises a failed collective
        began = time.perf_counter()
        with record_function("gradcomp::decompress"):
            outcome = codec.decode(buffer, first, second)
        state._finish_bucket(record, began - issued, time.perf_counter() - began, outcome)
        return buffer

    return state._then(bucket.index(), fut, finish, work, first_work, _first_fut)


def _call_with_tail(
    fn: Callable[[torch.futures.Future], torch.Tensor],
    _tail: _CallbackTail,
    fut: torch.futures.Future,
) -> torch.Tensor:
    return fn(fut)


@atexit.register
def _drain_at_exit() -> None:
    # atexit runs before the interpreter starts finalizing, while threads can still take the GIL.
    for state in list(_LIVE_STATES):
        if not state.wait_for_callbacks():
            warnings.warn("gradcomp: communication callbacks still running at exit", stacklevel=1)


def _check_device(name: str, device: torch.device) -> None:
    """Parameters must be on the CPU, or on CUDA when this build has the CUDA kernels."""
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise NotImplementedError(
            f"parameter {name!r} is on {device}; gradcomp supports cpu and cuda devices"
        )
    if not _C.has_cuda_kernels():
        raise NotImplementedError(
            f"parameter {name!r} is on {device} but this gradcomp build has no CUDA kernels "
            "(nvcc was not on PATH when it was built); reinstall with nvcc available and a "
            "CUDA build of torch"
        )


def canonical_name(name: str) -> str:
    """A parameter's name without torch.compile's ``_orig_mod.`` segments, so that residuals,
    overrides and checkpoints use the same names whether or not (and where) a model is
    compiled."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def _check_reducer(model: DistributedDataParallel) -> None:
    if getattr(model, "_use_python_reducer", False):
        raise ValueError(
            "this DDP model uses DDP's Python reducer (torch._dynamo.config.optimize_ddp = "
            "'python_reducer', for compiled autograd), which calls comm hooks per parameter; "
            "gradcomp needs DDP's C++ reducer: use optimize_ddp='ddp_optimizer' (the default) "
            "and do not enable compiled autograd"
        )


def _check_overrides(
    config: CompressorConfig,
    overrides: dict[str, CompressorConfig],
    param_numels: dict[str, int] | None,
) -> None:
    """PowerSGD's codec takes one method: with it, overrides may only send tensors dense. Every
    pattern must match a parameter (a typo would otherwise silently compress everything)."""
    for pattern, override in overrides.items():
        if isinstance(override, NoCompression):
            continue
        if isinstance(config, PowerSGD) or isinstance(override, PowerSGD):
            raise ValueError(
                f"override {pattern!r}: {override.spec!r} beside main compressor {config.spec!r}; "
                "PowerSGD compresses a whole bucket at once, so with powersgd (as the main "
                "compressor or an override) an override may only be 'none' (send dense)"
            )
        if isinstance(override, RandomK) and override.unbiased:
            raise ValueError(
                f"override {pattern!r}: randomk with unbiased=1 cannot run with error feedback; "
                "use unbiased=0"
            )
    if param_numels is None:
        return
    for pattern in overrides:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in param_numels):
            names = list(param_numels)
            shown = ", ".join(names[:12])
            if len(names) > 12:
                shown += f", ... ({len(names)} in all)"
            raise ValueError(
                f"override pattern {pattern!r} matches no parameter (fnmatch syntax, matched "
                f"against full names); parameters: {shown}"
            )


_GRADIENT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_dtype(name: str, dtype: torch.dtype) -> None:
    """Residuals, payloads and the dense channel are float32: wider or complex gradients would
    lose precision or meaning, so they are refused rather than silently rounded."""
    if dtype not in _GRADIENT_DTYPES:
        raise TypeError(
            f"parameter {name!r} is {dtype}; gradcomp compresses float32, bfloat16 and float16 "
            "gradients (keep such parameters out of the DDP model, or convert them)"
        )


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range; valid: {low} <= {name} <= {high}")


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
    **options: Any,
) -> HookState:
    """Registers gradcomp's communication hook on a DDP model and returns its HookState.

    Args:
        model: the DistributedDataParallel-wrapped model.
        compressor: a name ("topk"), a spec string ("topk:ratio=0.01") or a config object
            (``gradcomp.TopK(ratio=0.01)``).
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
        **options: compressor options, e.g. ``ratio=0.01``.
    """
    if not isinstance(model, DistributedDataParallel):
        raise TypeError(
            "gradcomp expects a torch.nn.parallel.DistributedDataParallel model, got "
            f"{type(model).__name__}; wrap it first: model = DistributedDataParallel(model)"
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
        **options,
    )
    model.register_comm_hook(state, comm_hook)
    return state
