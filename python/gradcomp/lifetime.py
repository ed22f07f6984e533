"""The futures the hook hands to DDP, and how long everything they depend on lives.

Two jobs:

- On CUDA, the future DDP waits on must carry the stream the decode ran on. A future made by
  ``.then()`` inherits its parent's devices, so a bucket that travels in one message is fine.
  One that travels in several (the dense fp32 channel plus a payload channel) is joined with
  ``torch.futures.collect_all``, whose future PyTorch builds without devices, as is every
  ``.then()`` child of it: completing such a future records no CUDA event, so DDP would not wait
  for the decode's stream and could read the bucket while the decode still writes it. Those
  buckets get a future of their own, made with the bucket's device and completed from the
  callback, which records the callback's stream.
- A collective completes on a torch.distributed worker thread, which runs the callback and
  afterwards frees it (and, holding the last reference, the collective's Work). Both own Python
  state; freed while the interpreter is finalizing, they abort the process ("terminate called
  without an active exception"). The hook therefore keeps each bucket's futures and Work
  handles until the next step, counts live callbacks, and waits for them at exit.
"""

from __future__ import annotations

import atexit
import functools
import threading
import time
import warnings
import weakref
from collections.abc import Callable

import torch
import torch.distributed as dist

__all__ = ["InFlight"]

Callback = Callable[[torch.futures.Future], torch.Tensor]

# Every live InFlight, so that interpreter exit can wait for their callbacks.
_LIVE: weakref.WeakSet[InFlight] = weakref.WeakSet()


class _CallbackTail:
    """Lives exactly as long as one callback given to torch, counting it as live meanwhile."""

    __slots__ = ("_owner",)

    def __init__(self, owner: InFlight) -> None:
        self._owner = owner
        with owner._lock:  # += is not atomic across threads, even with the GIL
            owner.pending += 1

    def __del__(self) -> None:
        with self._owner._lock:
            self._owner.pending -= 1


class InFlight:
    """The futures and Work handles of each bucket's latest exchange, and the callbacks that
    torch has not freed yet."""

    def __init__(self) -> None:
        self.pending = 0  # callbacks given to torch and not yet freed by it
        self._lock = threading.Lock()
        self._held: dict[int, tuple[torch.futures.Future | dist.Work, ...]] = {}
        _LIVE.add(self)

    def __len__(self) -> int:
        return len(self._held)

    def held(self) -> list[torch.futures.Future | dist.Work]:
        """Every future and Work handle kept for the buckets' latest exchanges."""
        return [item for items in self._held.values() for item in items]

    def then(
        self,
        bucket_index: int,
        parents: list[torch.futures.Future],
        callback: Callback,
        device: torch.device,
        *keep: torch.futures.Future | dist.Work,
        into: torch.futures.Future | None = None,
    ) -> torch.futures.Future[torch.Tensor]:
        """The future DDP gets for a bucket: ``callback`` (which decodes into the bucket and
        returns it) runs once every parent has completed, and the future completes with its
        result, carrying the callback's CUDA stream when the bucket is on a GPU. ``into``: a
        future handed to DDP earlier (see result_future), completed instead of a new one."""
        # The partial owns the tail, so the tail dies exactly when torch frees the callback.
        tail = _CallbackTail(self)
        if into is not None:
            parent = parents[0] if len(parents) == 1 else torch.futures.collect_all(parents)
            chained = parent.then(functools.partial(_complete, into, callback, tail))
            self._held[bucket_index] = (parent, chained, into, *parents, *keep)
            return into
        if len(parents) == 1:
            result = parents[0].then(functools.partial(_call, callback, tail))
            self._held[bucket_index] = (parents[0], result, *keep)
            return result
        combined = torch.futures.collect_all(parents)
        if device.type != "cuda":
            result = combined.then(functools.partial(_call, callback, tail))
            self._held[bucket_index] = (combined, result, *parents, *keep)
            return result
        result = torch.futures.Future(devices=[device])
        chained = combined.then(functools.partial(_complete, result, callback, tail))
        self._held[bucket_index] = (combined, chained, result, *parents, *keep)
        return result

    @staticmethod
    def result_future(device: torch.device) -> torch.futures.Future[torch.Tensor]:
        """A future for DDP to wait on before the collectives that complete it are issued
        (staged exchanges; see staging.py), carrying the CUDA stream it is completed on."""
        return (
            torch.futures.Future(devices=[device])
            if device.type == "cuda"
            else torch.futures.Future()
        )

    def wait_for_callbacks(self, timeout: float = 10.0) -> bool:
        """Waits until torch has freed every callback of earlier steps; False if some were still
        alive after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.pending > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)  # releases the GIL, which the teardown needs
        return True


def _call(callback: Callback, _tail: _CallbackTail, fut: torch.futures.Future) -> torch.Tensor:
    return callback(fut)


def _complete(
    result: torch.futures.Future,
    callback: Callback,
    _tail: _CallbackTail,
    fut: torch.futures.Future,
) -> None:
    # set_result records the current stream (the one the callback enqueued the decode on) for
    # the future's device; DDP's wait then orders its stream after the decode.
    try:
        value = callback(fut)
    except BaseException as error:  # DDP re-raises it from its wait
        result.set_exception(error)
        return
    result.set_result(value)


@atexit.register
def _drain_at_exit() -> None:
    # atexit runs before the interpreter starts finalizing, while threads can still take the GIL.
    for in_flight in list(_LIVE):
        if not in_flight.wait_for_callbacks():
            warnings.warn("gradcomp: communication callbacks still running at exit", stacklevel=1)
