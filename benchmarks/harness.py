"""What every benchmark script shares: median timing and the JSON file of records."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch


def median_ms(fn: Callable[[], object], repeat: int, device: str = "cpu") -> float:
    """Median wall time of fn in ms over `repeat` runs, after one warm-up run (page faults,
    allocator, thread pool). On CUDA each run is timed from an idle device until the device
    has finished it, so launches and kernels are both counted."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(repeat):
        sync()
        began = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times)


def cuda_unavailable(script: str, hint: str = "") -> str | None:
    """Why `--device cuda` cannot run here (no visible GPU, or a gradcomp without CUDA
    kernels), or None when it can."""
    from gradcomp import _C

    if torch.cuda.is_available() and _C.has_cuda_kernels():
        return None
    return (
        f"{script}: --device cuda needs a visible GPU and a gradcomp build with CUDA kernels "
        f"(GPU visible: {torch.cuda.is_available()}, CUDA kernels: {_C.has_cuda_kernels()})"
        + (f"; {hint}" if hint else "")
    )


def write_records(path: Path, records: list[dict], extra_meta: dict | None = None) -> None:
    """{"meta": date, machine, torch, command (and extra_meta); "records": [...]} to path."""
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "command": " ".join(sys.argv),
        **(extra_meta or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
