"""register() options on one rank: per-parameter overrides, telemetry (stats, log lines,
TensorBoard, profiler ranges) and loading a checkpoint at another world size."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import gradcomp

import training_workers
from conftest import free_port
from reference import topk_k


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.Linear(64, 4)
    )


def _step(ddp: DistributedDataParallel, seed: int = 0) -> None:
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(seed))
    ddp(x).square().sum().backward()


# -- overrides ---------------------------------------------------------------------------------


def test_overrides_pick_a_method_per_parameter(single_rank_group: None) -> None:
    ddp = DistributedDataParallel(_model())
    state = gradcomp.register(
        ddp,
        "topk",
        ratio=0.01,
        min_numel=0,
        overrides={"0.*": "none", "2.weight": "topk:ratio=0.5", "*.bias": gradcomp.TopK(0.25)},
    )
    assert state.method_for("0.weight") is None  # sent dense
    assert state.method_for("2.weight") == gradcomp.TopK(ratio=0.5)
    assert state.method_for("3.bias") == gradcomp.TopK(ratio=0.25)
    assert state.method_for("3.weight") == gradcomp.TopK(ratio=0.01)
    _step(ddp)
    dense = 4 * (64 * 128 + 128)  # layer 0, dense (its bias matches "0.*" first)
    sparse = 8 * (topk_k(0.5, 128 * 64) + topk_k(0.25, 64) + topk_k(0.01, 256) + topk_k(0.25, 4))
    # One bucket: the fp32 channel (flag, dense layer 0) and the byte channel of all Top-Ks.
    assert state.stats()["bytes_sent"] == 4 + dense + sparse
    # Dense parameters keep no residual; the others do.
    assert set(state.residuals()) == {"2.weight", "2.bias", "3.weight", "3.bias"}


@pytest.mark.parametrize(
    ("main", "overrides", "error", "match"),
    [
        ("topk", {"nothing.*": "none"}, ValueError, "'nothing.\\*' matches no parameter"),
        ("topk", {"0.*": "bogus"}, ValueError, "override '0.\\*': unknown compressor 'bogus'"),
        ("topk", {"0.*": "topk:ratio=2"}, ValueError, "override '0.\\*': .*ratio=2 is out"),
        ("topk", {"0.*": "powersgd"}, ValueError, "may only be 'none'"),
        ("powersgd", {"0.*": "topk"}, ValueError, "may only be 'none'"),
        ("topk", {"0.*": "randomk:unbiased=1"}, ValueError, "unbiased=1 cannot run"),
        ("topk", ["0.*"], TypeError, "overrides must map parameter-name patterns"),
        ("topk", {1: "none"}, TypeError, "override pattern 1 must be a str"),
    ],
)
def test_bad_overrides_are_refused(single_rank_group: None, main, overrides, error, match) -> None:
    ddp = DistributedDataParallel(_model())
    with pytest.raises(error, match=match):
        gradcomp.register(ddp, main, overrides=overrides)


def test_powersgd_with_a_dense_override(single_rank_group: None) -> None:
    ddp = DistributedDataParallel(_model())
    state = gradcomp.register(ddp, "powersgd", min_numel=0, overrides={"2.weight": "none"})
    _step(ddp)
    assert "2.weight" not in state.residuals() and "0.weight" in state.residuals()


# -- telemetry ---------------------------------------------------------------------------------


def test_stats_per_step_and_the_relative_error(single_rank_group: None) -> None:
    """On one rank the first step's output is C(g) exactly, so the relative error the hook
    measures must equal ||g - out|| / ||g|| computed here."""
    plain = DistributedDataParallel(_model())
    _step(plain)
    grads = torch.cat([p.grad.reshape(-1) for p in plain.parameters()])
    ddp = DistributedDataParallel(_model())
    state = gradcomp.register(ddp, "topk", ratio=0.05, min_numel=0, log_every=1)
    _step(ddp)
    out = torch.cat([p.grad.reshape(-1) for p in ddp.parameters()])
    expected = ((grads - out).double().norm() / grads.double().norm()).item()
    stats = state.stats()
    assert stats["relative_error"] == pytest.approx(expected, rel=1e-6)
    assert stats["relative_error_step"] == 1
    last = stats["last_step"]
    assert last["step"] == 0 and last["bytes_sent"] == stats["bytes_sent"]
    assert last["ratio"] == pytest.approx(stats["ratio"])
    assert last["nonfinite_buckets"] == 0 and last["loss_scale"] == 1.0
    for key in ("compress_seconds", "communicate_seconds", "decompress_seconds"):
        assert 0 < last[key] < 10, key
    # The residual is what compression dropped: its norm is the error's numerator.
    assert stats["residual_norm"] == pytest.approx((grads - out).double().norm().item(), rel=1e-5)


def test_unmeasured_stats_are_none(single_rank_group: None) -> None:
    """A value no step measured is None, not 0.0 or NaN: ratios before anything was sent,
    relative error and residual norm before a log_every step (with log_every=0: never)."""
    for log_every in (0, 2):
        ddp = DistributedDataParallel(_model())
        state = gradcomp.register(ddp, "topk", ratio=0.05, min_numel=0, log_every=log_every)
        before = state.stats()
        assert before["ratio"] is None and before["wire_ratio"] is None
        assert before["last_step"] is None
        _step(ddp)
        stats = state.stats()
        assert stats["ratio"] is not None and stats["last_step"]["ratio"] is not None
        for s in (before, stats, stats["last_step"]):
            assert s["relative_error"] is None and s["residual_norm"] is None
        assert stats["relative_error_step"] is None
        _step(ddp, 1)
        stats = state.stats()
        if log_every == 0:
            assert stats["relative_error"] is None and stats["residual_norm"] is None
        else:  # step 2 measured: its values, and the residual norm they were taken with
            assert 0 < stats["relative_error"] < 1 and stats["relative_error_step"] == 2
            norm = math.sqrt(sum(r.double().square().sum() for r in state.residuals().values()))
            assert stats["residual_norm"] == pytest.approx(norm, rel=1e-5)
            assert stats["last_step"]["residual_norm"] == stats["residual_norm"]


def test_log_line_every_n_steps(single_rank_group: None, caplog) -> None:
    ddp = DistributedDataParallel(_model())
    gradcomp.register(ddp, "topk", ratio=0.05, min_numel=0, log_every=2)
    with caplog.at_level(logging.INFO, logger="gradcomp"):
        for i in range(5):
            _step(ddp, i)
    lines = [r.getMessage() for r in caplog.records if r.name == "gradcomp"]
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"]
    assert "of dense" in lines[0] and "relative error 0." in lines[0]


def test_tensorboard_scalars(single_rank_group: None, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ddp = DistributedDataParallel(_model())
    state = gradcomp.register(ddp, "qsgd", min_numel=0, log_every=2, tensorboard=tmp_path)
    for i in range(4):
        _step(ddp, i)
    state.telemetry.writer.flush()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("ratio", "relative_error", "residual_norm", "compress_seconds", "loss_scale"):
        assert f"gradcomp/{tag}" in tags
    ratio = events.Scalars("gradcomp/ratio")
    assert [e.step for e in ratio] == [2, 4]
    assert ratio[-1].value == pytest.approx(state.stats()["last_step"]["ratio"], rel=1e-6)


def test_tensorboard_needs_log_every(single_rank_group: None, tmp_path: Path) -> None:
    ddp = DistributedDataParallel(_model())
    with pytest.raises(ValueError, match="set log_every >= 1"):
        gradcomp.register(ddp, "topk", tensorboard=tmp_path)
    with pytest.raises(TypeError, match="writer with add_scalar"):
        gradcomp.register(ddp, "topk", log_every=1, tensorboard=42)
    with pytest.raises(TypeError, match="grad_scaler must be a torch.amp.GradScaler"):
        gradcomp.register(ddp, "topk", grad_scaler=object())


@pytest.mark.parametrize("spec", ["topk", "powersgd"])
def test_profiler_ranges(single_rank_group: None, spec: str) -> None:
    ddp = DistributedDataParallel(_model())
    gradcomp.register(ddp, spec, min_numel=0)
    # decompress runs in the collective's completion callback, on torch.distributed's thread
    # when the collective finishes after the hook returns; the profiler records other threads
    # only with profile_all_threads (docs/training.md).
    config = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], experimental_config=config
    ) as prof:
        _step(ddp)
    names = {e.key for e in prof.key_averages()}
    for phase in ("compress", "communicate", "decompress"):
        assert f"gradcomp::{phase}" in names, (phase, sorted(n for n in names if "grad" in n))


# -- checkpoints at another world size ---------------------------------------------------------


@pytest.mark.distributed
def test_resume_at_another_world_size(tmp_path: Path) -> None:
    """A 2-rank PowerSGD checkpoint loaded by a 1-rank job (torch.save and DCP): residuals reset
    with a warning, the step and the shared warm-start Q kept, and training goes on."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    for how in ("torch.save", "dcp"):
        mp.spawn(
            training_workers.resume,
            args=(2, free_port(), str(tmp_path), "powersgd", how),
            nprocs=2,
            join=True,
        )
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for how in ("torch.save", "dcp"):
            model, ddp, _opt, state = training_workers._make("powersgd")
            if how == "torch.save":
                saved = torch.load(tmp_path / "ckpt-torch.save-rank0.pt", weights_only=True)
                hook = saved["hook"]
            else:
                hook = state.state_dict()
                dcp.load({"hook": hook}, checkpoint_id=str(tmp_path / "ckpt-dcp"))
            assert hook["world_size"] == 2
            with pytest.warns(UserWarning, match="world size 2 != current 1; error-feedback"):
                state.load_state_dict(hook)
            assert state.step == 6 and state.residuals() == {}
            part = torch.load(io.BytesIO(state.state_dict()["ranks"]["rank0"]), weights_only=True)
            assert len(part["warm_start"]) == 2  # Q of SmallNet's conv and fc1 (fc2 is dense)
            training_workers._steps(ddp, _opt, training_workers.ddp_workers._batches(0, 2))
            assert state.step == 8
            assert all(torch.isfinite(r).all() for r in state.residuals().values())
            del model, ddp, _opt, state
    finally:
        import gc

        gc.collect()
        dist.destroy_process_group()


def test_state_built_before_ddp_wraps_the_module(single_rank_group: None) -> None:
    """Frameworks that create the hook state first (Lightning's ddp_comm_state) can pass the
    plain module: DDP keeps the same parameter objects."""
    module = _model()
    state = gradcomp.HookState.for_model(module, "topk", ratio=0.1, min_numel=0)
    ddp = DistributedDataParallel(module)
    ddp.register_comm_hook(state, gradcomp.comm_hook)
    _step(ddp)
    assert state.stats()["steps"] == 1 and "0.weight" in state.residuals()
    with pytest.raises(TypeError, match="got int"):
        gradcomp.HookState.for_model(3, "topk")


def test_checkpoint_names_from_a_compiled_model_map_and_unknown_ones_warn(
    single_rank_group: None,
) -> None:
    ddp = DistributedDataParallel(_model())
    state = gradcomp.register(ddp, "topk", ratio=0.1, min_numel=0)
    _step(ddp)
    saved = state.state_dict()
    part = torch.load(io.BytesIO(saved["ranks"]["rank0"]), weights_only=True)
    residuals = part["residuals"]
    # As a run under DDP(torch.compile(model)) would have named them before this release,
    # plus one name this model does not have.
    part["residuals"] = {f"_orig_mod.{n}": t for n, t in residuals.items()}
    part["residuals"]["gone.weight"] = torch.zeros(3)
    buffer = io.BytesIO()
    torch.save(part, buffer)
    saved["ranks"]["rank0"] = buffer.getvalue()
    fresh = gradcomp.register(DistributedDataParallel(_model()), "topk", ratio=0.1, min_numel=0)
    with pytest.warns(UserWarning, match="1 name\\(s\\) that are not parameters.*gone.weight"):
        fresh.load_state_dict(saved)
    assert sorted(fresh.residuals()) == sorted(residuals)
    for name, tensor in residuals.items():
        assert torch.equal(fresh.residuals()[name], tensor)
