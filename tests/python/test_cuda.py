"""The CUDA path of every method against the CPU path on the same inputs: ops, error feedback,
bucket codecs (the bucket-level device path against the entry-by-entry path and the CPU),
deferred index checks, a one-process NCCL DDP run, and several Gloo ranks sharing one GPU.
Skipped without a GPU (or with a build that has no CUDA kernels); test_cuda_build_without_gpu
runs everywhere."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import gradcomp
from gradcomp import _C, ops

import collective_workers
import ddp_workers
from conftest import free_port
from ddp_workers import TRAINED_METHODS, SmallNet, _batches
from test_collectives import check_exchanges

HAS_GPU = torch.cuda.is_available() and _C.has_cuda_kernels()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and a CUDA build")
pytestmark = pytest.mark.cuda

# Bit-identical payloads on both devices.
EXACT = [
    "topk:ratio=0.01",
    "topk:ratio=0.3",
    "topk_approx:ratio=0.01",
    "topk_int8:ratio=0.01",
    "randomk:ratio=0.01",
    "randomk:ratio=0.1,unbiased=1",
    "threshold:tau=1.5",
    "threshold:density=0.01",
    "int8",
    "fp16",
    "bf16",
    "none",
]
# Chunk statistics are block reductions on the GPU: the float statistic may differ in its last
# bit from the CPU's sequential sum, so payloads are compared through what they decode to.
STATISTICAL = ["qsgd:bits=2", "qsgd:bits=4", "qsgd:bits=8", "sign"]
SIZES = [1, 7, 255, 256, 257, 4097, 100_003, 1_000_003]


def _x(n: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    if n > 10:
        x[n // 3] = 0.0
        x[n // 2] = -x[n // 2 - 1]  # a magnitude tie
    return x


def _poison_cuda_allocator(nbytes: int) -> None:
    """Leaves freed blocks full of 0xAB in the caching allocator, so an output a kernel forgot
    to write holds garbage instead of a lucky zero."""
    for size in (nbytes, 2 * nbytes, nbytes // 2 + 1, 4096):
        block = torch.full((max(size, 1),), 0xAB, dtype=torch.uint8, device="cuda")
        del block


def _split(spec: str) -> tuple[str, dict[str, float]]:
    return gradcomp.parse_spec(spec)


def test_cuda_build_without_gpu() -> None:
    """Without a GPU, a CUDA parameter cannot exist, but the build still says what it has."""
    assert isinstance(_C.has_cuda_kernels(), bool)


def test_register_says_which_devices_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradcomp import checks

    checks.check_device("w", torch.device("cpu"))
    with pytest.raises(NotImplementedError, match="'w' is on meta; gradcomp supports cpu and cuda"):
        checks.check_device("w", torch.device("meta"))
    monkeypatch.setattr(checks._C, "has_cuda_kernels", lambda: False)
    with pytest.raises(NotImplementedError, match="no CUDA kernels .* reinstall with nvcc"):
        checks.check_device("w", torch.device("cuda", 0))


@needs_gpu
@pytest.mark.parametrize("spec", EXACT)
@pytest.mark.parametrize("n", SIZES)
def test_payload_is_identical_to_cpu(spec: str, n: int) -> None:
    x = _x(n)
    expected = ops.compress(x, spec, step=3, seed=5, tensor_key=11)
    _poison_cuda_allocator(expected.numel() * expected.element_size())
    got = ops.compress(x.cuda(), spec, step=3, seed=5, tensor_key=11)
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), expected), spec
    decoded = ops.decompress(got, spec, n, step=3, seed=5, tensor_key=11)
    expected_decoded = ops.decompress(expected, spec, n, step=3, seed=5, tensor_key=11)
    torch.testing.assert_close(decoded.cpu(), expected_decoded, rtol=0, atol=0, equal_nan=True)


@needs_gpu
@pytest.mark.parametrize("spec", STATISTICAL)
@pytest.mark.parametrize("n", SIZES)
def test_quantizers_decode_like_cpu(spec: str, n: int) -> None:
    x = _x(n)
    got = ops.compress(x.cuda(), spec, step=1, seed=2, tensor_key=3)
    expected = ops.compress(x, spec, step=1, seed=2, tensor_key=3)
    assert got.shape == expected.shape
    # The GPU decoder and the CPU decoder read the GPU payload the same way...
    on_gpu = ops.decompress(got, spec, n).cpu()
    on_cpu = ops.decompress(got.cpu(), spec, n)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-6, atol=0)
    # ...and it encodes x as the CPU payload does, up to a rare code at a rounding boundary.
    reference = ops.decompress(expected, spec, n)
    differs = ~torch.isclose(on_cpu, reference, rtol=1e-5, atol=1e-7)
    assert differs.float().mean().item() <= 1e-3, spec


@needs_gpu
@pytest.mark.parametrize("spec", EXACT + STATISTICAL)
def test_error_feedback_matches_cpu(spec: str) -> None:
    name, options = _split(spec)
    method = _C.make_compressor(name, options)
    n = 50_003
    residual_cpu = torch.zeros(n)
    residual_gpu = torch.zeros(n, device="cuda")
    for step in range(4):
        grad = _x(n, seed=step)
        before = residual_gpu.clone()
        sent_cpu = method.compress_with_feedback(grad, residual_cpu, step, 7, 9)
        sent_gpu = method.compress_with_feedback(grad.cuda(), residual_gpu, step, 7, 9)
        if spec in EXACT:
            assert torch.equal(sent_gpu.cpu(), sent_cpu), (spec, step)
            torch.testing.assert_close(residual_gpu.cpu(), residual_cpu, rtol=0, atol=0)
            continue
        # The error-feedback invariant on the device: what stays plus what was sent is what
        # there was plus the gradient.
        decoded = method.decompress(sent_gpu, n, step, 7, 9)
        torch.testing.assert_close(
            residual_gpu + decoded, before + grad.cuda(), rtol=1e-5, atol=1e-5
        )
        # And it stays with the CPU's residual, up to rare codes at a rounding boundary.
        close = torch.isclose(residual_gpu.cpu(), residual_cpu, rtol=1e-4, atol=1e-4 * (step + 1))
        assert close.float().mean().item() >= 0.999, (spec, step)


@needs_gpu
def test_topk_ops_match_cpu_and_reject_bad_indices() -> None:
    for n in SIZES:
        x = _x(n)
        k = max(1, n // 100)
        values, indices = torch.ops.gradcomp.topk_compress(x.cuda(), k)
        cpu_values, cpu_indices = torch.ops.gradcomp.topk_compress(x, k)
        assert torch.equal(values.cpu(), cpu_values)
        assert torch.equal(indices.cpu(), cpu_indices)
        dense = torch.ops.gradcomp.topk_decompress(values, indices, n)
        assert torch.equal(
            dense.cpu(), torch.ops.gradcomp.topk_decompress(cpu_values, cpu_indices, n)
        )
    values = torch.ones(3, device="cuda")
    indices = torch.tensor([0, 5, 1], dtype=torch.int32, device="cuda")
    with pytest.raises(IndexError, match="index 5 at position 1 is outside"):
        torch.ops.gradcomp.topk_decompress(values, indices, 5)


@needs_gpu
def test_orthonormalize_matches_cpu() -> None:
    m = torch.randn(6, 300, 4, generator=torch.Generator().manual_seed(0))
    m[2, :, 1] = m[2, :, 0]  # a dependent column becomes zero on both devices
    got = torch.ops.gradcomp.orthonormalize(m.cuda()).cpu()
    torch.testing.assert_close(got, torch.ops.gradcomp.orthonormalize(m), rtol=1e-4, atol=1e-5)


ENTRIES = [("a.weight", 0, 100_000, True, 100), ("a.bias", 100_000, 50, False, 0)]
ENTRIES += [("b.weight", 100_050, 30_000, True, 60)]
NUMEL = 130_050


@needs_gpu
@pytest.mark.parametrize("spec", EXACT)
def test_bucket_codec_matches_cpu(spec: str) -> None:
    name, options = _split(spec)
    method = _C.make_compressor(name, options)
    cpu = _C.BucketCodec(method, ENTRIES, _C.ErrorFeedback(), 0, 0, 1)
    gpu = _C.BucketCodec(method, ENTRIES, _C.ErrorFeedback(), 0, 0, 1)
    for step in range(3):
        bucket = _x(NUMEL, seed=10 + step)
        bucket_gpu = bucket.cuda()
        messages = cpu.encode(bucket, step)
        messages_gpu = gpu.encode(bucket_gpu, step)
        for m_cpu, m_gpu in zip(messages, messages_gpu, strict=True):
            assert torch.equal(m_gpu.cpu(), m_cpu), (spec, step)
        used = [m.numel() for m, c in zip(messages, cpu.channels, strict=True) if c[3]]
        cpu.decode(bucket, messages, step, used)
        gpu.decode(bucket_gpu, messages_gpu, step, used)
        assert torch.equal(bucket_gpu.cpu(), bucket), (spec, step)


@needs_gpu
def test_powersgd_codec_matches_cpu() -> None:
    method = _C.make_compressor("powersgd", {"rank": 2})
    codecs = []
    for _ in range(2):
        codecs.append(
            _C.PowerSgdCodec(method, ENTRIES, _C.ErrorFeedback(), _C.ErrorFeedback(), 0, 1)
        )
    for step in range(3):
        bucket = _x(NUMEL, seed=step)
        outputs = []
        for codec, device in zip(codecs, ["cpu", "cuda"], strict=True):
            b = bucket.to(device)
            first = codec.encode_first(b)
            second = codec.encode_second(first)
            codec.decode(b, first, second)
            outputs.append(b.cpu())
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-3, atol=1e-4)


@needs_gpu
def test_corrupt_index_in_the_hook_path_is_reported_without_waiting() -> None:
    method = _C.make_compressor("topk", {"ratio": 0.01})
    entries = [("w", 0, 10_000, True, 0)]
    codec = _C.BucketCodec(method, entries, None, 0, 0, 1)
    bucket = torch.randn(10_000, device="cuda")
    (message,) = codec.encode(bucket, 0)
    k = 100
    # After the 8-byte non-finite flag slot and k float values: an index one past the end.
    message.view(torch.int32)[2 + k + 3] = 10_000
    codec.decode(bucket, [message], 0)  # skipped on the device; nothing written out of bounds
    torch.cuda.synchronize()
    codec.encode(bucket, 1)  # starts the copy of the device-side record
    torch.cuda.synchronize()
    with pytest.raises(IndexError, match="outside its tensor"):
        codec.encode(bucket, 2)


@needs_gpu
@pytest.mark.parametrize("spec", ["topk:ratio=0.01", "qsgd", "fp16", "threshold:density=0.01"])
def test_nonfinite_bucket_on_the_device(spec: str) -> None:
    """The flag path on CUDA: an inf leaves the residuals as they were and the decoded bucket
    NaN; decode applies the flag on the device (-1) unless a variable channel reads it (0)."""
    method = _C.make_compressor(*_split(spec))
    residuals = _C.ErrorFeedback()
    codec = _C.BucketCodec(method, ENTRIES, residuals, 0, 0, 1)
    bucket = _x(NUMEL, seed=1).cuda()
    messages = codec.encode(bucket, 0)
    used = [m.numel() for m, c in zip(messages, codec.channels, strict=True) if c[3]]
    codec.decode(bucket, messages, 0, used)
    kept = residuals.state_dict()
    bucket = _x(NUMEL, seed=2).cuda()
    bucket[5] = float("inf")
    messages = codec.encode(bucket, 1)
    used = [m.numel() for m, c in zip(messages, codec.channels, strict=True) if c[3]]
    outcome = codec.decode(bucket, messages, 1, used)
    assert outcome == (0 if spec.startswith("threshold") else -1)
    assert bucket.isnan().all()
    for name, residual in residuals.state_dict().items():
        assert torch.equal(residual, kept[name]), name


@needs_gpu
def test_sign_and_qsgd_beyond_2_pow_31_bits() -> None:
    # qsgd 8-bit: 2^28 + 5 elements pack into more than 2^31 bits.
    n = (1 << 28) + 5
    x = torch.randn(n, device="cuda")
    payload = ops.compress(x, "qsgd:bits=8")
    decoded = ops.decompress(payload, "qsgd:bits=8", n)
    tail = slice(n - 4096, n)
    assert torch.equal(torch.sign(decoded[tail]), torch.sign(x[tail]) * (decoded[tail] != 0))
    assert (decoded[tail] != 0).float().mean().item() > 0.5  # not a tail decoded to zeros
    del payload, decoded
    free, _total = torch.cuda.mem_get_info()
    if free < 30 * (1 << 30):
        pytest.skip("sign over 2^31 elements needs about 30 GiB of free GPU memory")
    n = (1 << 31) + 77
    x = torch.randn(n, device="cuda")
    decoded = ops.decompress(ops.compress(x, "sign"), "sign", n)
    tail = slice(n - 4096, n)
    assert torch.equal(torch.sign(decoded[tail]), torch.where(x[tail] >= 0, 1.0, -1.0).cuda())


# Random-K 10% with error feedback diverges at lr 0.05 on one rank's data: each coordinate is
# sent about every tenth step with ten steps of gradient at once, which momentum amplifies. The
# CPU on Gloo with world size 1 diverges the same way (losses reach 1e14 by step 130); at 0.02
# both train.
NCCL_LR = {"randomk:ratio=0.1": 0.02}


@needs_gpu
@pytest.mark.parametrize("spec", ["topk", *TRAINED_METHODS, "none"])
def test_nccl_ddp_trains_on_one_gpu(spec: str) -> None:
    """One process, NCCL: the hook runs every stage on the device and the model learns, as
    the two-process Gloo test (test_ddp.py) asks on the CPU."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            "nccl", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1
        )
        try:
            torch.manual_seed(0)
            model = SmallNet().cuda()
            ddp = DistributedDataParallel(model, device_ids=[0], bucket_cap_mb=0.1)
            state = gradcomp.register(ddp, spec, min_numel=0)
            optimizer = torch.optim.SGD(
                model.parameters(), lr=NCCL_LR.get(spec, 0.05), momentum=0.9
            )
            losses = []
            for x, y in _batches(0, 150):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(ddp(x.cuda()), y.cuda())
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            assert sum(losses[-20:]) < 0.6 * sum(losses[:20]), (spec, losses[:3], losses[-3:])
            assert state.stats()["steps"] == 150
        finally:
            dist.destroy_process_group()


@needs_gpu
def test_lightning_ddp_comm_hook_with_a_state_built_before_fit(tmp_path: Path) -> None:
    """Lightning's own hook API, DDPStrategy(ddp_comm_hook=gradcomp.comm_hook,
    ddp_comm_state=state), which Lightning registers on CUDA only: the state is built from the
    bare module before fit starts the (NCCL, one-rank) group, and binds at the first hook
    call."""
    L = pytest.importorskip("lightning")
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = SmallNet()
            self.losses: list[float] = []

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int):
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    torch.manual_seed(0)
    module = Lit()
    state = gradcomp.HookState.for_model(module, "topk", ratio=0.05, min_numel=0)
    assert not state.bound and not dist.is_initialized()
    batches = _batches(0, 100)
    data = torch.utils.data.TensorDataset(
        torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    )
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        strategy=DDPStrategy(
            process_group_backend="nccl", ddp_comm_hook=gradcomp.comm_hook, ddp_comm_state=state
        ),
        max_steps=100,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    environ = dict(os.environ)  # Lightning sets MASTER_ADDR, MASTER_PORT and more
    try:
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16))
        assert state.bound and (state.world_size, state.rank) == (1, 0)
        stats = state.stats()
        assert stats["steps"] == 100 and 0 < stats["ratio"] < 0.2, stats
        losses = module.losses
        assert sum(losses[-20:]) < 0.7 * sum(losses[:20]), (losses[:3], losses[-3:])
    finally:
        os.environ.clear()
        os.environ.update(environ)
        del trainer, module, state
        if dist.is_initialized():
            dist.destroy_process_group()


# -- the bucket-level device path ------------------------------------------------------------

# Every method with a device path in one bucket, as overrides make it: the codec groups them by
# how they travel (fp32 allreduce, byte allgather, fp16 and bf16 allreduces).
MIXED_METHODS = [
    "topk:ratio=0.01",
    "topk_int8:ratio=0.05",
    "randomk:ratio=0.1",
    "qsgd:bits=4",
    "sign",
    "int8",
    "fp16",
    "bf16",
    "topk:ratio=1.0",
    "topk_approx:ratio=0.02",
    "qsgd:bits=2",
    "none",
]


def _entries_for(specs: list[str], dense: bool) -> list[tuple[str, int, int, bool, int, int]]:
    """(name, offset, numel, compress, rows, method): every method twice at different sizes
    (one of them a single element), with padding between parameters and, when `dense`, a small
    uncompressed tensor after each method's pair."""
    entries = []
    offset = 0
    sizes = [1, 3000, 70_001, 257, 40_000, 4097, 1024, 100_003]
    for m in range(len(specs)):
        for i in range(2):
            numel = sizes[(m + 3 * i) % len(sizes)]
            entries.append((f"m{m}.p{i}", offset, numel, True, 0, m))
            offset += numel + (m % 3)  # padding between parameters
        if dense:
            entries.append((f"m{m}.bias", offset, 33, False, 0, 0))
            offset += 33
    return entries


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8).cpu()


def _exchange_on_device(codecs: list, messages: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """The collectives, simulated: allreduce sums in rank order, allgather concatenates."""
    received = []
    for i, (collective, _dtype, _numel, _variable) in enumerate(codecs[0].channels):
        parts = [m[i] for m in messages]
        if collective == "allreduce":
            total = parts[0].clone()
            for part in parts[1:]:
                total += part
            received.append(total)
        else:
            received.append(torch.cat(parts))
    return received


def _compare_paths(
    specs: list[str], dense: bool, dtype: torch.dtype, world: int, error_feedback: bool
) -> None:
    """Every rank's messages and residuals from the device path are bit-identical to the
    entry-by-entry path's (which measure=True forces), through a loss-scale ratio and a step
    where rank 1's bucket holds an inf (with a ratio too); the device decode matches the CPU
    decode of the same received messages (bit for bit when dividing by the world size is
    exact), and a flagged step leaves every entry NaN and the padding untouched."""
    methods = [_C.make_compressor(*_split(spec)) for spec in specs]
    entries = _entries_for(specs, dense)
    numel = entries[-1][1] + entries[-1][2] + 2
    cuda = torch.device("cuda")

    def ranks() -> tuple[list, list]:
        efs = [_C.ErrorFeedback() for _ in range(world)]
        return [
            _C.BucketCodec(methods, entries, efs[r] if error_feedback else None, 5, r, world)
            for r in range(world)
        ], efs

    device_codecs, device_efs = ranks()
    entry_codecs, entry_efs = ranks()
    cpu_codec = _C.BucketCodec(methods, entries, _C.ErrorFeedback(), 5, 0, world)
    assert all(codec.uses_device_path(cuda) for codec in device_codecs)
    for step in range(4):
        buckets = [_x(numel, seed=100 * step + r).to(dtype).cuda() for r in range(world)]
        if step == 3:
            buckets[1][entries[-2][1] + 1] = float("inf")
        kept = [ef.state_dict() for ef in device_efs]
        ratio = torch.full((1,), 2.0, device=cuda) if step >= 2 else None
        device_messages = [
            c.encode(b.clone(), step, False, ratio)
            for c, b in zip(device_codecs, buckets, strict=True)
        ]
        entry_messages = [
            c.encode(b.clone(), step, True, ratio)
            for c, b in zip(entry_codecs, buckets, strict=True)
        ]
        for r in range(world):
            for i, (got, expected) in enumerate(
                zip(device_messages[r], entry_messages[r], strict=True)
            ):
                assert torch.equal(_bits(got), _bits(expected)), (step, r, i)
            residuals, expected_residuals = device_efs[r].state_dict(), entry_efs[r].state_dict()
            assert residuals.keys() == expected_residuals.keys()
            for name, residual in residuals.items():
                expected_residual = expected_residuals[name]
                assert torch.equal(_bits(residual), _bits(expected_residual)), (step, r, name)
        received = _exchange_on_device(device_codecs, device_messages)
        on_device = buckets[0].clone()
        assert device_codecs[0].decode(on_device, [t.clone() for t in received], step) == -1
        on_cpu = buckets[0].cpu().clone()
        cpu_codec.decode(on_cpu, [t.cpu() for t in received], step)
        if step == 3:
            # Rank 1 flagged: every entry of every rank's bucket is NaN, the padding is as it
            # was, and rank 1's residuals only took the ratio.
            covered = torch.zeros(numel, dtype=torch.bool)
            for _name, offset, size, *_rest in entries:
                covered[offset : offset + size] = True
            assert on_device.cpu()[covered].isnan().all() and on_cpu[covered].isnan().all()
            assert torch.equal(on_device.cpu()[~covered], buckets[0].cpu()[~covered])
            for name, residual in device_efs[1].state_dict().items():
                assert torch.equal(residual.cpu(), kept[1][name].cpu() * 2.0), name
            continue
        if world == 2:
            assert torch.equal(_bits(on_device), _bits(on_cpu)), step
        else:  # 1 / 3 is a reciprocal multiply on CUDA and a division on the CPU
            tolerance = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
            torch.testing.assert_close(on_device.cpu(), on_cpu, rtol=tolerance, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("world", [2, 3])
def test_device_path_matches_the_entry_path_and_the_cpu(dtype: torch.dtype, world: int) -> None:
    """Every method of the family in one bucket with dense tensors (an fp32 channel 0)."""
    _compare_paths(MIXED_METHODS, True, dtype, world, error_feedback=True)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_device_path_without_error_feedback(dtype: torch.dtype) -> None:
    """The compressors read the float32 bucket itself, or a float32 copy of a 16-bit one."""
    _compare_paths(MIXED_METHODS, True, dtype, 2, error_feedback=False)


@needs_gpu
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("error_feedback", [True, False])
def test_device_path_with_the_flag_in_a_byte_channel(world: int, error_feedback: bool) -> None:
    """Nothing dense: channel 0 is the byte allgather, with one 8-byte flag slot per rank."""
    specs = ["topk:ratio=0.01", "qsgd:bits=4", "topk_int8:ratio=0.05"]
    _compare_paths(specs, False, torch.float32, world, error_feedback)


@needs_gpu
@pytest.mark.parametrize("spec", ["fp16", "bf16"])
def test_device_path_with_the_flag_in_a_16_bit_channel(spec: str) -> None:
    """Casts only: channel 0 is the 16-bit allreduce, whose flag slot is a summed 16-bit one."""
    _compare_paths([spec], False, torch.float32, 2, error_feedback=True)


@needs_gpu
def test_device_path_with_hundreds_of_topk_entries_captures_in_a_cuda_graph() -> None:
    """700 Top-K entries in one bucket (one select for all of them, whatever their number), the
    encode captured in a CUDA graph (it never waits for the host) and replayed."""
    method = _C.make_compressor("topk", {"ratio": 0.05})
    g = torch.Generator().manual_seed(9)
    sizes = torch.randint(1, 3000, (700,), generator=g).tolist()
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    entries = [(f"p{i}", offsets[i], size, True, 0) for i, size in enumerate(sizes)]
    bucket = _x(offsets[-1], seed=4).cuda()
    direct = _C.BucketCodec(method, entries, None, 0, 0, 1)
    expected = [m.clone() for m in direct.encode(bucket, 0)]
    cpu = _C.BucketCodec(method, entries, None, 0, 0, 1)
    for got, reference in zip(expected, cpu.encode(bucket.cpu(), 0), strict=True):
        assert torch.equal(_bits(got), _bits(reference))
    captured = _C.BucketCodec(method, entries, None, 0, 0, 1)
    captured.encode(bucket, 0)  # tables and workspaces are built outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="relaxed"):
        messages = captured.encode(bucket, 0)
    for message in messages:
        message.zero_()
    graph.replay()
    torch.cuda.synchronize()
    for got, reference in zip(messages, expected, strict=True):
        assert torch.equal(_bits(got), _bits(reference))


@needs_gpu
def test_device_path_decodes_on_another_stream() -> None:
    """The hook decodes on a future callback's stream, not the stream that encoded."""
    method = _C.make_compressor("topk", {"ratio": 0.05})
    entries = [("a", 0, 50_000, True, 0), ("b", 50_000, 40, False, 0), ("c", 50_040, 7000, True, 0)]
    codec = _C.BucketCodec(method, entries, _C.ErrorFeedback(), 0, 0, 1)
    bucket = _x(57_040, seed=3).cuda()
    received = [m.clone() for m in codec.encode(bucket.clone(), 0)]
    expected = bucket.clone()
    codec.decode(expected, [t.clone() for t in received], 0)
    side = torch.cuda.Stream()
    out = bucket.clone()
    copies = [t.clone() for t in received]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        codec.decode(out, copies, 0)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(_bits(out), _bits(expected))


@needs_gpu
def test_device_path_rebuilds_its_tables_for_another_bucket_tensor() -> None:
    """The tables hold the bucket's address (without error feedback the compressors read the
    bucket itself): another bucket tensor must be picked up, and decode may write to another
    tensor than the one encoded."""
    method = _C.make_compressor("qsgd", {"bits": 4})
    entries = [("a", 0, 5000, True, 0), ("b", 5000, 20, False, 0), ("c", 5020, 3000, True, 0)]
    codec = _C.BucketCodec(method, entries, None, 0, 0, 1)
    first = _x(8020, seed=1).cuda()
    codec.encode(first, 0)
    second = _x(8020, seed=2).cuda()  # `first` is alive: another address
    got = [m.clone() for m in codec.encode(second, 1)]
    fresh = _C.BucketCodec(method, entries, None, 0, 0, 1)
    for message, expected in zip(got, fresh.encode(second, 1), strict=True):
        assert torch.equal(_bits(message), _bits(expected))
    out, expected_out = torch.zeros_like(second), torch.zeros_like(second)
    codec.decode(out, [t.clone() for t in got], 1)
    fresh.decode(expected_out, [t.clone() for t in got], 1)
    assert torch.equal(_bits(out), _bits(expected_out))


@needs_gpu
def test_device_path_rebuilds_its_tables_for_new_residuals() -> None:
    """Residuals replaced by a checkpoint load move to new storage: the result must equal a
    fresh codec's that loaded the same residuals."""
    method = _C.make_compressor("topk", {"ratio": 0.05})
    entries = [("a", 0, 5000, True, 0), ("b", 5000, 20, False, 0), ("c", 5020, 3000, True, 0)]
    ef, fresh_ef = _C.ErrorFeedback(), _C.ErrorFeedback()
    codec = _C.BucketCodec(method, entries, ef, 0, 0, 1)
    bucket = _x(8020, seed=1).cuda()
    codec.encode(bucket.clone(), 0)
    ef.load_state_dict({"a": torch.randn(5000).cuda(), "c": torch.randn(3000).cuda()})
    fresh_ef.load_state_dict(ef.state_dict())
    fresh = _C.BucketCodec(method, entries, fresh_ef, 0, 0, 1)
    got_messages = codec.encode(bucket.clone(), 1)
    for got, expected in zip(got_messages, fresh.encode(bucket.clone(), 1), strict=True):
        assert torch.equal(_bits(got), _bits(expected))
    for name, residual in ef.state_dict().items():
        assert torch.equal(residual, fresh_ef.state_dict()[name]), name


@needs_gpu
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_sharing_one_gpu_end_with_identical_parameters(tmp_path: Path, world: int) -> None:
    """Several ranks of the CUDA path on one GPU (Gloo takes CUDA tensors; NCCL refuses two ranks
    on one device): every method with default options and DDP's default buckets, 30 steps of
    SGD with momentum on each rank's own data. DDP assumes identical replicas: every rank must
    end with the same parameters bit for bit, which needs the future DDP waits on to carry the
    decode's stream (gradcomp/lifetime.py)."""
    methods = ddp_workers.GPU_METHODS if world == 2 else ["topk", "qsgd", "sign", "fp16"]
    mp.spawn(
        ddp_workers.ranks_on_one_gpu,
        args=(world, free_port(), str(tmp_path), methods, 30),
        nprocs=world,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert set(ranks[0]) >= set(methods)
    for label, result in ranks[0].items():
        for name, p0 in result["params"].items():
            for r in range(1, world):
                assert torch.equal(p0, ranks[r][label]["params"][name]), (label, name, r)
        assert result["stats"]["steps"] == 30, label
        assert all(torch.isfinite(torch.tensor(result["losses"]))), label
        if label.split("@")[0] not in ("threshold", "powersgd"):
            assert result["device_path"] and all(result["device_path"]), label


@needs_gpu
def test_two_phase_and_hierarchy_on_one_gpu(tmp_path: Path) -> None:
    """collective="two_phase", "auto" and hierarchy=2 with 4 ranks of the CUDA path on one GPU
    (Gloo): DDP's average at lossless settings, identical ranks, and nothing lost."""
    mp.spawn(
        collective_workers.exchanges,
        args=(4, free_port(), str(tmp_path), "cuda"),
        nprocs=4,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(4)]
    check_exchanges(ranks, 4)
