"""gradcomp.integrations: the Lightning callback and the Accelerate helpers on one rank, and
the ImportError each gives without its framework (the recipes in test_recipes.py run them
on two ranks)."""

from __future__ import annotations

import importlib
import io
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import gradcomp


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))


def _step(ddp: torch.nn.Module, seed: int = 0) -> None:
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(seed))
    ddp(x).square().sum().backward()


@pytest.mark.parametrize(
    ("module", "framework", "hint"),
    [("lightning", "lightning", "pip install lightning"), ("accelerate", "accelerate", "pip")],
)
def test_missing_framework_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, framework: str, hint: str
) -> None:
    monkeypatch.setitem(sys.modules, framework, None)  # makes `import <framework>` fail
    monkeypatch.delitem(sys.modules, f"{framework}.pytorch", raising=False)
    monkeypatch.delitem(sys.modules, f"gradcomp.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=f"needs .*: pip install {framework}$"):
        importlib.import_module(f"gradcomp.integrations.{module}")
    importlib.import_module("gradcomp.integrations")  # the package itself needs neither


# -- Lightning ---------------------------------------------------------------------------------


def _trainer(model: torch.nn.Module) -> SimpleNamespace:
    """What the callback reads of a Trainer: the strategy and the model it wrapped."""
    return SimpleNamespace(strategy=SimpleNamespace(model=model))


def test_lightning_callback_needs_a_ddp_strategy() -> None:
    pytest.importorskip("lightning")
    from gradcomp.integrations.lightning import GradcompCallback

    callback = GradcompCallback("topk", ratio=0.01)
    with pytest.raises(RuntimeError, match="needs a DDP strategy.*its model is Linear"):
        callback.on_fit_start(_trainer(torch.nn.Linear(2, 2)), None)
    assert callback.state is None


def test_lightning_callback_checkpoint_round_trip(single_rank_group: None) -> None:
    pytest.importorskip("lightning")
    from gradcomp.integrations.lightning import GradcompCallback

    first = GradcompCallback("topk", ratio=0.05, min_numel=0)
    ddp = DistributedDataParallel(_model())
    first.on_fit_start(_trainer(ddp), None)
    assert first.loaded_step is None
    for i in range(3):
        _step(ddp, i)
    checkpoint: dict = {}
    first.on_save_checkpoint(None, None, checkpoint)
    assert set(checkpoint["gradcomp"]["ranks"]) == {"rank0"}
    checkpoint = torch.load(io.BytesIO(_saved(checkpoint)), weights_only=False)

    resumed = GradcompCallback("topk", ratio=0.05, min_numel=0)
    resumed.on_load_checkpoint(None, None, checkpoint)
    assert resumed.state is None  # kept until the model is wrapped
    other = DistributedDataParallel(_model())
    resumed.on_fit_start(_trainer(other), None)
    assert resumed.loaded_step == 3 and resumed.state.step == 3
    saved, loaded = first.state.residuals(), resumed.state.residuals()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)


def _saved(obj: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# -- Accelerate --------------------------------------------------------------------------------


def test_accelerate_register_returns_none_for_a_single_process() -> None:
    pytest.importorskip("accelerate")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from gradcomp.integrations import accelerate as gradcomp_accelerate

    accelerator = Accelerator(cpu=True)
    try:
        model = accelerator.prepare(_model())
        assert accelerator.num_processes == 1
        assert gradcomp_accelerate.register(accelerator, model, "topk", ratio=0.01) is None
    finally:
        AcceleratorState._reset_state(True)  # Accelerate's process-wide singletons


def test_accelerate_register_refuses_a_model_that_is_not_ddp() -> None:
    pytest.importorskip("accelerate")
    from gradcomp.integrations import accelerate as gradcomp_accelerate

    fsdp = SimpleNamespace(num_processes=2, distributed_type="FSDP")
    with pytest.raises(RuntimeError, match=r"model is a Linear \(.*=FSDP, 2 processes\)"):
        gradcomp_accelerate.register(fsdp, torch.nn.Linear(2, 2))


def test_accelerate_register_and_checkpoint(single_rank_group: None) -> None:
    pytest.importorskip("accelerate")
    from gradcomp.integrations import accelerate as gradcomp_accelerate

    accelerator = SimpleNamespace(num_processes=1, distributed_type="MULTI_CPU")
    ddp = DistributedDataParallel(_model())
    # torch.compile's wrapper (Accelerate's dynamo_backend) around the DDP model.
    compiled = SimpleNamespace(_orig_mod=ddp)
    state = gradcomp_accelerate.register(accelerator, compiled, "topk", ratio=0.05, min_numel=0)
    assert isinstance(state, gradcomp.HookState)
    for i in range(2):
        _step(ddp, i)
    # As accelerator.save_state / load_state use a registered object (custom_checkpoint_<i>).
    saved = torch.load(
        io.BytesIO(_saved(gradcomp_accelerate.Checkpoint(state).state_dict())),
        weights_only=False,
    )
    other = DistributedDataParallel(_model())
    restored = gradcomp.register(other, "topk", ratio=0.05, min_numel=0)
    gradcomp_accelerate.Checkpoint(restored).load_state_dict(saved)
    assert restored.step == 2
    assert all(torch.equal(r, state.residuals()[n]) for n, r in restored.residuals().items())
    with pytest.raises(TypeError, match="takes the HookState register\\(\\) returned, got dict"):
        gradcomp_accelerate.Checkpoint({})
