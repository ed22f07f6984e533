"""Multi-process DDP on Gloo with the gradcomp hook (spawned ranks on loopback)."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import gradcomp

import ddp_workers
import wire
from conftest import free_port
from reference import topk_k

pytestmark = pytest.mark.distributed


def _spawn(fn, world_size: int, tmp_path: Path, *extra) -> list[dict]:
    mp.spawn(
        fn, args=(world_size, free_port(), str(tmp_path), *extra), nprocs=world_size, join=True
    )
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]


def test_lossless_settings_reproduce_plain_ddp(tmp_path: Path) -> None:
    ranks = _spawn(ddp_workers.lossless_matches_plain_ddp, 2, tmp_path)
    for result in ranks:
        for label in ("topk1", "none"):
            for name, plain in result["plain"].items():
                assert torch.equal(result[label][name], plain), f"{label}: {name} differs"
    for name in ranks[0]["plain"]:
        assert torch.equal(ranks[0]["topk1"][name], ranks[1]["topk1"][name])


@pytest.mark.parametrize("min_numel", [0, 1024])
def test_topk_wire_ratio_identical_ranks_and_falling_loss(tmp_path: Path, min_numel: int) -> None:
    ranks = _spawn(ddp_workers.topk_wire_ratio_and_training, 2, tmp_path, min_numel)
    numels = ranks[0]["numels"]
    sent = sum(8 * topk_k(0.01, n) if n >= min_numel else 4 * n for n in numels)
    analytic = sent / (4 * sum(numels))
    for result in ranks:
        stats = result["stats"]
        assert stats["steps"] == 200
        assert stats["bytes_dense"] == 200 * 4 * sum(numels)
        assert math.isclose(stats["ratio"], analytic, rel_tol=0.01), (stats["ratio"], analytic)
        assert stats["ratio"] < 0.05
    # Every rank ends with bit-identical parameters.
    for name, p0 in ranks[0]["params"].items():
        assert torch.equal(p0, ranks[1]["params"][name]), name
    # The model learns: the mean loss of the last 20 steps is well below the first 20.
    for result in ranks:
        losses = result["losses"]
        first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
        print(f"loss first20={first:.3f} last20={last:.3f}")
        assert last < 0.6 * first, (first, last)


def test_register_rejects_a_model_that_is_not_ddp() -> None:
    with pytest.raises(
        TypeError, match="expects a torch.nn.parallel.DistributedDataParallel model, got Linear"
    ):
        gradcomp.register(torch.nn.Linear(2, 2), "topk")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"compressor": "topk", "ratio": 0.0}, ValueError, "ratio=0 is out of range"),
        ({"compressor": "topk", "ratio": 1.01}, ValueError, "ratio=1.01 is out of range"),
        ({"compressor": "bogus"}, ValueError, "unknown compressor 'bogus'"),
        ({"compressor": "topk:ratio"}, ValueError, "malformed compressor spec"),
        ({"compressor": "topk", "min_numel": -1}, ValueError, "min_numel=-1 is out of range"),
        ({"compressor": "topk", "start_iter": 1.5}, TypeError, "start_iter must be an int"),
        ({"compressor": "topk", "error_feedback": 1}, TypeError, "error_feedback must be a bool"),
    ],
)
def test_register_rejects_bad_options(single_rank_group: None, kwargs, error, match) -> None:
    ddp = DistributedDataParallel(torch.nn.Linear(4, 4))
    with pytest.raises(error, match=match):
        gradcomp.register(ddp, **kwargs)


def test_register_needs_an_initialized_process_group() -> None:
    class FakeDDP(DistributedDataParallel):
        def __init__(self) -> None:  # skip DDP's own init, which needs a group itself
            torch.nn.Module.__init__(self)
            self.module = torch.nn.Linear(2, 2)

    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        gradcomp.register(FakeDDP(), "topk")


def test_state_built_before_the_group_binds_at_the_first_hook_call(tmp_path: Path) -> None:
    ranks = _spawn(ddp_workers.lazy_binding_matches_eager, 2, tmp_path)
    for rank, r in enumerate(ranks):
        assert r["before"] == {"bound": False, "step": 0, "spec": "topk:ratio=0.05"}
        params, stats, world_size, own_rank = r["lazy"]
        assert (world_size, own_rank) == (2, rank)
        eager_params, eager_stats = r["eager"]
        for name, p in eager_params.items():
            assert torch.equal(params[name], p), (rank, name)  # bit-identical
        for key in ("steps", "bytes_sent", "wire_bytes", "relative_error", "residual_norm"):
            assert stats[key] == eager_stats[key], key
        assert stats["steps"] == 8 and stats["relative_error_step"] == 6
    assert all(torch.equal(ranks[0]["lazy"][0][n], p) for n, p in ranks[1]["lazy"][0].items())


def test_unbound_state_without_a_group_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    assert not dist.is_initialized()
    state = gradcomp.HookState.for_model(torch.nn.Linear(64, 64), "topk", ratio=0.1)
    # What does not need the group works before it exists.
    assert not state.bound and state.step == 0 and state.config == gradcomp.TopK(ratio=0.1)
    assert state.compressor.spec == "topk:ratio=0.1" and state.residuals() == {}
    assert state.method_for("weight") == gradcomp.TopK(ratio=0.1) and not state.low_rank
    for call, name in [
        (state.state_dict, "state_dict()"),
        (state.gathered_state_dict, "gathered_state_dict()"),
        (lambda: state.load_state_dict({}), "load_state_dict()"),
        (state.stats, "stats()"),
    ]:
        with pytest.raises(RuntimeError, match=rf"not initialized at {re.escape(name)}: call"):
            call()

    class Bucket:  # stands in for DDP's GradBucket, which Python cannot construct
        pass

    monkeypatch.setattr(dist, "GradBucket", Bucket)
    with pytest.raises(RuntimeError, match="not initialized at the first comm_hook call"):
        gradcomp.comm_hook(state, Bucket())
    assert not state.bound
    # Options that need no group are still checked at construction.
    with pytest.raises(ValueError, match="ratio=2"):
        gradcomp.HookState.for_model(torch.nn.Linear(4, 4), "topk", ratio=2)
    with pytest.raises(TypeError, match="writer with add_scalar"):
        gradcomp.HookState.for_model(torch.nn.Linear(4, 4), log_every=1, tensorboard=42)


def test_start_iter_runs_dense_steps_first(single_rank_group: None) -> None:
    model = torch.nn.Linear(64, 64)
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, "topk", ratio=0.01, start_iter=3, min_numel=0)
    for step in range(5):
        ddp(torch.randn(4, 64)).sum().backward()
        if step < 3:
            assert state.stats()["ratio"] == pytest.approx(1.0)
    stats = state.stats()
    assert stats["steps"] == 5
    dense = 4 * (64 * 64 + 64)
    # Compressed steps: the 8-byte non-finite flag, then the two payloads.
    assert stats["bytes_sent"] == 3 * dense + 2 * 8 * (1 + topk_k(0.01, 4096) + topk_k(0.01, 64))


def test_state_dict_round_trip(single_rank_group: None) -> None:
    model = torch.nn.Linear(64, 64)
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, "topk", ratio=0.05, min_numel=0)
    for _ in range(3):
        ddp(torch.randn(4, 64)).sum().backward()
    saved = state.state_dict()
    other = DistributedDataParallel(torch.nn.Linear(64, 64))
    restored = gradcomp.register(other, "topk", ratio=0.05, min_numel=0)
    restored.load_state_dict(saved)
    assert restored.step == 3
    assert state.residuals()
    for name, residual in state.residuals().items():
        assert torch.equal(restored.residuals()[name], residual)
    wrong = DistributedDataParallel(torch.nn.Linear(64, 64))
    with pytest.raises(ValueError, match="saved with compressor 'topk:ratio=0.05'"):
        gradcomp.register(wrong, "topk", ratio=0.1).load_state_dict(saved)


def test_manual_registration_with_comm_hook(single_rank_group: None) -> None:
    ddp = DistributedDataParallel(torch.nn.Linear(64, 64))
    state = gradcomp.HookState.for_model(ddp, "topk:ratio=0.1", min_numel=0)
    ddp.register_comm_hook(state, gradcomp.comm_hook)
    ddp(torch.randn(4, 64)).sum().backward()
    assert state.stats()["bytes_sent"] == 8 * (1 + topk_k(0.1, 4096) + topk_k(0.1, 64))


def test_communication_objects_outlive_their_callbacks(single_rank_group: None) -> None:
    """The hook keeps each step's Work handles and futures, and counts live callbacks, so that
    nothing owning Python state is freed on torch.distributed's thread (which aborts the
    process when it happens during interpreter shutdown)."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 4))
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, "topk", ratio=0.1, min_numel=100, start_iter=1)
    for _ in range(3):
        ddp(torch.randn(4, 64)).sum().backward()
        assert state.wait_for_callbacks(timeout=10.0)
        assert state.in_flight.pending == 0
        kept = state.in_flight.held()
        assert any(isinstance(obj, torch.distributed.Work) for obj in kept)


# Every method that the two-process test trains (its expected wire ratio is computed below).
_METHODS = ddp_workers.TRAINED_METHODS


def _expected_ratio(spec: str, shapes: list[tuple[int, ...]]) -> float:
    name, options = gradcomp.parse_spec(spec)
    numels = [math.prod(s) for s in shapes]
    dense = 4 * sum(numels)
    if name == "powersgd":
        return wire.powersgd_bytes(shapes, rank=int(options["rank"])) / dense
    if name == "threshold":
        # 8 bytes per selected element at the target density, headers, the count exchange.
        return (8 * options["density"] * sum(numels) + 8 * len(numels) + 8) / dense
    # DDP buckets parameters in reverse order.
    return wire.bucket_bytes(name, list(reversed(numels)), **options) / dense


@pytest.mark.parametrize("spec", _METHODS)
def test_method_trains_with_its_wire_ratio(tmp_path: Path, spec: str) -> None:
    ranks = _spawn(ddp_workers.method_trains, 2, tmp_path, spec)
    expected = _expected_ratio(spec, ranks[0]["shapes"])
    for result in ranks:
        assert result["buckets"] >= 2  # several buckets in flight at once
        stats = result["stats"]
        assert stats["steps"] == 150
        tolerance = 0.35 if spec.startswith("threshold") else 0.01  # threshold's count varies
        assert math.isclose(stats["ratio"], expected, rel_tol=tolerance), (stats, expected)
        losses = result["losses"]
        first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
        print(f"{spec}: ratio={stats['ratio']:.4f} loss first20={first:.3f} last20={last:.3f}")
        assert last < 0.6 * first, (spec, first, last)
    # Every rank applies the same averaged gradient, so parameters stay identical.
    for name, p0 in ranks[0]["params"].items():
        assert torch.equal(p0, ranks[1]["params"][name]), (spec, name)


@pytest.mark.parametrize("spec", ["topk", "qsgd", "threshold", "powersgd", "fp16", "randomk"])
def test_without_error_feedback_nothing_is_kept(single_rank_group: None, spec: str) -> None:
    model = torch.nn.Linear(64, 64)
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, spec, min_numel=0, error_feedback=False, log_every=2)
    for _ in range(2):
        ddp(torch.randn(4, 64)).sum().backward()
    assert state.stats()["steps"] == 2
    assert state.stats()["residual_norm"] == 0.0  # measured at step 2
    assert state.residuals() == {}


def test_randomk_unbiased_with_error_feedback_is_refused(single_rank_group: None) -> None:
    ddp = DistributedDataParallel(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="unbiased=1 .* error feedback"):
        gradcomp.register(ddp, "randomk:unbiased=1")
    gradcomp.register(ddp, "randomk:unbiased=1", error_feedback=False)  # fine without


def test_powersgd_state_dict_keeps_warm_start_and_resumes_identically(
    single_rank_group: None,
) -> None:
    def make() -> tuple[torch.nn.Module, DistributedDataParallel, gradcomp.HookState]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(48, 8))
        ddp = DistributedDataParallel(model)
        return model, ddp, gradcomp.register(ddp, "powersgd:rank=2", min_numel=0)

    data = [torch.randn(4, 32, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    # Uninterrupted: six steps (gradients only; the weights stay fixed so steps compare).
    _model, ddp, state = make()
    grads = []
    for x in data:
        ddp.zero_grad()
        ddp(x).sum().backward()
        grads.append([p.grad.clone() for p in ddp.parameters()])
    # Interrupted after three steps and resumed from the state dict in a fresh hook.
    _model, ddp, first = make()
    for x in data[:3]:
        ddp.zero_grad()
        ddp(x).sum().backward()
    saved = first.state_dict()
    part = torch.load(io.BytesIO(saved["ranks"]["rank0"]), weights_only=True)
    assert saved["version"] == 3 and len(part["warm_start"]) == 2
    _model, ddp, resumed = make()
    resumed.load_state_dict(saved)
    for step, x in enumerate(data[3:], start=3):
        ddp.zero_grad()
        ddp(x).sum().backward()
        for p, expected in zip(ddp.parameters(), grads[step], strict=True):
            assert torch.equal(p.grad, expected), step
    assert state.stats()["ratio"] < 0.5
