"""What the recipes share that has nothing to do with gradcomp: a tiny model, synthetic data
and the one-line JSON report each rank prints.

Kept apart so that each recipe script shows only its framework's integration. Every recipe
trains the same task: a 3-layer MLP classifies noisy copies of four random prototypes.
Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import torch

IN_FEATURES = 32
HIDDEN = 256
CLASSES = 4
BATCH = 32
# The prefix of the line every rank prints last; tests/python/test_recipes.py parses it.
REPORT_PREFIX = "GRADCOMP_RECIPE_RESULT "


class TinyMLP(torch.nn.Module):
    """Weights of 8192, 65536 and 1024 elements (compressed: >= gradcomp's default min_numel
    of 1024) and small biases (sent dense), so the wire ratio shows both paths."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(IN_FEATURES, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def synthetic_dataset(samples: int, seed: int = 0) -> torch.utils.data.TensorDataset:
    """Noisy copies of four fixed class prototypes: learnable in a few dozen steps, and
    nothing to download.

    The prototypes are the same in every process (fixed seed); ``seed`` picks the samples, so a
    DistributedSampler (or the framework's equivalent) can shard one dataset, or each rank can
    draw its own with a different seed.
    """
    prototypes = torch.randn(CLASSES, IN_FEATURES, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (samples,), generator=g)
    x = prototypes[y] + 2.0 * torch.randn(samples, IN_FEATURES, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def rank_batches(rank: int, steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches for one rank, different on every rank (for loops without a loader)."""
    data = synthetic_dataset(steps * BATCH, seed=seed + 1000 * (rank + 1))
    return [
        (data.tensors[0][i : i + BATCH], data.tensors[1][i : i + BATCH])
        for i in range(0, steps * BATCH, BATCH)
    ]


def param_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal on all ranks iff the replicas are identical."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def report(recipe: str, rank: int, world_size: int, **fields: Any) -> None:
    """Prints the rank's result as one JSON line.

    One write call per line: the ranks share torchrun's stdout, and print() writes the text
    and the newline separately, so another rank's output could land in between.
    """
    record = {"recipe": recipe, "rank": rank, "world_size": world_size, **fields}
    sys.stdout.write(REPORT_PREFIX + json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()
