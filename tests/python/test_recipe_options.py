"""The convergence-recipe options of register() on one rank: min_k, momentum correction and
its masking, local clipping, the density warm-up, EF21 feedback, their checkpoints and the
checks that refuse misuse."""

from __future__ import annotations

import io

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import gradcomp
from gradcomp.schedule import STAGES


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.Linear(64, 4)
    )


def _train(
    ddp: DistributedDataParallel, opt: torch.optim.Optimizer, steps: int, first: int = 0
) -> None:
    for step in range(first, first + steps):
        x = torch.randn(8, 64, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        ddp(x).square().mean().backward()
        opt.step()


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_min_k_is_a_per_tensor_floor() -> None:
    topk = gradcomp.TopK(ratio=0.01, min_k=64).build()
    assert topk.spec == "topk:ratio=0.01,min_k=64"
    assert topk.payload_bytes(4096) == 8 * 64  # 1% would be 41
    assert topk.payload_bytes(100_000) == 8 * 1000  # the ratio wins above the floor
    assert topk.payload_bytes(20) == 8 * 20  # never more than the tensor
    assert gradcomp.TopK(ratio=0.01).build().spec == "topk:ratio=0.01"  # unchanged without
    assert gradcomp.RandomK(ratio=0.01, min_k=64).build().payload_bytes(4096) == 4 * 64
    assert gradcomp.TopKInt8(ratio=0.01, min_k=64).build().payload_bytes(4096) == 4 + 5 * 64
    with pytest.raises(ValueError, match=r"min_k=-1 is out of range"):
        gradcomp.TopK(ratio=0.01, min_k=-1)


def test_momentum_on_lossless_settings_is_momentum_sgd(single_rank_group: None) -> None:
    """Momentum correction without masking, on a lossless method, with SGD without momentum,
    applies exactly SGD's momentum: the same bits as plain DDP with SGD(momentum=0.9)."""
    plain = _model()
    _train(DistributedDataParallel(plain), torch.optim.SGD(plain.parameters(), 0.1, 0.9), 6)
    model = _model()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
    gradcomp.register(ddp, "topk:ratio=1.0", momentum=0.9, mask_momentum=False, optimizer=opt)
    _train(ddp, opt, 6)
    for got, want in zip(_params(model), _params(plain), strict=True):
        assert torch.equal(got, want)


def test_masking_clears_the_velocity_where_values_were_sent(single_rank_group: None) -> None:
    model = _model()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = gradcomp.register(ddp, "topk:ratio=0.1", min_numel=0, momentum=0.9, optimizer=opt)
    _train(ddp, opt, 1)
    residuals = state.residuals()
    velocity = state.local_update.velocity.state_dict()
    for name, residual in residuals.items():
        sent = residual == 0
        k = max(1, -(-residual.numel() // 10))
        assert int(sent.sum()) == k, name  # random gradients: no exact zeros otherwise
        assert torch.equal(velocity[name][sent], torch.zeros(k)), name
        assert bool((velocity[name][~sent] != 0).all()), name  # the rest keeps its momentum


def test_local_clipping_bounds_each_ranks_gradient(single_rank_group: None) -> None:
    model = _model()
    ddp = DistributedDataParallel(model)
    gradcomp.register(ddp, "topk:ratio=1.0", clip=1e-3)
    ddp(torch.randn(8, 64)).square().sum().backward()
    norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert 0.9e-3 < norm.item() <= 1e-3 * (1 + 1e-5)
    # A bound above the gradient's norm changes nothing.
    plain, clipped = _model(), _model()
    DistributedDataParallel(plain)(torch.ones(2, 64)).sum().backward()
    ddp = DistributedDataParallel(clipped)
    gradcomp.register(ddp, "topk:ratio=1.0", clip=1e6)
    ddp(torch.ones(2, 64)).sum().backward()
    for a, b in zip(plain.parameters(), clipped.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_density_warm_up_falls_in_stages_to_the_target(single_rank_group: None) -> None:
    model = _model()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    state = gradcomp.register(
        ddp, "topk:ratio=0.01", min_numel=0, warmup_steps=8, warmup_density=0.5, start_iter=2
    )
    densities, sent = [], []
    for step in range(12):
        densities.append(state.stats()["density"])
        _train(ddp, opt, 1, first=step)
        sent.append(state.stats()["bytes_sent_last_step"])
    expected = [0.5 * (0.01 / 0.5) ** (i / STAGES) for i in range(STAGES)]
    # 2 dense steps (start_iter), 4 stages of 2 steps, then the target.
    assert densities[2:10] == pytest.approx([d for d in expected for _ in range(2)])
    assert densities[10:] == [0.01, 0.01]
    assert sent[2] > sent[4] > sent[6] > sent[8] > sent[10] == sent[11]
    assert state.stats()["warmup_steps_left"] == 0
    with pytest.raises(ValueError, match="'sign:chunk=1024' has none"):
        gradcomp.register(DistributedDataParallel(_model()), "sign", warmup_steps=10)
    with pytest.raises(ValueError, match="must exceed the method's density 0.3"):
        gradcomp.register(DistributedDataParallel(_model()), "topk:ratio=0.3", warmup_steps=10)


def test_ef21_on_lossless_settings_tracks_the_gradient(single_rank_group: None) -> None:
    plain = _model()
    _train(DistributedDataParallel(plain), torch.optim.SGD(plain.parameters(), 0.1, 0.9), 6)
    model = _model()
    ddp = DistributedDataParallel(model)
    gradcomp.register(ddp, "topk:ratio=1.0", feedback="ef21", min_numel=0)
    _train(ddp, torch.optim.SGD(model.parameters(), 0.1, 0.9), 6)
    for got, want in zip(_params(model), _params(plain), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"momentum": 0.9, "warmup_steps": 4, "clip": 1.0},
        {"momentum": 0.9, "feedback": "ef21"},
    ],
)
def test_checkpoint_keeps_velocities_and_estimates(single_rank_group: None, options) -> None:
    """Resuming from state_dict() continues bit for bit."""

    def run(steps: int, saved: dict | None = None, params=None, first: int = 0):
        model = _model()
        if params is not None:
            with torch.no_grad():
                for p, q in zip(model.parameters(), params, strict=True):
                    p.copy_(q)
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        state = gradcomp.register(ddp, "topk:ratio=0.05", min_numel=0, **options)
        if saved is not None:
            state.load_state_dict(saved)
        _train(ddp, opt, steps, first)
        return model, state

    straight, _ = run(8)
    half, state = run(4)
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, _ = run(4, saved, _params(half), first=4)
    for a, b in zip(_params(straight), _params(resumed), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "spec, options, error, match",
    [
        ("topk", {"momentum": 1.0}, ValueError, r"momentum=1.0 is out of range; valid: 0 <="),
        ("topk", {"momentum": "high"}, TypeError, "momentum must be a number"),
        ("topk", {"clip": 0.0}, ValueError, r"clip=0.0 is out of range; valid: a finite clip"),
        ("topk", {"warmup_steps": -1}, ValueError, r"warmup_steps=-1 is out of range"),
        ("topk", {"warmup_steps": 5, "warmup_density": 1.5}, ValueError, "warmup_density=1.5"),
        ("topk", {"feedback": "ef22"}, ValueError, r"feedback='ef22'; valid: 'residual', 'ef21'"),
        ("powersgd", {"feedback": "ef21"}, ValueError, "PowerSGD keeps its own"),
        ("topk", {"feedback": "ef21", "error_feedback": False}, ValueError, "error_feedback=True"),
        ("topk", {"momentum": 0.9, "error_feedback": False}, ValueError, "needs error_feedback"),
        ("topk", {"mask_momentum": 1}, TypeError, "mask_momentum must be a bool"),
    ],
)
def test_bad_recipe_options_are_refused(single_rank_group: None, spec, options, error, match):
    with pytest.raises(error, match=match):
        gradcomp.register(DistributedDataParallel(_model()), spec, **options)


def test_momentum_is_refused_beside_a_grad_scaler(single_rank_group: None) -> None:
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(ValueError, match="with grad_scaler the hook receives loss-scaled"):
        gradcomp.register(
            DistributedDataParallel(_model()), "topk", momentum=0.9, grad_scaler=scaler
        )


def test_an_optimizer_with_its_own_momentum_is_refused(single_rank_group: None) -> None:
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"SGD param group 0 has its own momentum=0.9"):
        gradcomp.register(DistributedDataParallel(model), "topk", momentum=0.9, optimizer=sgd)
    adam = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match=r"betas=\(0.0, ...\)"):
        gradcomp.check_optimizer(adam, 0.9)
    gradcomp.check_optimizer(torch.optim.AdamW(model.parameters(), betas=(0.0, 0.99)), 0.9)
    gradcomp.check_optimizer(sgd, 0.0)  # no momentum in the hook: anything goes
