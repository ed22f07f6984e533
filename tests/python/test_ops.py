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


_PER_TENSOR = [
    "topk_approx",
    "topk_int8",
    "topk_bitmap",
    "randomk",
    "qsgd:bits=2",
    "sign",
    "int8",
    "fp16",
]


@pytest.mark.parametrize("spec", [*_PER_TENSOR, "bf16", "threshold:tau=0.5"])
def test_opcheck_generic_compress_and_decompress(spec: str) -> None:
    x = torch.randn(3000)
    key = ops.parameter_key("w") - 2**64 if ops.parameter_key("w") >= 2**63 else 0
    torch.library.opcheck(torch.ops.gradcomp.compress.default, (x, spec, 2, 1, key, 0))
    payload = ops.compress(x, spec, step=2, seed=1)
    torch.library.opcheck(torch.ops.gradcomp.decompress.default, (payload, spec, 3000, 2, 1, 0))


def test_opcheck_orthonormalize() -> None:
    torch.library.opcheck(torch.ops.gradcomp.orthonormalize.default, (torch.randn(2, 30, 3),))


@pytest.mark.parametrize("spec", _PER_TENSOR)
def test_generic_ops_under_torch_compile(spec: str) -> None:
    def roundtrip(x: torch.Tensor) -> torch.Tensor:
        return ops.decompress(ops.compress(x, spec, step=1), spec, x.numel(), step=1)

    compiled = torch.compile(roundtrip, backend="aot_eager", fullgraph=True)
    x = torch.randn(1000)
    assert torch.equal(compiled(x), roundtrip(x))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ops.compress(torch.randn(10), "powersgd"), ValueError, "bucket-level method"),
        (lambda: ops.compress(torch.randn(10), "qsgd:bits=3"), ValueError, r"bits in \{2, 4, 8\}"),
        (lambda: ops.compress(torch.randn(10), "sign:chunk=12"), ValueError, "multiple of 8"),
        (lambda: ops.compress(torch.randn(10).double(), "sign"), TypeError, "float32"),
        (lambda: ops.compress(torch.empty(0), "sign"), ValueError, "empty"),
        (
            lambda: ops.decompress(torch.zeros(3, dtype=torch.uint8), "sign", 10),
            ValueError,
            "needs",
        ),
        (
            lambda: ops.decompress(torch.zeros(4, dtype=torch.uint8), "threshold:tau=1", 1),
            ValueError,
            "fewer than the 8-byte header",
        ),
        (lambda: ops.decompress(torch.zeros(4), "fp16", 4), TypeError, "Half"),
    ],
)
def test_generic_ops_reject_bad_input(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_threshold_decompress_rejects_a_hostile_count() -> None:
    payload = torch.zeros(16, dtype=torch.uint8)
    payload[:4] = torch.tensor([100, 0, 0, 0], dtype=torch.uint8)  # claims 100 entries
    with pytest.raises(ValueError, match="corrupt payload: count 100"):
        ops.decompress(payload, "threshold:tau=1", 1000)


def test_orthonormalize_zeroes_dependent_columns() -> None:
    p = torch.randn(20, 1).repeat(1, 3)  # three copies of one column
    q = ops.orthonormalize(p)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q[:, 0].norm(), torch.tensor(1.0))
    assert torch.all(q[:, 1:] == 0)
