"""Hugging Face Accelerate: gradcomp's hook on the model ``accelerator.prepare`` returns, and
its state in ``accelerator.save_state`` / ``load_state``.

    from gradcomp.integrations import accelerate as gradcomp_accelerate

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    state = gradcomp_accelerate.register(accelerator, model, "topk", ratio=0.01)
    if state is not None:
        accelerator.register_for_checkpointing(gradcomp_accelerate.Checkpoint(state))

Accelerate's own ``DistributedDataParallelKwargs(comm_hook=...)`` takes one of its
``DDPCommunicationHookType`` values (fp16, bf16, PowerSGD), not an arbitrary hook; with more
than one process ``prepare`` returns the model wrapped in DistributedDataParallel, and
registering on that is all it takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import accelerate
except ImportError as error:  # gradcomp does not depend on Accelerate
    raise ImportError(
        "gradcomp.integrations.accelerate needs Hugging Face Accelerate: pip install accelerate"
    ) from error
import torch
from torch.nn.parallel import DistributedDataParallel

import gradcomp

if TYPE_CHECKING:
    from gradcomp.auto import AutoState

__all__ = ["Checkpoint", "register"]


def register(
    accelerator: accelerate.Accelerator,
    model: torch.nn.Module,
    compressor: str | gradcomp.CompressorConfig = "topk",
    **options: Any,
) -> gradcomp.HookState | AutoState | None:
    """Registers gradcomp's hook on ``model``, the model ``accelerator.prepare`` returned, and
    returns what ``gradcomp.register`` returns (its HookState); None for a single process,
    where prepare returns the bare model and there is no gradient exchange to compress.
    ``options`` as in ``gradcomp.register``.

    Raises RuntimeError with several processes when the model is not DDP (FSDP, DeepSpeed,
    Megatron-LM, XLA, or a model that did not go through prepare).
    """
    # With dynamo_backend set, prepare compiles the DDP model: the hook goes on the DDP inside.
    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, DistributedDataParallel):
        return gradcomp.register(inner, compressor, **options)
    if accelerator.num_processes == 1:
        return None
    raise RuntimeError(
        "gradcomp compresses DistributedDataParallel's gradient buckets, and the model is a "
        f"{type(model).__name__} (accelerator.distributed_type="
        f"{accelerator.distributed_type}, {accelerator.num_processes} processes): pass the "
        "model accelerator.prepare returned, with a DDP launch (multi-GPU or multi-CPU, not "
        "FSDP, DeepSpeed, Megatron-LM or XLA)"
    )


class Checkpoint:
    """The hook state as ``accelerator.register_for_checkpointing`` takes it.

    ``accelerator.save_state`` calls ``state_dict()`` on every process and writes the result
    from the main one only, so this returns ``state.gathered_state_dict()`` (every rank's
    residuals; a collective, which every process reaches there). ``load_state`` has every
    process read that one file; ``load_state_dict`` picks this rank's part.
    """

    def __init__(self, state: gradcomp.HookState) -> None:
        if not isinstance(state, gradcomp.HookState):
            raise TypeError(
                f"Checkpoint takes the HookState register() returned, got {type(state).__name__}"
            )
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state.gathered_state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state.load_state_dict(state_dict)
