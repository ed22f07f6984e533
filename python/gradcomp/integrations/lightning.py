"""PyTorch Lightning: a Callback that registers gradcomp's hook on the DDP model the strategy
builds, and keeps every rank's hook state in Lightning's checkpoints.

    from gradcomp.integrations.lightning import GradcompCallback

    trainer = L.Trainer(strategy="ddp", callbacks=[GradcompCallback("topk", ratio=0.01)])

Why a Callback rather than ``DDPStrategy(ddp_comm_hook=gradcomp.comm_hook,
ddp_comm_state=state)`` (which works too, on CUDA, with ``HookState.for_model(module)`` built
before ``fit``): Lightning 2.6 registers ``ddp_comm_hook`` only when the root device is CUDA
(on CPU it is silently ignored), and it leaves the hook state out of its checkpoints.
``on_fit_start`` runs after the strategy has wrapped the model in DDP and before the first
training step, on CPU and CUDA alike.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as error:  # gradcomp does not depend on Lightning
    raise ImportError(
        "gradcomp.integrations.lightning needs PyTorch Lightning: pip install lightning"
    ) from error
from torch.nn.parallel import DistributedDataParallel

import gradcomp

__all__ = ["CHECKPOINT_KEY", "GradcompCallback"]

# Where the callback keeps the hook state in Lightning's checkpoint dict.
CHECKPOINT_KEY = "gradcomp"


class GradcompCallback(pl.Callback):
    """Registers gradcomp's DDP communication hook once Lightning has built the DDP model.

    ``GradcompCallback("topk", ratio=0.01)`` takes the arguments of ``gradcomp.register``;
    after ``fit`` starts, ``callback.state`` is the HookState (``state.stats()``).

    Checkpoints: Lightning writes one file, from rank 0. ``on_save_checkpoint`` (which runs on
    every rank) stores ``state.gathered_state_dict()``, every rank's residuals, under
    ``checkpoint["gradcomp"]``; on resume, ``on_load_checkpoint`` keeps it until the model is
    wrapped, and ``on_fit_start`` has each rank load its own part. ``loaded_step`` is the step
    that restored state was saved at (None when the fit started fresh).
    """

    def __init__(self, compressor: str | gradcomp.CompressorConfig = "topk", **options: Any):
        self.compressor = compressor
        self.options = options
        # What gradcomp.register returned: a HookState (an AutoState for "auto").
        self.state: Any = None
        self.loaded_step: int | None = None
        self._restore: dict[str, Any] | None = None  # from a checkpoint, until fit starts

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Every rank runs this (rank 0 writes the file), so every rank's part can be gathered.
        if self.state is not None:
            checkpoint[CHECKPOINT_KEY] = self.state.gathered_state_dict()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning restores callbacks before it wraps the model in DDP: keep it for fit start.
        self._restore = checkpoint.get(CHECKPOINT_KEY)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = trainer.strategy.model
        if not isinstance(model, DistributedDataParallel):
            # A single-device run, or a strategy that is not DDP (FSDP, DeepSpeed): gradcomp
            # compresses DDP's gradient buckets only.
            raise RuntimeError(
                "GradcompCallback needs a DDP strategy (strategy='ddp' or DDPStrategy(...)); "
                f"trainer.strategy is {type(trainer.strategy).__name__} and its model is "
                f"{type(model).__name__}, not DistributedDataParallel"
            )
        # Before the first backward. fit() wraps the model in a new DDP each time, so this
        # registers once per fit, on a fresh state unless a checkpoint is restored.
        state = gradcomp.register(model, self.compressor, **self.options)
        self.state = state
        self.loaded_step = None
        if self._restore is not None:
            state.load_state_dict(self._restore)  # this rank's part
            self._restore = None
            self.loaded_step = state.step
