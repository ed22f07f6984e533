from __future__ import annotations

import pytest
import torch

import gradcomp
from gradcomp import ops

from reference import topk as reference_topk

SIZES = [1, 2, 3, 31, 1000, 32769, 100_003, 1_000_000]


def _sample(n: int, kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(n, generator=g)
    if kind == "ties":
        return torch.randint(-3, 4, (n,), generator=g).float() * 0.5
    return torch.zeros(n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros"])
def test_topk_compress_matches_reference(n: int, kind: str) -> None:
    x = _sample(n, kind, seed=n)
    for k in sorted({1, max(1, n // 100), max(1, n // 2), n}):
        values, indices = ops.topk_compress(x, k)
        ref_values, ref_indices = reference_topk(x, k)
        assert indices.dtype == torch.int32 and values.dtype == torch.float32
        torch.testing.assert_close(indices, ref_indices, rtol=0, atol=0)
        torch.testing.assert_close(values, ref_values, rtol=0, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_topk_compress_is_independent_of_thread_count(threads: int) -> None:
    torch.set_num_threads(threads)
    x = _sample(700_001, "ties", seed=3)
    values, indices = ops.topk_compress(x, 7001)
    ref_values, ref_indices = reference_topk(x, 7001)
    assert torch.equal(indices, ref_indices) and torch.equal(values, ref_values)


def test_topk_compress_reads_any_shape_and_layout() -> None:
    x = torch.randn(64, 48).t()  # non-contiguous
    values, indices = ops.topk_compress(x, 30)
    ref_values, ref_indices = reference_topk(x.contiguous(), 30)
    assert torch.equal(indices, ref_indices) and torch.equal(values, ref_values)


def test_non_finite_values_are_documented_order() -> None:
    x = torch.tensor([1.0, float("-inf"), 1e30, float("nan"), -2.0, float("inf"), -0.0])
    values, indices = ops.topk_compress(x, 3)
    assert indices.tolist() == [1, 3, 5]  # NaN above inf above every finite value
    assert torch.isnan(values[1]) and values[0] == float("-inf")


@pytest.mark.parametrize("n", [1, 17, 100_000])
def test_decompress_inverts_compress_on_selected(n: int) -> None:
    x = torch.randn(n)
    k = max(1, n // 10)
    values, indices = ops.topk_compress(x, k)
    dense = ops.topk_decompress(values, indices, n)
    expected = torch.zeros(n)
    expected[indices.long()] = x[indices.long()]
    assert torch.equal(dense, expected)


def test_decompress_accumulates_repeated_indices() -> None:
    out = ops.topk_decompress(torch.tensor([1.0, 2.0]), torch.tensor([3, 3], dtype=torch.int32), 4)
    assert out.tolist() == [0.0, 0.0, 0.0, 3.0]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ops.topk_compress(torch.randn(10), 0), ValueError, "k=0 is out of range"),
        (lambda: ops.topk_compress(torch.randn(10), 11), ValueError, "1 <= k <= 10"),
        (lambda: ops.topk_compress(torch.randn(10).double(), 1), TypeError, "float32"),
        (lambda: ops.topk_compress(torch.empty(0), 1), ValueError, "0 elements"),
        (
            lambda: ops.topk_decompress(torch.ones(1), torch.tensor([10], dtype=torch.int32), 10),
            IndexError,
            r"index 10 .* outside \[0, 10\)",
        ),
        (
            lambda: ops.topk_decompress(torch.ones(1), torch.tensor([-1], dtype=torch.int32), 10),
            IndexError,
            "index -1",
        ),
        (
            lambda: ops.topk_decompress(torch.ones(2), torch.zeros(1, dtype=torch.int32), 10),
            ValueError,
            "equal length",
        ),
        (
            lambda: ops.topk_decompress(torch.ones(1), torch.zeros(1, dtype=torch.int64), 10),
            TypeError,
            "int32",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_opcheck_topk_compress() -> None:
    for n, k in [(1, 1), (100, 7), (40_000, 400)]:
        torch.library.opcheck(torch.ops.gradcomp.topk_compress.default, (torch.randn(n), k))


def test_opcheck_topk_decompress() -> None:
    values, indices = ops.topk_compress(torch.randn(500), 20)
    torch.library.opcheck(torch.ops.gradcomp.topk_decompress.default, (values, indices, 500))


def test_ops_trace_with_fake_tensors() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(1000)
        values, indices = ops.topk_compress(x, 10)
        dense = ops.topk_decompress(values, indices, 1000)
    assert values.shape == (10,) and indices.dtype == torch.int32 and dense.shape == (1000,)


def test_ops_under_torch_compile() -> None:
    def roundtrip(x: torch.Tensor) -> torch.Tensor:
        values, indices = ops.topk_compress(x, 5)
        return ops.topk_decompress(values, indices, x.numel())

    compiled = torch.compile(roundtrip, backend="aot_eager", fullgraph=True)
    x = torch.randn(100)
    assert torch.equal(compiled(x), roundtrip(x))


def test_compressor_names_match_python_configs() -> None:
    assert gradcomp.compressor_names() == sorted(gradcomp.config.CONFIGS)
