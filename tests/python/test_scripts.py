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
