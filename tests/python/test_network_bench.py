"""The end-to-end DDP benchmark's harness: the shaped network (root only), the worker's records
and the tables and plot (tiny model, two ranks, a step or two; no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@as_root
def test_shaped_link_runs_at_its_rate_and_is_torn_down() -> None:
    network = _load("shaped_network")
    with network.ShapedNetwork(2, 500.0, tag="t1") as net:
        assert sorted(network.namespaces_left("gcbencht1")) == sorted([*net.namespaces, net.hub])
        rate = net.measure_rate_gbit()
    # TCP payload over a 500 Mbit/s link: headers take about 5%, slow start a little more.
    assert 0.40 <= rate <= 0.51, rate
    assert network.namespaces_left("gcbencht1") == []


@as_root
def test_namespaces_are_deleted_when_the_body_fails() -> None:
    network = _load("shaped_network")
    with pytest.raises(RuntimeError, match="boom"):
        with network.ShapedNetwork(3, None, tag="t2"):
            raise RuntimeError("boom")
    assert network.namespaces_left("gcbencht2") == []


def test_shaped_network_refuses_bad_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    network = _load("shaped_network")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ValueError, match="world_size=1; valid: 2 to 200"):
        network.ShapedNetwork(1, 1000.0)
    with pytest.raises(ValueError, match="rate_mbit=0"):
        network.ShapedNetwork(2, 0.0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionError, match="need root"):
        network.ShapedNetwork(2, 1000.0)


def test_benchmark_refuses_shaped_links_without_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("bench_ddp_network")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys, "argv", ["bench", "--bandwidth", "1", "--models", "tiny"])
    assert bench.main() == 2
    assert "need root" in capsys.readouterr().err


def test_loopback_run_writes_records_table_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _load("bench_ddp_network")
    out, table, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    methods = ["allreduce", "torch_fp16", "torch_bf16", "topk:ratio=0.01", "fp16"]
    argv = ["bench", "--models", "tiny", "--world-sizes", "2", "--bandwidth", "loopback",
            "--steps", "1", "--warmup", "1", "--methods", *methods,
            "--json", str(out), "--markdown", str(table), "--plot", str(png)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    records = {r["method"]: r for r in json.loads(out.read_text())["records"]}
    assert list(records) == methods
    # DDP refuses PyTorch's bf16 hook without NCCL; the run records why and goes on.
    assert "NCCL" in records["torch_bf16"]["skipped"]
    dense = records["allreduce"]["dense_bytes"]
    assert records["allreduce"]["bytes_per_step"] == dense
    assert records["torch_fp16"]["bytes_per_step"] == dense // 2  # counted at the collective
    assert 0.015 < records["topk:ratio=0.01"]["bytes_vs_dense"] < 0.03
    for name in ("allreduce", "torch_fp16", "topk:ratio=0.01", "fp16"):
        r = records[name]
        assert r["world_size"] == 2 and r["bandwidth"] == "loopback"
        assert r["step_ms"] > 0 and r["compute_ms"] > 0
        assert r["exposed_comm_ms"] == pytest.approx(r["step_ms"] - r["compute_ms"])
        assert r["speedup_vs_allreduce"] == pytest.approx(
            records["allreduce"]["step_ms"] / r["step_ms"]
        )
    text = table.read_text()
    assert "| topk:ratio=0.01 |" in text and "not measured: TypeError" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
