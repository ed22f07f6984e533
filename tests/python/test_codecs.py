"""Bucket codecs with simulated ranks: what one rank encodes, the collective's result built by
hand, and what every rank decodes, against plain-PyTorch references."""

from __future__ import annotations

import pytest
import torch

from gradcomp import _C, ops

import reference

ENTRIES = [("a.weight", 0, 1000, True, 10), ("a.bias", 1000, 50, False, 0)]
ENTRIES += [("b.weight", 1050, 3000, True, 60)]
NUMEL = 4050


def _codecs(spec: str, world: int, error_feedback: bool = False) -> list[_C.BucketCodec]:
    method = _C.make_compressor(*_split(spec))
    return [
        _C.BucketCodec(method, ENTRIES, _C.ErrorFeedback() if error_feedback else None, 0, r, world)
        for r in range(world)
    ]


def _split(spec: str) -> tuple[str, dict[str, float]]:
    import gradcomp

    return gradcomp.parse_spec(spec)


def _exchange(codecs: list[_C.BucketCodec], buckets: list[torch.Tensor], step: int) -> None:
    """Encode on every rank, combine as the collectives would, decode on every rank."""
    messages = [c.encode(b, step) for c, b in zip(codecs, buckets, strict=True)]
    received, used = [], []
    for i, (collective, dtype, _numel, variable) in enumerate(codecs[0].channels):
        parts = [m[i] for m in messages]
        if collective == "allreduce":
            total = torch.stack([p.double() for p in parts]).sum(0).to(dtype)
            received.append(total)
        else:
            if variable:
                used = [p.numel() for p in parts]
                stride = max(used)
                parts = [torch.cat([p, p.new_zeros(stride - p.numel())]) for p in parts]
            received.append(torch.cat(parts))
    for codec, bucket in zip(codecs, buckets, strict=True):
        codec.decode(bucket, [t.clone() for t in received], step, used)


def test_threshold_codec_with_uneven_and_empty_payloads() -> None:
    codecs = _codecs("threshold:tau=1", 3)
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(NUMEL, generator=g), torch.zeros(NUMEL), torch.randn(NUMEL, generator=g)]
    grads[2] *= 3  # rank 2 sends far more than rank 0; rank 1 sends nothing
    buckets = [x.clone() for x in grads]
    _exchange(codecs, buckets, 0)
    expected = torch.zeros(NUMEL)
    for x in grads:
        expected += torch.where(x.abs() >= 1, x, torch.zeros_like(x))
    expected /= 3
    expected[1000:1050] = sum(x[1000:1050] for x in grads) / 3  # the bias travels dense
    for bucket in buckets:
        torch.testing.assert_close(bucket, expected)


def test_threshold_codec_rejects_a_truncated_payload() -> None:
    codec = _codecs("threshold:tau=1", 1)[0]
    bucket = torch.randn(NUMEL) * 3
    messages = codec.encode(bucket, 0)
    short = messages[1][: messages[1].numel() - 16]
    with pytest.raises(ValueError, match="corrupt payload|ends"):
        codec.decode(bucket, [messages[0], short], 0, [short.numel()])


def test_fp16_is_prescaled_so_large_sums_do_not_overflow() -> None:
    codecs = _codecs("fp16", 2)
    grads = [torch.full((NUMEL,), 40000.0), torch.full((NUMEL,), 30000.0)]
    buckets = [x.clone() for x in grads]
    _exchange(codecs, buckets, 0)
    for bucket in buckets:  # 70000 would overflow fp16 (max 65504); the average is 35000
        assert torch.isfinite(bucket).all()
        torch.testing.assert_close(bucket, torch.full((NUMEL,), 35000.0), rtol=1e-3, atol=0)


def test_randomk_rides_in_the_dense_allreduce_and_averages() -> None:
    codecs = _codecs("randomk:ratio=0.1", 2)
    assert [c[0] for c in codecs[0].channels] == ["allreduce"]
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(NUMEL, generator=g) for _ in range(2)]
    buckets = [x.clone() for x in grads]
    _exchange(codecs, buckets, 7)
    mean = (grads[0] + grads[1]) / 2
    for bucket in buckets:
        sent = bucket != 0
        sent[1000:1050] = True
        torch.testing.assert_close(bucket[sent], mean[sent])
        assert int((bucket[:1000] != 0).sum()) == 100  # the same 10% on both ranks


@pytest.mark.parametrize("spec", ["qsgd", "sign", "int8", "topk_int8:ratio=0.1"])
def test_gathered_methods_average_every_ranks_decoded_payload(spec: str) -> None:
    codecs = _codecs(spec, 2)
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(NUMEL, generator=g) for _ in range(2)]
    buckets = [x.clone() for x in grads]
    _exchange(codecs, buckets, 3)
    expected = torch.zeros(NUMEL)
    for rank, x in enumerate(grads):
        for name, offset, numel, compress, _rows in ENTRIES:
            part = x[offset : offset + numel]
            if compress:
                key = ops.parameter_key(name)
                payload = ops.compress(part, spec, step=3, tensor_key=key, rank=rank)
                part = ops.decompress(payload, spec, numel, step=3, tensor_key=key)
            expected[offset : offset + numel] += part / 2
    for bucket in buckets:
        torch.testing.assert_close(bucket, expected)


# -- PowerSGD ------------------------------------------------------------------------------


def _gram_schmidt(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clone()
    for j in range(p.shape[1]):
        for i in range(j):
            p[:, j] -= (p[:, i] @ p[:, j]) * p[:, i]
        p[:, j] /= p[:, j].norm()
    return p.float()


def _powersgd(world: int, error_feedback: bool) -> tuple[list, list, list]:
    method = _C.make_compressor("powersgd", {"rank": 2})
    efs = [_C.ErrorFeedback() if error_feedback else None for _ in range(world)]
    warm = [_C.ErrorFeedback() for _ in range(world)]
    codecs = [_C.PowerSgdCodec(method, ENTRIES, efs[r], warm[r], 0, world) for r in range(world)]
    return codecs, efs, warm


def _powersgd_step(codecs: list, buckets: list[torch.Tensor]) -> None:
    firsts = [c.encode_first(b) for c, b in zip(codecs, buckets, strict=True)]
    total = sum(firsts)
    mine = [total.clone() for _ in codecs]
    seconds = [c.encode_second(f) for c, f in zip(codecs, mine, strict=True)]
    q = sum(seconds)
    for c, b, f in zip(codecs, buckets, mine, strict=True):
        c.decode(b, f, q.clone())


def test_powersgd_codec_matches_the_algorithm() -> None:
    world = 2
    codecs, _efs, _warm = _powersgd(world, error_feedback=True)
    assert codecs[0].low_rank_matrices == 2
    assert codecs[0].first_numel == 1 + 50 + 2 * (10 + 60)  # flag, dense, P
    assert codecs[0].second_numel == 2 * (100 + 50)
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(NUMEL, generator=g) for _ in range(world)]
    buckets = [x.clone() for x in grads]
    _powersgd_step(codecs, buckets)

    expected = torch.zeros(NUMEL)
    expected[1000:1050] = sum(x[1000:1050] for x in grads) / world
    for name, offset, numel, _compress, rows in (ENTRIES[0], ENTRIES[2]):
        cols = numel // rows
        gen = torch.Generator().manual_seed(reference.philox_key(0, ops.parameter_key(name)))
        q0 = torch.randn(cols, 2, generator=gen)
        ms = [x[offset : offset + numel].view(rows, cols) for x in grads]
        p = _gram_schmidt(sum(m @ q0 for m in ms))
        q = sum(m.t() @ p for m in ms) / world
        expected[offset : offset + numel] = (p @ q.t()).reshape(-1)
    for bucket in buckets:
        torch.testing.assert_close(bucket, expected, rtol=1e-4, atol=1e-5)


def test_powersgd_error_feedback_keeps_the_projection_residual() -> None:
    codecs, efs, _warm = _powersgd(1, error_feedback=True)
    grad = torch.randn(NUMEL, generator=torch.Generator().manual_seed(4))
    bucket = grad.clone()
    _powersgd_step(codecs, [bucket])
    residuals = efs[0].state_dict()
    for name, offset, numel, _compress, _rows in (ENTRIES[0], ENTRIES[2]):
        # One rank: what was applied plus what was kept is the gradient.
        torch.testing.assert_close(
            bucket[offset : offset + numel] + residuals[name], grad[offset : offset + numel]
        )
    assert "a.bias" not in residuals  # dense tensors keep nothing


def test_powersgd_warm_start_improves_a_fixed_matrix() -> None:
    """Subspace iteration: with the same gradient every step and no error feedback, the
    warm-started approximation converges to the best rank-2 one (the SVD's)."""
    codecs, _efs, warm = _powersgd(1, error_feedback=False)
    g = torch.Generator().manual_seed(5)
    grad = torch.randn(NUMEL, generator=g)
    # A dominant rank-2 part plus noise, like a real gradient: a clear spectral gap.
    u0, v0 = torch.randn(60, 2, generator=g), torch.randn(50, 2, generator=g)
    grad[1050:] = (u0 @ v0.t() + 0.3 * torch.randn(60, 50, generator=g)).reshape(-1)
    m = grad[1050:].view(60, 50)
    u, s, vh = torch.linalg.svd(m)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    errors = []
    for _ in range(30):
        bucket = grad.clone()
        _powersgd_step(codecs, [bucket])
        errors.append(float((bucket[1050:].view(60, 50) - best).norm() / best.norm()))
    assert errors[-1] < 0.05 < errors[0], errors
    assert len(warm[0].state_dict()) == 2


def test_orthonormalize_op() -> None:
    x = torch.randn(3, 40, 4, generator=torch.Generator().manual_seed(6))
    q = ops.orthonormalize(x)
    torch.testing.assert_close(
        q.transpose(1, 2) @ q, torch.eye(4).expand(3, 4, 4), atol=1e-5, rtol=0
    )
    for b in range(3):
        torch.testing.assert_close(q[b], _gram_schmidt(x[b]), atol=1e-5, rtol=1e-4)


# Every method through its codec, as the hook runs them.
_ALL_SPECS = [
    "topk:ratio=0.1",
    "topk_approx:ratio=0.1",
    "topk_int8:ratio=0.1",
    "randomk:ratio=0.1",
    "threshold:density=0.05",
    "qsgd",
    "sign",
    "int8",
    "fp16",
    "bf16",
]


@pytest.mark.parametrize("spec", [*_ALL_SPECS, "powersgd"])
def test_a_nonfinite_gradient_on_one_rank_is_nan_on_every_rank(spec: str) -> None:
    """Rank 1's bucket holds an inf: every rank's result is all NaN (so GradScaler skips the step
    on all of them), rank 1 keeps its residuals exactly, the others stay finite, and the next
    finite step decodes normally again."""
    world = 3
    if spec == "powersgd":
        codecs, efs, warm = _powersgd(world, error_feedback=True)
    else:
        efs = [_C.ErrorFeedback() for _ in range(world)]
        method = _C.make_compressor(*_split(spec))
        codecs = [_C.BucketCodec(method, ENTRIES, efs[r], 0, r, world) for r in range(world)]
    g = torch.Generator().manual_seed(7)

    def step(buckets: list[torch.Tensor], index: int) -> None:
        if spec == "powersgd":
            _powersgd_step(codecs, buckets)
        else:
            _exchange(codecs, buckets, index)

    step([torch.randn(NUMEL, generator=g) for _ in range(world)], 0)
    kept = efs[1].state_dict()
    if spec not in ("fp16", "bf16"):  # lossless casts keep no residual
        assert kept
    warm_before = [w.state_dict() for w in warm] if spec == "powersgd" else None
    buckets = [torch.randn(NUMEL, generator=g) for _ in range(world)]
    buckets[1][1020] = float("inf")  # in the dense bias
    buckets[1][7] = float("nan")  # in a compressed matrix
    step(buckets, 1)
    for bucket in buckets:
        assert bucket.isnan().all()
    for name, residual in efs[1].state_dict().items():
        assert torch.equal(residual, kept[name]), name
    for r in (0, 2):
        assert all(t.isfinite().all() for t in efs[r].state_dict().values())
    if warm_before is not None:  # the warm start is kept on every rank
        for w, before in zip(warm, warm_before, strict=True):
            for name, q in w.state_dict().items():
                assert torch.equal(q, before[name]), name
    buckets = [torch.randn(NUMEL, generator=g) for _ in range(world)]
    step(buckets, 2)
    for bucket in buckets:
        assert bucket.isfinite().all()


def test_codec_with_one_method_per_entry() -> None:
    """Per-parameter overrides: entry 0 Top-K 1%, entry 2 Top-K 10% (same channel), the bias
    dense; what each decodes matches its own method alone."""
    methods = [
        _C.make_compressor("topk", {"ratio": 0.01}),
        _C.make_compressor("topk", {"ratio": 0.1}),
    ]
    entries = [(*ENTRIES[0], 0), (*ENTRIES[1], 0), (*ENTRIES[2], 1)]
    codec = _C.BucketCodec(methods, entries, None, 0, 0, 1)
    assert [c[0] for c in codec.channels] == ["allreduce", "allgather"]
    grad = torch.randn(NUMEL, generator=torch.Generator().manual_seed(8))
    bucket = grad.clone()
    _exchange([codec], [bucket], 0)
    for (_name, offset, numel, _c, _r), ratio in ((ENTRIES[0], 0.01), (ENTRIES[2], 0.1)):
        x = grad[offset : offset + numel]
        values, indices = reference.topk(x, reference.topk_k(ratio, numel))
        expected = torch.zeros_like(x)
        expected[indices.long()] = values
        assert torch.equal(bucket[offset : offset + numel], expected)
    assert torch.equal(bucket[1000:1050], grad[1000:1050])


@pytest.mark.parametrize("spec", [*_ALL_SPECS, "powersgd"])
def test_codec_measures_the_relative_error(spec: str) -> None:
    """measure=True: input_sq is ||g||^2 of the whole bucket, error_sq is ||g - D(C(g))||^2,
    checked against the decoded result on one rank without error feedback."""
    grad = torch.randn(NUMEL, generator=torch.Generator().manual_seed(9))
    bucket = grad.clone()
    if spec == "powersgd":
        (codec,), _efs, _warm = _powersgd(1, error_feedback=False)
        first = codec.encode_first(bucket, True)
        second = codec.encode_second(first)  # orthonormalizes first in place
        input_sq, error_sq = codec.measured
        codec.decode(bucket, first, second)
    else:
        (codec,) = _codecs(spec, 1)
        messages = codec.encode(bucket, 0, True)
        input_sq, error_sq = codec.measured
        received = [m.clone() for m in messages]
        used = [messages[-1].numel()] if codec.channels[-1][3] else []
        codec.decode(bucket, received, 0, used)
    assert input_sq == pytest.approx(grad.double().square().sum().item(), rel=1e-6)
    expected = (grad.double() - bucket.double()).square().sum().item()
    assert error_sq == pytest.approx(expected, rel=1e-4, abs=1e-6)
    if spec not in ("fp16", "bf16"):
        assert error_sq > 0
