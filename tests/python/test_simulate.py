"""The convergence simulator against real DDP with the hook: 2 Gloo ranks and 2 simulated
workers end with bit-identical parameters, for every method and the recipe options."""

from __future__ import annotations

import pytest
import simulate_workers
import torch
import torch.multiprocessing as mp

import gradcomp

from conftest import free_port
from ddp_workers import SmallNet, _batches

CASES = [
    ("topk:ratio=0.05", {}),
    ("topk_approx:ratio=0.02", {"min_numel": 0}),
    ("topk_int8:ratio=0.05,min_k=40", {}),
    ("randomk:ratio=0.1", {}),
    ("threshold:density=0.02", {}),
    ("qsgd:bits=4", {}),
    ("sign", {}),
    ("int8", {}),
    ("fp16", {}),
    ("none", {}),
    ("powersgd:rank=2", {}),
    ("topk:ratio=0.02", {"momentum": 0.9, "clip": 1.0, "warmup_steps": 8}),
    ("randomk:ratio=0.1", {"momentum": 0.9}),
    ("sign", {"momentum": 0.9, "feedback": "ef21"}),
    ("topk_int8:ratio=0.05", {"feedback": "ef21", "clip": 0.5}),
    ("topk:ratio=0.05", {"start_iter": 3, "momentum": 0.5}),
]


def simulate(spec: str, options: dict, workers: int, steps: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = SmallNet()
    sim = gradcomp.Simulator(model, spec, workers=workers, **options)
    opt = simulate_workers.optimizer_for(model, options)
    batches = [_batches(rank, steps) for rank in range(workers)]
    for step in range(steps):
        opt.zero_grad()
        for worker in range(workers):
            x, y = batches[worker][step]
            torch.nn.functional.cross_entropy(model(x), y).backward()
            sim.take_gradient(worker)
        sim.average()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(
        simulate_workers.ddp_runs,
        args=(2, free_port(), str(out), CASES),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    return ranks[0]


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{s} {o}" for s, o in CASES])
def test_two_workers_match_two_ddp_ranks_bit_for_bit(
    ddp_results: list[dict[str, torch.Tensor]], case: int
) -> None:
    torch.set_num_threads(1)
    spec, options = CASES[case]
    simulated = simulate(spec, options, workers=2, steps=simulate_workers.STEPS)
    for name, expected in ddp_results[case].items():
        assert torch.equal(simulated[name], expected), (
            f"{spec} {options}: {name} differs by "
            f"{(simulated[name] - expected).abs().max().item():.3g}"
        )


def test_more_workers_average_more_gradients() -> None:
    # Lossless settings: the simulator at 4 workers is plain data parallelism over 4 shards.
    torch.manual_seed(0)
    simulated = simulate("none", {}, workers=4, steps=3)
    torch.manual_seed(0)
    model = SmallNet()
    opt = simulate_workers.optimizer_for(model, {})
    batches = [_batches(rank, 3) for rank in range(4)]
    for step in range(3):
        opt.zero_grad()
        loss = sum(
            torch.nn.functional.cross_entropy(model(batches[w][step][0]), batches[w][step][1])
            for w in range(4)
        )
        (loss / 4).backward()
        opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(simulated[name], p.detach(), rtol=1e-5, atol=1e-6)


def test_bad_use_is_refused() -> None:
    model = SmallNet()
    with pytest.raises(ValueError, match="workers=0 is out of range"):
        gradcomp.Simulator(model, "topk", workers=0)
    sim = gradcomp.Simulator(model, "topk", workers=2)
    with pytest.raises(ValueError, match="worker=2 is out of range; valid: 0 to 1"):
        sim.take_gradient(2)
    with pytest.raises(RuntimeError, match=r"no gradient taken from worker\(s\) \[0, 1\]"):
        sim.average()
    with pytest.raises(ValueError, match="momentum=1.5 is out of range"):
        gradcomp.Simulator(model, "topk", workers=2, momentum=1.5)
