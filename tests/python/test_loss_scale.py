"""ResidualScale's bookkeeping (gradcomp/loss_scale.py): on the host it rescales the residuals
when the loss scale changes; for CUDA buckets it hands the codecs new / old as a tensor instead.
The device branch only needs the scale as a tensor, so it runs here on CPU tensors."""

from __future__ import annotations

import torch

from gradcomp import _C
from gradcomp.loss_scale import ResidualScale


class FakeScaler:
    """What ResidualScale reads of a torch.amp.GradScaler."""

    def __init__(self, scale: float) -> None:
        self.scale = torch.full((1,), scale)

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return float(self.scale.item())

    def _get_scale_async(self) -> torch.Tensor:
        return self.scale


CUDA = torch.device("cuda")  # the branch taken for CUDA buckets; nothing runs on a GPU


def _ratio(value: torch.Tensor | None) -> float | None:
    return None if value is None else float(value.item())


def test_device_ratios_follow_the_scale_and_skip_warm_up_steps() -> None:
    scaler = FakeScaler(4.0)
    scale = ResidualScale(scaler, _C.ErrorFeedback(), device_ratio=True)
    step_scale, ratio = scale.begin_step(CUDA)
    assert _ratio(ratio) is None and float(step_scale.item()) == 4.0  # nothing to rescale yet
    scaler.scale.fill_(8.0)
    assert _ratio(scale.begin_step(CUDA)[1]) == 2.0
    assert _ratio(scale.begin_step(CUDA)[1]) == 1.0  # unchanged: a ratio of exactly 1
    # A warm-up step compresses nothing: the residuals stay at 8 and no ratio is handed out...
    scaler.scale.fill_(32.0)
    assert _ratio(scale.begin_step(CUDA, compressing=False)[1]) is None
    assert scale.value() == 8.0
    # ...so the next compressing step brings them from 8 to its own scale.
    scaler.scale.fill_(16.0)
    assert _ratio(scale.begin_step(CUDA)[1]) == 2.0
    assert scale.value() == 16.0


def test_device_ratio_after_loading_residuals_at_another_scale() -> None:
    scaler = FakeScaler(8.0)
    scale = ResidualScale(scaler, _C.ErrorFeedback(), device_ratio=True)
    scale.load(2.0)
    assert _ratio(scale.begin_step(CUDA)[1]) == 4.0


def test_host_scaling_rescales_the_residuals() -> None:
    residuals = _C.ErrorFeedback()
    residuals.load_state_dict({"w": torch.ones(3)})
    scaler = FakeScaler(4.0)
    scale = ResidualScale(scaler, residuals, device_ratio=True)
    assert scale.begin_step(torch.device("cpu")) == (4.0, None)
    scaler.scale.fill_(2.0)
    assert scale.begin_step(torch.device("cpu")) == (2.0, None)
    assert torch.equal(residuals.state_dict()["w"], torch.full((3,), 0.5))
    # PowerSGD (device_ratio=False) takes the host path on CUDA too.
    powersgd = ResidualScale(scaler, residuals, device_ratio=False)
    assert powersgd.begin_step(CUDA) == (2.0, None)


def test_switching_from_device_to_host_keeps_the_scale() -> None:
    residuals = _C.ErrorFeedback()
    residuals.load_state_dict({"w": torch.ones(2)})
    scaler = FakeScaler(4.0)
    scale = ResidualScale(scaler, residuals, device_ratio=True)
    scale.begin_step(CUDA)
    scaler.scale.fill_(8.0)
    assert scale.begin_step(torch.device("cpu")) == (8.0, None)
    assert torch.equal(residuals.state_dict()["w"], torch.full((2,), 2.0))
