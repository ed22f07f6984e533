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
    methods = ["allreduce", "torch_fp16", "torch_bf16", "topk:ratio=0.01", "fp16", "auto"]
    # "auto" plans in its first 7 steps: 8 warm-up steps, so the timed one runs its plan.
    argv = ["bench", "--models", "tiny", "--world-sizes", "2", "--bandwidth", "loopback",
            "--steps", "1", "--warmup", "8", "--methods", *methods,
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
    # What "auto" chose and predicted, for itself and for every candidate measured beside it.
    auto = records["auto"]
    assert set(auto["auto_plan"]) == {str(b) for b in range(auto["buckets"])}
    for name in ("allreduce", "topk:ratio=0.01", "fp16", "auto"):
        r = records[name]
        assert r["predicted_step_ms"] > 0
        assert r["prediction_error"] == pytest.approx(r["step_ms"] / r["predicted_step_ms"] - 1)
    assert "predicted_step_ms" not in records["torch_fp16"]  # not one of auto's candidates
    summary = _load("auto_summary")
    (row,) = summary.summarize(json.loads(out.read_text())["records"])
    assert row["auto_vs_ddp"] == pytest.approx(auto["step_ms"] / records["allreduce"]["step_ms"])
    assert row["predicted"] == 4
    assert "| tiny | 2 | loopback |" in summary.markdown([row])


def _record(model: str, world: int, bandwidth: str, method: str, step_ms: float | None) -> dict:
    base = {"model": model, "world_size": world, "bandwidth": bandwidth, "method": method}
    return {**base, "step_ms": step_ms} if step_ms is not None else {**base, "failed": "boom"}


def test_plot_redraws_from_json_with_auto_torch_hooks_and_gaps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = _load("plot_ddp_network")
    records = []
    for model in ("big", "small"):
        for world in (2, 4):
            for bandwidth in ("loopback", "1"):
                records += [
                    _record(model, world, bandwidth, "allreduce", 100.0),
                    _record(model, world, bandwidth, "torch_fp16", 80.0),
                    _record(model, world, bandwidth, "torch_bf16", None),
                    _record(model, world, bandwidth, "topk:ratio=0.01", 50.0),
                    # measured in one panel, at one link speed only
                    _record(model, world, bandwidth, "auto", 40.0 if world == 2 else None),
                ]
    ratios = plot.ratios(records)
    assert ratios[("big", 2, "1", "topk:ratio=0.01")] == pytest.approx(0.5)
    assert ("big", 2, "1", "allreduce") not in ratios
    assert ("big", 4, "1", "auto") not in ratios
    methods = ["torch_fp16", "topk:ratio=0.01", "auto", "torch_bf16"]
    assert plot.method_order(methods) == ["auto", "topk:ratio=0.01", "torch_fp16", "torch_bf16"]
    assert plot.method_label("torch_fp16") == "PyTorch fp16"

    saved, png = tmp_path / "r.json", tmp_path / "r.png"
    saved.write_text(json.dumps({"meta": {}, "records": records}))
    assert plot.main([str(saved), "--out", str(png), "--dpi", "40"]) == 0
    assert str(png) in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without "auto", and with nothing but allreduce
    plain = [r for r in records if r["method"] != "auto"]
    plot.plot(plain, tmp_path / "plain.png", dpi=40)
    plot.plot([r for r in records if r["method"] == "allreduce"], tmp_path / "none.png", dpi=40)
    assert (tmp_path / "plain.png").exists() and (tmp_path / "none.png").exists()
