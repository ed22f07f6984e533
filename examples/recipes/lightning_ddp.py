"""Recipe: PyTorch Lightning's DDP strategy with gradcomp, through gradcomp's Lightning callback.

    python examples/recipes/lightning_ddp.py            # Lightning starts the second process

Two CPU processes on Gloo (``accelerator="cpu", devices=2``); Lightning's default "popen"
launcher re-runs this script for rank 1, so the script must be importable and runnable as is.

gradcomp ships the Lightning callback: ``gradcomp.integrations.lightning.GradcompCallback``
registers the hook in ``on_fit_start``, once the DDP strategy has wrapped the model (on CPU and
CUDA alike; Lightning's own ``DDPStrategy(ddp_comm_hook=..., ddp_comm_state=...)`` registers a
hook on CUDA only). See its docstring and docs/recipes.md.

Checkpoints: Lightning writes one file, from rank 0. The callback stores
``state.gathered_state_dict()`` (every rank's residuals) in it and, on resume, each rank
loads its own part:

    python examples/recipes/lightning_ddp.py --resume-at 30   # fit 30 steps, save, resume
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

import gradcomp
from gradcomp.integrations.lightning import GradcompCallback

# The task all recipes share (model, synthetic data, report line) lives beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe_common import BATCH, TinyMLP, param_digest, report, synthetic_dataset  # noqa: E402


class RecipeCallback(GradcompCallback):
    """The shipped callback, plus a digest of the residuals a resume loaded (the recipe's test
    compares it with the saved ones)."""

    loaded_digest = ""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.loaded_step is not None and self.state is not None:
            self.loaded_digest = residual_digest(self.state)


class LitClassifier(L.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.model = TinyMLP()
        self.lr = lr
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.losses.append(loss.item())
        if self.global_rank == 0 and batch_idx % 20 == 0:
            print(f"[rank 0] step {self.global_step:3d} loss {loss.item():.4f}", flush=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def residual_digest(state: gradcomp.HookState) -> str:
    """A SHA-256 of this rank's residuals, to compare a checkpoint with what a resume loaded."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.residuals().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def make_trainer(steps: int, callback: GradcompCallback) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo"),
        max_steps=steps,
        callbacks=[callback],
        # Keep the example quiet and self-contained: no logs or automatic checkpoints.
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compressor", default="topk:ratio=0.01")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--resume-at", type=int, default=0, help="fit this many steps, checkpoint, resume"
    )
    parser.add_argument("--checkpoint", default="gradcomp-lightning.ckpt")
    args = parser.parse_args()

    torch.set_num_threads(1)  # two processes on two cores
    L.seed_everything(0, verbose=False)  # the same initial weights in both processes
    module = LitClassifier(args.lr)
    # One dataset; Lightning adds a DistributedSampler, so each rank trains on its own half.
    loader = torch.utils.data.DataLoader(
        synthetic_dataset(2 * BATCH * args.steps, seed=1), batch_size=BATCH, shuffle=True
    )
    extra: dict[str, Any] = {}
    if args.resume_at:
        first = RecipeCallback(args.compressor)
        trainer = make_trainer(args.resume_at, first)
        trainer.fit(module, loader)
        trainer.save_checkpoint(args.checkpoint)  # every rank calls it; rank 0 writes
        assert first.state is not None
        extra = {"saved_step": first.state.step, "saved_digest": residual_digest(first.state)}
    callback = RecipeCallback(args.compressor)
    trainer = make_trainer(args.steps, callback)
    trainer.fit(module, loader, ckpt_path=args.checkpoint if args.resume_at else None)

    assert callback.state is not None
    window = min(10, len(module.losses))
    report(
        "lightning_ddp",
        trainer.global_rank,
        trainer.world_size,
        stats=callback.state.stats(),
        global_step=trainer.global_step,
        losses_first=sum(module.losses[:window]) / window,
        losses_last=sum(module.losses[-window:]) / window,
        param_digest=param_digest(module),
        **extra,
        **({"loaded_digest": callback.loaded_digest} if args.resume_at else {}),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
