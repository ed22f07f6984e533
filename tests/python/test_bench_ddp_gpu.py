"""benchmarks/bench_ddp_gpu.py keeps working on the CPU (Gloo, tiny models): a record per
configuration, the tables, the time budget and the refusals (no timing asserted)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import gradcomp
from gradcomp import _C

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_ddp_gpu.py"
TIMEOUT = 120  # seconds; the smoke run takes about 7 s on the 2-core CI machine
TORCH_HOOKS = [
    "torch:allreduce_hook",
    "torch:fp16_compress_hook",
    "torch:bf16_compress_hook",
    "torch:powerSGD_hook",
]


def _load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # the script imports its neighbours
    spec = importlib.util.spec_from_file_location(SCRIPT.stem, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclass resolves annotations through sys.modules.
    monkeypatch.setitem(sys.modules, SCRIPT.stem, module)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exited {proc.returncode}; output:\n{output[-4000:]}"
    return proc.stdout


def test_cpu_smoke_run_writes_a_record_per_configuration(tmp_path: Path) -> None:
    out, table = tmp_path / "ddp.json", tmp_path / "ddp.md"
    models, buckets = ["mlp25m", "gpt2"], ["default", "one"]
    stdout = _run(
        *("--device", "cpu", "--scale", "tiny", "--steps", "2", "--warmup", "3"),
        *("--models", *models, "--buckets", *buckets),
        *("--json", str(out), "--markdown", str(table)),
    )
    result = json.loads(out.read_text())
    meta, records = result["meta"], result["records"]
    methods = [
        "plain DDP",
        *(f"gradcomp:{name}" for name in gradcomp.compressor_names()),
        *TORCH_HOOKS,
    ]
    expected = list(itertools.product(models, buckets, methods))
    assert [(r["model"], r["buckets"], r["method"]) for r in records] == expected
    assert meta["device"] == "cpu" and meta["backend"] == "gloo" and meta["scale"] == "tiny"
    assert meta["torch"] == torch.__version__ and meta["command"]
    assert meta["budget_exceeded"] is False and meta["not_run"] == []
    assert set(meta["models"]) == set(models)

    by_key: dict[tuple[str, str, str], dict[str, Any]] = {
        (r["model"], r["buckets"], r["method"]): r for r in records
    }
    for model, bucket_setting in itertools.product(models, buckets):
        plain = by_key[(model, bucket_setting, "plain DDP")]
        assert plain["status"] == "ok", plain["error"]
        assert plain["ratio"] == 1.0
        assert plain["bytes_ratio"] is None
    for r in records:
        assert r["parameters"] == meta["models"][r["model"]]["parameters"] > 0
        assert r["bucket_cap_mb"] == {"default": 25.0, "one": 10000.0}[r["buckets"]]
        if r["method"] == "torch:bf16_compress_hook" and r["status"] == "failed":
            assert r["error"], r  # Gloo has no bf16 allreduce hook: recorded, not fatal
            continue
        assert r["status"] == "ok" and r["error"] is None, (r["method"], r["error"])
        times = r["times_ms"]
        assert len(times) == 2 and all(math.isfinite(t) and t > 0 for t in times), r
        assert r["min_ms"] <= r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["max_ms"]
        assert math.isfinite(r["final_loss"]), r
        plain = by_key[(r["model"], r["buckets"], "plain DDP")]
        assert r["ratio"] == pytest.approx(r["median_ms"] / plain["median_ms"])
        if r["method"].startswith("gradcomp:"):
            assert 0 < r["bytes_ratio"] <= 1.01, r
            assert r["bytes_sent_last_step"] > 0
        else:
            assert r["bytes_ratio"] is None
    none = by_key[("mlp25m", "default", "gradcomp:none")]
    assert none["bytes_ratio"] == pytest.approx(1.0, abs=0.01)
    topk = by_key[("mlp25m", "default", "gradcomp:topk")]
    assert topk["bytes_ratio"] < 0.1

    text = table.read_text()
    assert "Command: `python " in text and "--scale tiny" in text
    for model, bucket_setting in itertools.product(models, buckets):
        assert f"#### {model} (" in text
        assert f"; buckets: {bucket_setting} (bucket_cap_mb" in text
    assert text.count("| method | ms/step |") == len(models) * len(buckets)
    assert text.count("| plain DDP | ") == len(models) * len(buckets)
    # A progress line per configuration as it finishes.
    assert sum(line.startswith("[") for line in stdout.splitlines()) == len(records)


def test_time_budget_stops_starting_configurations(tmp_path: Path) -> None:
    out, table = tmp_path / "ddp.json", tmp_path / "ddp.md"
    stdout = _run(
        *("--device", "cpu", "--scale", "tiny", "--models", "mlp25m", "--buckets", "one"),
        *("--methods", "topk", "--time-budget", "1e-9", "--json", str(out)),
        *("--markdown", str(table)),
    )
    result = json.loads(out.read_text())
    assert result["meta"]["budget_exceeded"] is True
    assert result["meta"]["not_run"] == ["mlp25m | buckets one | plain DDP",
                                         "mlp25m | buckets one | gradcomp:topk"]  # fmt: skip
    assert [r["status"] for r in result["records"]] == ["skipped", "skipped"]
    assert "time budget of 1e-09 s exceeded" in stdout
    assert "configurations not run" in table.read_text()


def test_unknown_method_is_refused_with_the_valid_ones(monkeypatch, capsys) -> None:
    bench = _load(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["bench", "--device", "cpu", "--methods", "topkk"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown method 'topkk'" in err and "'gradcomp:topk'" in err


def test_cuda_without_a_gpu_exits_with_status_2(monkeypatch, capsys) -> None:
    bench = _load(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["bench", "--device", "cuda", "--scale", "tiny"])
    if torch.cuda.is_available() and _C.has_cuda_kernels():
        pytest.skip("a GPU is visible: the refusal cannot be shown")
    assert bench.main() == 2
    assert "--device cuda needs a visible GPU" in capsys.readouterr().err
