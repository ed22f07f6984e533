"""Per-step and cumulative counters of the hook, the log line and the TensorBoard scalars.

A step's buckets finish on torch.distributed's threads in any order; a step's record is
complete when its last bucket has been issued and every issued bucket has finished.
Nothing here reads the device in the hot path: a CUDA loss scale stays a tensor until stats()
or a logged step reads it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

import torch

__all__ = [
    "ScalarWriter",
    "StepRecord",
    "StepTracker",
    "Telemetry",
    "check_writer",
    "open_writer",
    "ratio",
    "scalar",
]

logger = logging.getLogger("gradcomp")


class ScalarWriter(Protocol):
    """What gradcomp needs of a TensorBoard writer (torch.utils.tensorboard.SummaryWriter)."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> Any: ...


def open_writer(tensorboard: str | os.PathLike[str] | ScalarWriter) -> ScalarWriter:
    """A SummaryWriter for a log directory, or the writer given."""
    if isinstance(tensorboard, (str, os.PathLike)):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch raises this when the tensorboard package is missing
            raise ImportError(
                f"tensorboard={os.fspath(tensorboard)!r} needs the tensorboard package: "
                "pip install tensorboard (or pass any object with add_scalar)"
            ) from error
        return SummaryWriter(log_dir=os.fspath(tensorboard))
    check_writer(tensorboard)
    return tensorboard


def check_writer(tensorboard: object) -> None:
    """Refuses what is neither a log directory nor a writer (on every rank, before any is
    opened: only rank 0 opens one)."""
    if not isinstance(tensorboard, (str, os.PathLike)) and not callable(
        getattr(tensorboard, "add_scalar", None)
    ):
        raise TypeError(
            "tensorboard must be a log directory or a writer with add_scalar(tag, value, step), "
            f"got {type(tensorboard).__name__}"
        )


def scalar(value: float | torch.Tensor) -> float:
    """A float from a host float or a one-element tensor (which may wait for the device)."""
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def ratio(part: float, whole: float) -> float | None:
    """part / whole; None when there is no whole yet (nothing sent)."""
    return part / whole if whole else None


def _fmt(value: float | None, spec: str) -> str:
    # A measured step may still lack a value (an all-zero gradient has no relative error).
    return "n/a" if value is None else format(value, spec)


@dataclasses.dataclass
class StepRecord:
    """One step's counters, filled by its buckets."""

    step: int
    loss_scale: float | torch.Tensor  # a tensor on the device for CUDA buckets
    measure: bool
    bytes_sent: int = 0
    bytes_dense: int = 0
    wire_bytes: int = 0
    wire_dense: int = 0
    wire_between_nodes: int = 0
    compress_seconds: float = 0.0
    communicate_seconds: float = 0.0
    decompress_seconds: float = 0.0
    input_sq: float = 0.0
    error_sq: float = 0.0
    nonfinite_buckets: int = 0
    issued: int = 0
    finished: int = 0
    closed: bool = False  # its last bucket has been issued
    residual_norm: float | None = None  # set on measured steps only

    def summary(self) -> dict[str, Any]:
        """The step's counters; a value the step did not measure (or a ratio of nothing) is
        None, never 0.0 or NaN, so that it cannot pass for a measurement."""
        measured = self.measure and self.input_sq > 0
        return {
            "step": self.step,
            "bytes_sent": self.bytes_sent,
            "bytes_dense": self.bytes_dense,
            "ratio": ratio(self.bytes_sent, self.bytes_dense),
            "wire_bytes": self.wire_bytes,
            "wire_bytes_dense": self.wire_dense,
            "wire_ratio": ratio(self.wire_bytes, self.wire_dense),
            "wire_bytes_between_nodes": self.wire_between_nodes,
            "compress_seconds": self.compress_seconds,
            "communicate_seconds": self.communicate_seconds,
            "decompress_seconds": self.decompress_seconds,
            "nonfinite_buckets": self.nonfinite_buckets,
            "loss_scale": self.loss_scale,
            "relative_error": math.sqrt(self.error_sq / self.input_sq) if measured else None,
            "residual_norm": self.residual_norm,
        }


class Telemetry:
    """Collects StepRecords into cumulative counters; logs and writes scalars every N steps."""

    def __init__(self, log_every: int, writer: ScalarWriter | None, log_rank: bool) -> None:
        self.log_every = log_every
        self.writer = writer
        self.log_rank = log_rank  # this rank logs and writes (rank 0 of the hook's group)
        self.lock = threading.Lock()
        self.totals = {
            "bytes_sent": 0,
            "bytes_dense": 0,
            "wire_bytes": 0,
            "wire_bytes_dense": 0,
            "wire_bytes_between_nodes": 0,
            "compress_seconds": 0.0,
            "communicate_seconds": 0.0,
            "decompress_seconds": 0.0,
            "nonfinite_steps": 0,
        }
        self.last: dict[str, Any] | None = None
        self.last_measured: dict[str, Any] | None = None
        if log_every > 0 and log_rank and not logger.hasHandlers():
            # Without any logging set-up, INFO lines would go nowhere; a user who configures
            # logging ("gradcomp" logger) replaces this.
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("gradcomp: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)

    def measures(self, step: int) -> bool:
        """Whether `step` (0-based) measures the relative error and residual norm."""
        return self.log_every > 0 and (step + 1) % self.log_every == 0

    def complete(self, record: StepRecord) -> None:
        """Adds a finished step; called once per step, on whichever thread finished it."""
        summary = record.summary()
        with self.lock:
            for key in (
                "bytes_sent",
                "bytes_dense",
                "wire_bytes",
                "wire_bytes_dense",
                "wire_bytes_between_nodes",
            ):
                self.totals[key] += summary[key]
            for key in ("compress_seconds", "communicate_seconds", "decompress_seconds"):
                self.totals[key] += summary[key]
            self.totals["nonfinite_steps"] += 1 if record.nonfinite_buckets else 0
            self.last = summary
            if record.measure:
                self.last_measured = summary
        if record.measure and self.log_rank:
            self._report(summary)

    def _report(self, s: dict[str, Any]) -> None:
        s = {**s, "loss_scale": scalar(s["loss_scale"])}
        with self.lock:
            totals = dict(self.totals)
        cumulative = totals["bytes_sent"] / totals["bytes_dense"] if totals["bytes_dense"] else 1.0
        logger.info(
            "step %d: sent %.3f MB (%s of dense, %.4f overall), on the wire %s of dense, "
            "compress %.1f ms, communicate %.1f ms, decompress %.1f ms, relative error %s, "
            "residual norm %s%s",
            s["step"] + 1,
            s["bytes_sent"] / 1e6,
            _fmt(s["ratio"], ".4f"),
            cumulative,
            _fmt(s["wire_ratio"], ".4f"),
            1e3 * s["compress_seconds"],
            1e3 * s["communicate_seconds"],
            1e3 * s["decompress_seconds"],
            _fmt(s["relative_error"], ".4f"),
            _fmt(s["residual_norm"], ".4g"),
            f", {s['nonfinite_buckets']} non-finite bucket(s)" if s["nonfinite_buckets"] else "",
        )
        if self.writer is not None:
            step = s["step"] + 1
            for key in (
                "ratio",
                "bytes_sent",
                "wire_ratio",
                "wire_bytes",
                "compress_seconds",
                "communicate_seconds",
                "decompress_seconds",
                "relative_error",
                "residual_norm",
                "loss_scale",
            ):
                if s[key] is not None:  # no point rather than a fake 0 or NaN
                    self.writer.add_scalar(f"gradcomp/{key}", float(s[key]), step)
            self.writer.add_scalar("gradcomp/cumulative_ratio", cumulative, step)

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"totals": dict(self.totals)}

    def load(self, state: dict[str, Any]) -> None:
        with self.lock:
            self.totals.update(state["totals"])


class StepTracker:
    """Which step the hook is in, and the record its buckets fill: opened by the step's first
    bucket, closed when its last bucket has been issued, complete when every issued bucket has
    also finished (buckets finish on several threads at once, hence the lock)."""

    def __init__(self, telemetry: Telemetry, on_complete: Callable[[StepRecord], None]) -> None:
        self.telemetry = telemetry
        self.step = 0
        self.record: StepRecord | None = None  # the step whose buckets are being issued
        self.last_bytes_sent = 0
        self._on_complete = on_complete

    def open(self, loss_scale: float | torch.Tensor) -> StepRecord:
        self.record = StepRecord(self.step, loss_scale, self.telemetry.measures(self.step))
        return self.record

    def end_issue(
        self,
        record: StepRecord,
        sent: int,
        dense: int,
        last: bool,
        wire: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        """Counts a bucket's bytes once its collectives are issued; the last one ends the step.
        ``wire``: what this rank puts on the wire, what a dense ring allreduce would, and what
        of the first crosses between nodes. Its callback may already have run (collectives can
        finish first), so the step may complete here."""
        with self.telemetry.lock:
            record.bytes_sent += sent
            record.bytes_dense += dense
            record.wire_bytes += wire[0]
            record.wire_dense += wire[1]
            record.wire_between_nodes += wire[2]
            if not last:
                return
            record.closed = True
            done = record.finished == record.issued
        self.record = None
        self.last_bytes_sent = record.bytes_sent
        self.step += 1
        if done:
            self._on_complete(record)

    def finish_bucket(
        self, record: StepRecord, communicate: float, decompress: float = 0.0, outcome: int = 1
    ) -> None:
        """A bucket's result is written (decode's outcome: 0 when a rank's bucket was not
        finite); the step completes with its last finished bucket."""
        with self.telemetry.lock:
            record.communicate_seconds += communicate
            record.decompress_seconds += decompress
            record.nonfinite_buckets += outcome == 0
            record.finished += 1
            done = record.closed and record.finished == record.issued
        if done:
            self._on_complete(record)

    def restart_at(self, step: int) -> None:
        """Continue from `step` (a loaded checkpoint)."""
        self.step = step
        self.record = None
