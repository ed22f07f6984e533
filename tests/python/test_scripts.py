"""The benchmark and the demo's data loading keep working (tiny sizes; no timing asserted)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from gradcomp import _C

ROOT = Path(__file__).resolve().parents[2]


def _load(relative: str) -> ModuleType:
    sys.path.insert(0, str((ROOT / relative).parent))  # the scripts import their neighbours
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compressors_benchmark_writes_a_record_per_method(tmp_path: Path, monkeypatch) -> None:
    bench = _load("benchmarks/bench_compressors.py")
    out = tmp_path / "bench.json"
    table = tmp_path / "bench.md"
    argv = ["bench", "--numel", "4096", "--ratio", "0.01", "0.1", "--repeat", "1", "--json"]
    monkeypatch.setattr(sys, "argv", [*argv, str(out), "--markdown", str(table)])
    assert bench.main() == 0
    assert "| `topk:ratio=0.01` |" in table.read_text()
    records = json.loads(out.read_text())["records"]
    names = [r["compressor"].split(":")[0] for r in records]
    # Ratio-driven methods once per ratio, the rest once each.
    for name in ("topk", "topk_approx", "topk_int8", "randomk", "threshold"):
        assert names.count(name) == 2, name
    for name in ("sign", "int8", "fp16", "bf16", "powersgd"):
        assert names.count(name) == 1, name
    assert names.count("qsgd") == 2  # bits 4 and 8
    for r in records:
        assert r["device"] == "cpu" and r["numel"] == 4096 and r["dense_bytes"] == 4 * 4096
        assert 0 < r["wire_bytes"] <= 4 * 4096 + 8
        for key in ("copy_ms", "compress_ms", "decompress_ms", "compensate_compress_residual_ms"):
            assert r[key] >= 0
    fp16 = next(r for r in records if r["compressor"] == "fp16")
    assert fp16["wire_bytes"] == 2 * 4096
    for r in records:
        is_topk = r["compressor"].split(":")[0] in ("topk", "topk_approx", "topk_int8")
        assert ("torch_topk_ms" in r) == is_topk, r["compressor"]
        if is_topk:
            assert r["speedup_vs_torch_topk"] == r["torch_topk_ms"] / r["compress_ms"]


def test_compressors_benchmark_on_cuda_needs_a_gpu(monkeypatch, capsys) -> None:
    bench = _load("benchmarks/bench_compressors.py")
    monkeypatch.setattr(sys, "argv", ["bench", "--device", "cuda", "--numel", "4096"])
    if torch.cuda.is_available() and _C.has_cuda_kernels():
        pytest.skip("a GPU is visible: the refusal cannot be shown")
    assert bench.main() == 2
    assert "--device cuda needs a visible GPU" in capsys.readouterr().err


def _write_idx(path: Path, array: torch.Tensor) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.dim())
    header += struct.pack(f">{array.dim()}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.to(torch.uint8).numpy().tobytes())


def test_demo_reads_idx_files(tmp_path: Path) -> None:
    demo = _load("examples/fashion_mnist_ddp.py")
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([1, 0, 9], dtype=torch.uint8)
    image_file, label_file = demo.FILES["test"]
    _write_idx(tmp_path / image_file, images)
    _write_idx(tmp_path / label_file, labels)
    x, y = demo.load_fashion_mnist("test", tmp_path)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == [1, 0, 9]
    expected = (images[1].float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(x[1, 0], expected)


def test_demo_says_how_to_get_missing_data(tmp_path: Path) -> None:
    demo = _load("examples/fashion_mnist_ddp.py")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        demo.load_fashion_mnist("train", tmp_path)


def _suite_result(
    metric: str, values: dict[str, float], workload: str = "toy", lr: float = 0.05
) -> dict:
    runs = []
    for label, value in values.items():
        spec = None if label == "dense" else "topk:ratio=0.01"
        sent = 400.0 if spec is None else 8.0
        curve = [{"step": s, "bytes_sent": s * sent, metric: value - 0.1 / s} for s in (1, 2, 3)]
        runs.append(
            {
                "label": label,
                "spec": spec,
                "error_feedback": "without" not in label,
                metric: value,
                "bytes_per_step": sent,
                "dense_bytes_per_step": 400.0,
                "curve": curve,
            }
        )
    return {
        "workload": workload,
        "metric": metric,
        "world_size": 2,
        "recipe": {"optimizer": "sgd", "lr": lr, "batch_size": 64},
        "meta": {"torch": torch.__version__, "date": "2026-11-27T00:00:00+00:00"},
        "runs": runs,
    }


def test_convergence_report_writes_tables_and_curves(tmp_path: Path, monkeypatch) -> None:
    report = _load("scripts/convergence_report.py")
    accuracy = tmp_path / "acc.json"
    accuracy.write_text(
        json.dumps(
            _suite_result(
                "test_accuracy", {"dense": 0.91, "topk 1%": 0.905, "topk 1% without EF": 0.85}
            )
        )
    )
    loss = tmp_path / "loss.json"
    loss.write_text(json.dumps(_suite_result("val_loss", {"dense": 2.0, "topk 1%": 2.03}, "lm")))
    # A second run of the LM's recipe, by another command: merged into the LM's table.
    more = tmp_path / "more.json"
    more.write_text(json.dumps(_suite_result("val_loss", {"topk 1%": 9.0, "ef21": 2.01}, "lm")))
    out = tmp_path / "docs"
    argv = ["report", str(accuracy), str(loss), str(more), "--out", str(out), "--merged-json"]
    monkeypatch.setattr(sys, "argv", argv)
    assert report.main() == 0
    table = (out / "convergence_lm.md").read_text()
    assert "| topk 1% | `topk:ratio=0.01` | 2.0300 | +1.50% | 8 | 0.0200 (50x less) |" in table
    assert "| ef21 | `topk:ratio=0.01` | 2.0100 | +0.50% |" in table  # the first topk 1% kept
    assert "9.0000" not in table
    merged = json.loads((out / "convergence_lm.json").read_text())
    assert [r["label"] for r in merged["runs"]] == ["dense", "topk 1%", "ef21"]
    assert (out / "convergence_toy.md").is_file()
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_suite_result("val_loss", {"dense": 2.0}, "lm", lr=0.1)))
    monkeypatch.setattr(sys, "argv", ["report", str(loss), str(other), "--out", str(out)])
    with pytest.raises(ValueError, match="cannot merge runs of different recipes"):
        report.main()
    assert (out / "convergence_lm.png").stat().st_size > 10_000
    accuracy_table = report.table(json.loads(accuracy.read_text()))
    assert "| topk 1% | `topk:ratio=0.01` | 90.50% | -0.50 pt |" in accuracy_table
    assert "`topk:ratio=0.01`, no EF | 85.00% | -6.00 pt |" in accuracy_table


def test_convergence_recipe_overrides_are_checked(monkeypatch) -> None:
    _load("tests/convergence/suite.py")  # imports workloads as a module (dataclasses need one)
    workloads = sys.modules["workloads"]
    monkeypatch.setenv("GRADCOMP_CONVERGENCE_RECIPE", '{"lr": 0.01, "extra": {"steps": 7}}')
    recipe = workloads.recipe_for("char_lm")
    assert recipe.lr == 0.01 and recipe.extra["steps"] == 7 and recipe.extra["context"] == 64
    monkeypatch.setenv("GRADCOMP_CONVERGENCE_RECIPE", '{"learning_rate": 0.01}')
    with pytest.raises(ValueError, match="unknown fields \\['learning_rate'\\]"):
        workloads.recipe_for("char_lm")


@pytest.mark.distributed
def test_convergence_suite_runs_end_to_end_on_a_tiny_recipe(tmp_path: Path, monkeypatch) -> None:
    """The whole suite path (2 spawned ranks, every stage, the JSON) on 12 LM steps."""
    suite = _load("tests/convergence/suite.py")
    recipe = {"evals": 2, "warmup_steps": 2, "extra": {"steps": 12, "width": 32}}
    monkeypatch.setenv("GRADCOMP_CONVERGENCE_RECIPE", json.dumps(recipe))
    result = suite.run("char_lm", ["dense", "topk 1%"], tmp_path / "lm.json")
    dense, topk = result["runs"]
    assert result["recipe"]["extra"]["steps"] == 12
    assert [p["step"] for p in dense["curve"]] == [6, 12]
    assert dense["val_loss"] < 5.6 and topk["val_loss"] < 5.6  # ln 256 = 5.55 at the start
    assert 0.005 < topk["bytes_per_step"] / topk["dense_bytes_per_step"] < 0.1
    assert topk["curve"][-1]["bytes_sent"] == topk["bytes_per_step"] * 12
    with pytest.raises(ValueError, match="unknown methods \\['topk'\\]"):
        suite.run("char_lm", ["topk"], tmp_path / "x.json")
