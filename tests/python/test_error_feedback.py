from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

import gradcomp
from gradcomp import _C


def test_invariant_sent_plus_residual_equals_gradient_sum() -> None:
    """Over many steps: sum of everything sent + final residual == sum of gradients."""
    compressor = _C.make_compressor("topk", {"ratio": 0.01})
    n, steps = 50_000, 200
    g = torch.Generator().manual_seed(0)
    residual = torch.zeros(n)
    grad_sum = torch.zeros(n, dtype=torch.float64)
    sent_sum = torch.zeros(n, dtype=torch.float64)
    for _ in range(steps):
        grad = torch.randn(n, generator=g)
        grad_sum += grad.double()
        payload = compressor.compress_with_feedback(grad, residual)
        assert payload.numel() == compressor.payload_bytes(n) == 8 * 500
        sent_sum += compressor.decompress(payload, n).double()
    torch.testing.assert_close(sent_sum + residual.double(), grad_sum, rtol=0, atol=1e-4)
    # Error feedback actually carries mass: most of the gradient is still pending.
    assert residual.abs().sum() > 0.1 * grad_sum.abs().sum()


def test_hook_invariant_inside_ddp(single_rank_group: None) -> None:
    """Through the real DDP hook (one rank, frozen weights): the gradients DDP hands the
    optimizer plus the final residuals add up to the raw gradients."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 10))
    plain = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 10))
    plain.load_state_dict(model.state_dict())
    ddp = DistributedDataParallel(model)
    state = gradcomp.register(ddp, "topk", ratio=0.02, min_numel=0, log_every=50)
    names = [n for n, _ in model.named_parameters()]
    raw_sum = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    sent_sum = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    for step in range(50):
        x = torch.randn(32, 64, generator=torch.Generator().manual_seed(step))
        ddp.zero_grad()
        plain.zero_grad()
        ddp(x).square().mean().backward()
        plain(x).square().mean().backward()
        for (n, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
            sent_sum[n] += p.grad.double()
            raw_sum[n] += q.grad.double()
    residuals = state.residuals()
    assert sorted(residuals) == sorted(names)
    for n, p in model.named_parameters():
        total = sent_sum[n] + residuals[n].double().view_as(p)
        torch.testing.assert_close(total, raw_sum[n], rtol=1e-5, atol=1e-5)
    stats = state.stats()
    assert stats["steps"] == 50 and stats["residual_norm"] > 0
