"""gradcomp inside real training loops: DDP options, several models, mixed precision with
GradScaler, low-precision models, checkpoints that resume bit for bit (spawned Gloo ranks)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import training_workers
from conftest import free_port

pytestmark = pytest.mark.distributed


def _spawn(fn, world_size: int, tmp_path: Path, *extra) -> list[dict]:
    mp.spawn(
        fn, args=(world_size, free_port(), str(tmp_path), *extra), nprocs=world_size, join=True
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ."""
    return [name for name in a if not torch.equal(a[name], b[name])]


def _falls(losses: list[float], factor: float = 0.6) -> bool:
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    return last < factor * first


@pytest.mark.parametrize("option", list(training_workers.DDP_OPTIONS))
def test_ddp_option(tmp_path: Path, option: str) -> None:
    ranks = _spawn(training_workers.ddp_options, 2, tmp_path, option)
    for result in ranks:
        # Lossless settings reproduce plain DDP exactly under the option.
        assert not _same(result["plain"], result["lossless"]), option
        assert result["stats"]["steps"] == 120  # one hook step per optimizer step
        assert result["stats"]["ratio"] < 0.05
        assert _falls(result["losses"]), (option, result["losses"][:5], result["losses"][-5:])
    assert not _same(ranks[0]["topk"], ranks[1]["topk"])
    if option == "find_unused_parameters":
        # The unused head got no gradient: it is where it started, on both ranks.
        torch.manual_seed(0)
        start = training_workers.BranchyNet()
        for name in ("unused.weight", "unused.bias"):
            assert torch.equal(ranks[0]["topk"][name], getattr(start.unused, name.split(".")[1]))


def test_two_models_with_their_own_process_groups(tmp_path: Path) -> None:
    ranks = _spawn(training_workers.two_models, 2, tmp_path)
    for result in ranks:
        stats_a, stats_b = result["stats"]
        assert stats_a["steps"] == stats_b["steps"] == 100
        assert stats_a["compressor"].startswith("topk") and stats_b["compressor"].startswith(
            "powersgd"
        )
        losses_a = [a for a, _ in result["losses"]]
        losses_b = [b for _, b in result["losses"]]
        assert _falls(losses_a) and _falls(losses_b, 0.8)
    assert not _same(ranks[0]["a"], ranks[1]["a"])
    assert not _same(ranks[0]["b"], ranks[1]["b"])


@pytest.mark.parametrize("spec", ["topk:ratio=0.01", "randomk:ratio=0.1", "powersgd:rank=2"])
def test_residuals_follow_the_grad_scaler(tmp_path: Path, spec: str) -> None:
    ranks = _spawn(training_workers.grad_scaler_units, 2, tmp_path, spec)
    for result in ranks:
        assert result["final_scale"] > 2.0**8  # the scale did change, several times
        # Power-of-two scales are exact: following the scale reproduces the unscaled run.
        assert not _same(result["unscaled"], result["followed"]), spec
        # Not telling the hook about the scaler leaves residuals in stale units.
        assert _same(result["unscaled"], result["ignored"]), spec


@pytest.mark.parametrize("spec", ["topk:ratio=0.01", "qsgd", "threshold:density=0.01", "powersgd"])
def test_forced_overflow_on_one_rank_skips_the_step_everywhere(tmp_path: Path, spec: str) -> None:
    ranks = _spawn(training_workers.forced_overflow, 2, tmp_path, spec)
    bad = ranks[0]["bad_step"]
    for r, result in enumerate(ranks):
        # Both ranks saw NaN gradients, so both GradScalers skipped the step and halved.
        assert all(g.isnan().all() for g in result["grads_bad"]), r
        scales = result["scales"]
        assert scales[bad + 1] == scales[bad] / 2, (r, scales[bad - 1 : bad + 2])
        replay = result["replay"]
        assert not _same(replay["before"], replay["after"]), "the bad step changed parameters"
        assert result["stats"]["nonfinite_steps"] == 1
        # No residual was poisoned; the rank that overflowed kept its own as they were.
        assert all(t.isfinite().all() for t in result["residuals_after"].values())
        if r == 1:
            assert not _same(result["residuals_before"], result["residuals_after"])
        # Only rank 1's own loss at the bad step is not finite; training goes on.
        bad_losses = [i for i, x in enumerate(result["losses"]) if not math.isfinite(x)]
        assert bad_losses == ([bad] if r == 1 else []), (r, bad_losses)
        finite = [x for x in result["losses"] if math.isfinite(x)]
        assert _falls(finite, 0.8), (spec, r)
    assert not _same(ranks[0]["params"], ranks[1]["params"])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_model_trains_with_fp32_residuals(tmp_path: Path, dtype: str) -> None:
    ranks = _spawn(training_workers.low_precision_model, 2, tmp_path, dtype)
    for result in ranks:
        assert set(result["residual_dtypes"].values()) == {torch.float32}
        stats = result["stats"]
        # The dense baseline a 16-bit model's DDP sends is 2 bytes per element.
        assert stats["bytes_dense"] == 150 * 2 * result["numel"]
        assert _falls(result["losses"], 0.7)
        assert all(math.isfinite(x) for x in result["losses"])
    assert not _same(ranks[0]["params"], ranks[1]["params"])


@pytest.mark.parametrize("how", ["torch.save", "dcp"])
@pytest.mark.parametrize(
    "spec", ["topk:ratio=0.01", "randomk:ratio=0.1", "qsgd", "threshold:density=0.01", "powersgd"]
)
def test_resume_from_checkpoint_is_bit_identical(tmp_path: Path, spec: str, how: str) -> None:
    ranks = _spawn(training_workers.resume, 2, tmp_path, spec, how)
    _check_resumed(ranks, spec, how)


@pytest.mark.parametrize("spec", ["topk:ratio=0.01", "powersgd"])
def test_resume_from_one_rank0_checkpoint(tmp_path: Path, spec: str) -> None:
    """gathered_state_dict(): rank 0 writes one file with every rank's hook state (as
    Lightning does); every rank loads it and picks its own part."""
    ranks = _spawn(training_workers.resume, 2, tmp_path, spec, "rank0")
    _check_resumed(ranks, spec, "rank0")


def _check_resumed(ranks: list[dict], spec: str, how: str) -> None:
    for result in ranks:
        assert result["saved_step"] == result["resumed_step"] == 6
        assert result["steps"] == 12
        assert not _same(result["uninterrupted"], result["resumed"]), (spec, how)
