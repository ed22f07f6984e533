"""The DDP communication hook: register(), HookState and comm_hook().

No `from __future__ import annotations` here: DDP checks comm_hook's annotations at runtime
(bucket: dist.GradBucket -> torch.futures.Future[torch.Tensor]).
"""

import atexit
import functools
import math
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gradcomp import _C
from gradcomp.comm import allgather_async, allreduce_async, exchange_lengths
from gradcomp.config import CompressorConfig, RandomK, resolve_config

__all__ = ["HookState", "comm_hook", "register"]

_STATE_VERSION = 2  # 2: adds PowerSGD's warm-start matrices

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
    """Everything the hook keeps between steps: the compressor, per-parameter error feedback,
    one codec per bucket layout, the step counter and the byte and time counters.

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
    ) -> None:
        _check_int("min_numel", min_numel, 0, 2**62)
        _check_int("start_iter", start_iter, 0, 2**62)
        _check_int("seed", seed, 0, 2**64 - 1)
        if not isinstance(error_feedback, bool):
            raise TypeError(f"error_feedback must be a bool, got {type(error_feedback).__name__}")
        if isinstance(config, RandomK) and config.unbiased and error_feedback:
            raise ValueError(
                "randomk with unbiased=1 scales each sent value by ~numel/k, so error feedback "
                "would keep -(numel/k - 1) times it and diverge; use unbiased=0 with "
                "error_feedback=True, or error_feedback=False with unbiased=1"
            )
        if not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialized: call "
                "dist.init_process_group(...) (torchrun sets up the env) first"
            )
        self.config = config
        self.compressor = config.build()
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
        self.step = 0
        self._param_names = param_names
        self._residuals = _C.ErrorFeedback()
        self._warm_start = _C.ErrorFeedback()  # PowerSGD's Q per parameter
        self._codecs: dict[int, tuple[tuple[int, ...], Any]] = {}
        self._bytes_sent = 0
        self._bytes_dense = 0
        self._compress_seconds = 0.0
        self._decompress_seconds = 0.0
        self._last_step_bytes_sent = 0
        self._step_bytes_sent = 0
        self._pending_callbacks = 0
        self._pending_lock = threading.Lock()
        # The futures and Work handles of the latest step per bucket: holding them here means
        # the teardown on the communication thread never drops the last reference to an object
        # that owns Python state (see comm.py and _CallbackTail).
        self._in_flight: dict[int, tuple[torch.futures.Future | dist.Work, ...]] = {}
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
        **options: Any,
    ) -> "HookState":
        """A state for ``model`` without registering it: for
        ``model.register_comm_hook(state, gradcomp.comm_hook)``. Arguments as in register()."""
        if not isinstance(model, DistributedDataParallel):
            raise TypeError(
                "gradcomp expects a torch.nn.parallel.DistributedDataParallel model, got "
                f"{type(model).__name__}; wrap it first: model = DistributedDataParallel(model)"
            )
        config = resolve_config(compressor, options)
        names: dict[int, str] = {}
        for name, param in model.module.named_parameters():
            _check_device(name, param.device)
            names[id(param)] = name
        return cls(
            config,
            names,
            process_group=process_group,
            error_feedback=error_feedback,
            min_numel=min_numel,
            start_iter=start_iter,
            seed=seed,
        )

    # -- the per-bucket work -----------------------------------------------------------------

    @property
    def low_rank(self) -> bool:
        """True for PowerSGD, which runs two allreduce rounds per bucket."""
        return self.compressor.collective == "lowrank"

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
            offset = (grad.data_ptr() - base) // item
            rows = param.shape[0] if param.dim() >= 2 else 0
            entries.append((name, offset, numel, numel >= self.min_numel, rows))
        residuals = self._residuals if self.error_feedback else None
        codec: Any
        if self.low_rank:
            codec = _C.PowerSgdCodec(
                self.compressor, entries, residuals, self._warm_start, self.seed, self.world_size
            )
        else:
            codec = _C.BucketCodec(
                self.compressor, entries, residuals, self.seed, self.rank, self.world_size
            )
        self._codecs[bucket.index()] = (key, codec)
        return codec

    def _count(self, sent: int, dense: int, last: bool) -> None:
        self._bytes_sent += sent
        self._bytes_dense += dense
        self._step_bytes_sent += sent
        if last:
            self._last_step_bytes_sent = self._step_bytes_sent
            self._step_bytes_sent = 0
            self.step += 1

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
        """Cumulative counters since registration (or the last load_state_dict).

        bytes_sent: bytes this rank handed to collectives; bytes_dense: what a dense fp32
        allreduce of the same gradients would hand over; ratio = bytes_sent / bytes_dense.
        """
        return {
            "compressor": self.compressor.spec,
            "steps": self.step,
            "bytes_sent": self._bytes_sent,
            "bytes_dense": self._bytes_dense,
            "ratio": self._bytes_sent / self._bytes_dense if self._bytes_dense else float("nan"),
            "bytes_sent_last_step": self._last_step_bytes_sent,
            "compress_seconds": self._compress_seconds,
            "decompress_seconds": self._decompress_seconds,
            "residual_norm": math.sqrt(self._residuals.squared_norm()),
        }

    def state_dict(self) -> dict[str, Any]:
        """This rank's hook state: residuals keyed by parameter name, step and counters."""
        return {
            "version": _STATE_VERSION,
            "compressor": self.compressor.spec,
            "world_size": self.world_size,
            "step": self.step,
            "residuals": self._residuals.state_dict(),
            "warm_start": self._warm_start.state_dict(),
            "counters": {
                "bytes_sent": self._bytes_sent,
                "bytes_dense": self._bytes_dense,
                "compress_seconds": self._compress_seconds,
                "decompress_seconds": self._decompress_seconds,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from :meth:`state_dict`. A different compressor is an error; a
        different world size keeps the step but resets the residuals, with a warning (a rank's
        residual is only meaningful for the data that rank saw). PowerSGD's warm-start
        matrices are restored whatever the world size: they are the same on every rank."""
        if state.get("version") not in (1, _STATE_VERSION):
            raise ValueError(
                f"unsupported gradcomp state version {state.get('version')!r}; "
                f"this gradcomp reads versions 1 to {_STATE_VERSION}"
            )
        if state["compressor"] != self.compressor.spec:
            raise ValueError(
                f"checkpoint was saved with compressor {state['compressor']!r} but "
                f"this hook uses {self.compressor.spec!r}"
            )
        self._residuals.reset()
        self._warm_start.reset()
        # Q is the same on every rank and does not depend on the world size.
        self._warm_start.load_state_dict(state.get("warm_start", {}))
        if state["world_size"] != self.world_size:
            warnings.warn(
                f"gradcomp: checkpoint world size {state['world_size']} != current "
                f"{self.world_size}; error-feedback residuals reset to zero",
                stacklevel=2,
            )
        else:
            self._residuals.load_state_dict(state["residuals"])
        self.step = int(state["step"])
        counters = state["counters"]
        self._bytes_sent = int(counters["bytes_sent"])
        self._bytes_dense = int(counters["bytes_dense"])
        self._compress_seconds = float(counters["compress_seconds"])
        self._decompress_seconds = float(counters["decompress_seconds"])


def comm_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The DDP communication hook: compensate, compress, exchange, decompress, average.

    Use through :func:`register`, or ``ddp.register_comm_hook(state, gradcomp.comm_hook)``.
    """
    buffer = bucket.buffer()
    group, world = state.process_group, state.world_size
    if state.step < state.start_iter:  # dense warm-up, as DDP's own allreduce hook does it
        state._count(buffer.numel() * buffer.element_size(), 4 * buffer.numel(), bucket.is_last())
        buffer.div_(world)
        work, fut = allreduce_async(buffer, group)
        return state._then(bucket.index(), fut, _first_value, work)

    codec = state._codec_for(bucket)
    if state.low_rank:
        return _powersgd_exchange(state, bucket, codec)
    step = state.step  # _count() below advances it after the last bucket
    started = time.perf_counter()
    messages = codec.encode(buffer, step)
    state._compress_seconds += time.perf_counter() - started

    sent = 0
    received: list[torch.Tensor] = []
    futures: list[torch.futures.Future] = []
    works: list[dist.Work] = []
    used: list[int] = []
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
    state._count(sent, codec.dense_bytes, bucket.is_last())

    def finish(done: torch.futures.Future) -> torch.Tensor:
        for fut in done.value() if len(futures) > 1 else [done]:
            fut.wait()  # re-raises a failed collective
        began = time.perf_counter()
        codec.decode(buffer, received, step, used)
        state._decompress_seconds += time.perf_counter() - began
        return buffer

    combined = futures[0] if len(futures) == 1 else torch.futures.collect_all(futures)
    return state._then(bucket.index(), combined, finish, *futures, *works)


def _powersgd_exchange(
    state: HookState, bucket: dist.GradBucket, codec: Any
) -> torch.futures.Future[torch.Tensor]:
    """PowerSGD's two rounds: allreduce [dense | P], orthonormalize, allreduce Q, decode.

    Round 1 is waited for here, so that every collective is issued from this thread in bucket
    order on every rank. Issuing round 2 from round 1's completion callback (as PyTorch's
    powerSGD_hook does) lets ranks interleave one bucket's Q with another bucket's P in
    different orders once a model has several buckets, which Gloo reports as a size mismatch.
    """
    buffer = bucket.buffer()
    group = state.process_group
    started = time.perf_counter()
    first = codec.encode_first(buffer)
    state._compress_seconds += time.perf_counter() - started
    state._count(codec.bytes_sent, codec.dense_bytes, bucket.is_last())
    first_work, _first_fut = allreduce_async(first, group)
    first_work.wait()
    began = time.perf_counter()
    second = codec.encode_second(first)
    state._compress_seconds += time.perf_counter() - began
    work, fut = allreduce_async(second, group)

    def finish(done: torch.futures.Future) -> torch.Tensor:
        done.wait()  # re-raises a failed collective
        began = time.perf_counter()
        codec.decode(buffer, first, second)
        state._decompress_seconds += time.perf_counter() - began
        return buffer

    return state._then(bucket.index(), fut, finish, work, first_work, _first_fut)


def _call_with_tail(
    fn: Callable[[torch.futures.Future], torch.Tensor],
    _tail: _CallbackTail,
    fut: torch.futures.Future,
) -> torch.Tensor:
    return fn(fut)


def _first_value(fut: torch.futures.Future) -> torch.Tensor:
    return fut.value()[0]


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
        **options: compressor options, e.g. ``ratio=0.01``.
    """
    state = HookState.for_model(
        model,
        compressor,
        error_feedback=error_feedback,
        min_numel=min_numel,
        start_iter=start_iter,
        process_group=process_group,
        seed=seed,
        **options,
    )
    model.register_comm_hook(state, comm_hook)
    return state
