"""Failure modes that must end in a clear error on every rank, never a hang or silent
corruption (docs/reliability.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import robustness_workers
from conftest import free_port

pytestmark = pytest.mark.distributed


def _spawn(fn, world_size: int, tmp_path: Path, *extra) -> list[dict]:
    mp.spawn(
        fn, args=(world_size, free_port(), str(tmp_path), *extra), nprocs=world_size, join=True
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


@pytest.mark.parametrize(
    ("what", "world_size"),
    [(what, 2) for what in robustness_workers.DISAGREEMENTS] + [("ratio", 3), ("seed", 3)],
)
def test_ranks_that_disagree_fail_alike_at_the_first_step(
    tmp_path: Path, what: str, world_size: int
) -> None:
    ranks = _spawn(robustness_workers.disagreeing_ranks, world_size, tmp_path, what)
    messages = set()
    for r, result in enumerate(ranks):
        assert result["error"] is not None, f"rank {r} trained on: {what} went unnoticed"
        assert "the ranks registered different hooks" in result["error"]
        assert result["steps"] == 0
        assert result["seconds"] < 20, result["seconds"]  # detected, not timed out
        # The message names the difference; torch appends the C++ frame it passed through.
        messages.add(result["error"].split("Differences:")[1].split("\n\n")[0])
    assert len(messages) == 1, messages
    (message,) = messages
    field = "compressor" if what == "ratio" else what
    assert f"  {field}: rank 0:" in message, message
    assert f"rank {world_size - 1}:" in message
    print(message)


@pytest.mark.parametrize(
    ("spec", "how"),
    [
        ("topk:ratio=0.01", "kill"),
        ("threshold:density=0.01", "kill"),
        ("powersgd", "kill"),
        ("topk:ratio=0.01", "stop"),
    ],
)
def test_survivors_of_a_dead_rank_fail_within_the_timeout(
    tmp_path: Path, spec: str, how: str
) -> None:
    """Each method's collectives (an asynchronous allgather, the blocking length exchange,
    PowerSGD's blocking first round) with a rank killed mid-training, and a rank frozen
    (SIGSTOP): the others raise within the process group's timeout instead of waiting
    forever (at once when the dead rank's sockets close; at the timeout when it is silent)."""
    world, timeout_s = 3, 10.0
    context = mp.get_context("spawn")
    port = free_port()
    procs = [
        context.Process(
            target=robustness_workers.dead_peer,
            args=(r, world, port, str(tmp_path), spec, timeout_s, how),
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s + 90
    for p in procs[:-1]:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [r for r, p in enumerate(procs[:-1]) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()  # the frozen rank, or survivors that hung
        p.join()
    assert not alive, f"ranks {alive} still waiting {timeout_s + 90:.0f} s after the start"
    assert procs[-1].exitcode == (17 if how == "kill" else -9)  # a frozen rank is killed here
    for r in range(world - 1):
        assert procs[r].exitcode == 0, (r, procs[r].exitcode)
        result = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        print(f"{spec} rank {r}: after {result['seconds']:.2f} s: {result['error'][:160]}")
        assert result["error"] is not None and result["steps"] == 5
        assert result["seconds"] < timeout_s + 5


def test_soak_no_growth_and_no_drift(tmp_path: Path) -> None:
    """3,000 steps on 2 ranks (python tests/python/robustness_workers.py --soak-steps N runs
    longer): memory and the hook's bookkeeping stay flat after warm-up, and the error-feedback
    invariant holds to float rounding at every check."""
    ranks = _spawn(robustness_workers.soak, 2, tmp_path, 3000)
    for r, result in enumerate(ranks):
        samples = result["samples"]
        first, last = samples[0], samples[-1]
        for s in samples:
            print(
                f"rank {r} step {s['step']}: rss {s['rss'] / 2**20:.1f} MiB, "
                f"{s['tensors']} tensors, drift {s['drift']:.2e}"
            )
        assert last["rss"] - first["rss"] < 8 * 2**20, (first["rss"], last["rss"])
        assert last["tensors"] == first["tensors"], [s["tensors"] for s in samples]
        assert {s["codecs"] for s in samples} == {first["codecs"]}
        assert {s["in_flight"] for s in samples} == {first["in_flight"]}
        assert all(s["pending"] <= first["in_flight"] for s in samples)
        assert max(s["drift"] for s in samples) < 1e-5, [s["drift"] for s in samples]
        assert result["stats"]["steps"] == 3000


# -- configuration and unusual parameters (one rank) ---------------------------------------

_BAD_OPTIONS = [
    ({"compressor": "topk", "ratio": "0.1"}, TypeError, "TopK.ratio must be a number, got str"),
    ({"compressor": "topk", "ratio": float("nan")}, ValueError, "ratio=nan is out of range"),
    ({"compressor": "randomk", "ratio": 0.0}, ValueError, "ratio=0 is out of range"),
    ({"compressor": "qsgd", "bits": 3}, ValueError, "bits=3 is not allowed; valid: bits in"),
    ({"compressor": "qsgd", "chunk": 7}, ValueError, "chunk=7 is out of range; valid"),
    ({"compressor": "sign", "chunk": 0}, ValueError, "chunk=0 is out of range"),
    ({"compressor": "powersgd", "rank": 0}, ValueError, "rank=0 is out of range"),
    ({"compressor": "threshold", "tau": -1.0}, ValueError, "tau=-1.0 is out of range"),
    ({"compressor": "threshold", "density": 2.0}, ValueError, "density=2 is out of range"),
    ({"compressor": "threshold", "tau": 1.0, "density": 0.1}, ValueError, "not both"),
    ({"compressor": "topk", "ratioo": 0.1}, ValueError, "unknown option\\(s\\) \\['ratioo'\\]"),
    ({"compressor": "topkk"}, ValueError, "unknown compressor 'topkk'; valid names"),
    ({"compressor": 3}, TypeError, "compressor spec must be a str, got int"),
    ({"compressor": "topk", "seed": -1}, ValueError, "seed=-1 is out of range"),
    ({"compressor": "topk", "seed": 1.5}, TypeError, "seed must be an int, got float"),
    ({"compressor": "topk", "min_numel": "3"}, TypeError, "min_numel must be an int, got str"),
    ({"compressor": "topk", "start_iter": -2}, ValueError, "start_iter=-2 is out of range"),
    ({"compressor": "topk", "log_every": True}, TypeError, "log_every must be an int, got bool"),
    ({"compressor": "topk", "error_feedback": "yes"}, TypeError, "error_feedback must be a bool"),
    ({"compressor": "topk", "process_group": "world"}, TypeError, "process_group must be a"),
    ({"compressor": "topk", "grad_scaler": 1.0}, TypeError, "grad_scaler must be a"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), _BAD_OPTIONS)
def test_every_bad_option_is_refused_at_register(
    single_rank_group: None, kwargs, error, match
) -> None:
    from torch.nn.parallel import DistributedDataParallel

    import gradcomp

    with pytest.raises(error, match=match):
        gradcomp.register(DistributedDataParallel(torch.nn.Linear(8, 8)), **kwargs)


def test_unsupported_parameter_dtypes_are_refused(single_rank_group: None) -> None:
    from torch.nn.parallel import DistributedDataParallel

    import gradcomp

    ddp = DistributedDataParallel(torch.nn.Linear(8, 8).double())
    with pytest.raises(TypeError, match="'weight' is torch.float64; gradcomp compresses float32"):
        gradcomp.register(ddp, "topk")


class _WithEmpty(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(64, 64))
        self.empty = torch.nn.Parameter(torch.empty(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.empty.sum()


@pytest.mark.parametrize("bucket_cap_mb", [25.0, 0.0])  # 0: the empty one in a bucket alone
def test_empty_parameters_are_skipped(single_rank_group: None, bucket_cap_mb: float) -> None:
    from torch.nn.parallel import DistributedDataParallel

    import gradcomp

    ddp = DistributedDataParallel(_WithEmpty(), bucket_cap_mb=bucket_cap_mb)
    state = gradcomp.register(ddp, "topk", ratio=0.1, min_numel=0)
    for _ in range(3):
        ddp(torch.randn(4, 64)).sum().backward()
    assert state.stats()["steps"] == 3 and set(state.residuals()) == {"w"}


def test_channels_last_parameters_match_plain_ddp(single_rank_group: None) -> None:
    """Parameters whose gradients are not contiguous in the default layout: the hook works on
    DDP's flat bucket, so lossless settings still reproduce plain DDP exactly."""
    from torch.nn.parallel import DistributedDataParallel

    import gradcomp

    results = []
    for spec in (None, "topk:ratio=1.0"):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 16, 3).to(memory_format=torch.channels_last)
        ddp = DistributedDataParallel(conv)
        if spec:
            gradcomp.register(ddp, spec, min_numel=0)
        opt = torch.optim.SGD(conv.parameters(), lr=0.1)
        for step in range(3):
            x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            ddp(x.to(memory_format=torch.channels_last)).square().mean().backward()
            opt.step()
        assert not conv.weight.grad.is_contiguous()
        results.append([p.detach().clone() for p in conv.parameters()])
    for plain, hooked in zip(*results, strict=True):
        assert torch.equal(plain, hooked)
