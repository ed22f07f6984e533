"""Dense DDP vs gradcomp on Fashion-MNIST: 2 ranks on Gloo, one table at the end.

    torchrun --nproc-per-node 2 examples/fashion_mnist_ddp.py --epochs 2

Trains the same small CNN from the same initialisation once per method (plain DDP allreduce,
gradcomp "none", gradcomp Top-K 1% with error feedback by default) and prints, per method:
test accuracy, bytes each rank sent per step, and wall time per step.

Data: Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist); nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import struct
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import gradcomp

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


def load_fashion_mnist(split: str, data_dir: Path = DATA_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 [N, 1, 28, 28] normalised, labels as int64 [N]."""
    images_file, labels_file = FILES[split]
    missing = [f for f in (images_file, labels_file) if not (data_dir / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {', '.join(str(data_dir / f) for f in missing)} missing. "
            "Install it with: apt-get install dataset-fashion-mnist"
        )
    images = _read_idx(data_dir / images_file).float().div_(255).sub_(0.2860).div_(0.3530)
    labels = _read_idx(data_dir / labels_file).long()
    return images.unsqueeze(1), labels


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = torch.nn.Linear(64 * 7 * 7, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Test accuracy over the whole test set, each rank scoring its own shard."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model.eval()
    correct = torch.zeros(2)
    with torch.no_grad():
        for start in range(rank * 1000, len(images), world * 1000):
            logits = model(images[start : start + 1000])
            correct[0] += (logits.argmax(1) == labels[start : start + 1000]).sum()
            correct[1] += len(logits)
    dist.all_reduce(correct)
    model.train()
    return (correct[0] / correct[1]).item()


def train(method: str, args: argparse.Namespace, data: dict) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)  # same initialisation for every method
    model = SmallCNN()
    ddp = DistributedDataParallel(model)
    numel = sum(p.numel() for p in model.parameters())
    state = None
    if method != "plain":
        state = gradcomp.register(ddp, method)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    images, labels = data["train"]
    shard = torch.arange(rank, len(images), world)  # each rank its own half of the data
    order = torch.Generator().manual_seed(args.seed)
    steps, step_seconds = 0, 0.0
    for epoch in range(args.epochs):
        perm = shard[torch.randperm(len(shard), generator=order)]
        epoch_start = time.perf_counter()
        for start in range(0, len(perm) - args.batch_size + 1, args.batch_size):
            idx = perm[start : start + args.batch_size]
            began = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(ddp(images[idx]), labels[idx]).backward()
            opt.step()
            step_seconds += time.perf_counter() - began
            steps += 1
        accuracy = evaluate(model, *data["test"])
        if rank == 0:
            print(
                f"[{method}] epoch {epoch + 1}/{args.epochs}: test accuracy {accuracy:.4f}, "
                f"{time.perf_counter() - epoch_start:.1f} s",
                flush=True,
            )
    if state is not None:
        stats = state.stats()
        bytes_per_step = stats["bytes_sent"] / stats["steps"]
    else:  # DDP's own allreduce sends every fp32 gradient
        bytes_per_step = 4 * numel
    return {
        "method": method,
        "test_accuracy": accuracy,
        "bytes_per_step": bytes_per_step,
        "dense_bytes_per_step": 4 * numel,
        "ms_per_step": 1000 * step_seconds / steps,
        "steps": steps,
    }


def print_table(results: list[dict], world: int) -> None:
    print(
        f"\nFashion-MNIST, {world} ranks on Gloo (CPU), SmallCNN "
        f"({results[0]['dense_bytes_per_step'] / 4:,.0f} parameters)"
    )
    print(
        f"| {'method':<24} | {'test acc':>8} | {'bytes/step':>12} | {'vs dense':>8} | "
        f"{'ms/step':>8} |"
    )
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 14}|{'-' * 10}|{'-' * 10}|")
    for r in results:
        vs_dense = r["bytes_per_step"] / r["dense_bytes_per_step"]
        print(
            f"| {r['method']:<24} | {100 * r['test_accuracy']:>7.2f}% | "
            f"{r['bytes_per_step']:>12,.0f} | {vs_dense:>8.4f} | {r['ms_per_step']:>8.2f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods",
        default="plain,none,topk:ratio=0.01",
        help="comma-separated: 'plain' (DDP's own allreduce) or gradcomp specs; "
        "separate specs with ';' when a spec has several options",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--json", type=Path, help="also write the results here (rank 0)")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        print(
            "run me with torchrun, e.g.: torchrun --nproc-per-node 2 examples/fashion_mnist_ddp.py",
            file=sys.stderr,
        )
        return 2
    separator = ";" if ";" in args.methods else ","
    methods = [m.strip() for m in args.methods.split(separator) if m.strip()]
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    try:
        data = {split: load_fashion_mnist(split, args.data_dir) for split in FILES}
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    dist.init_process_group("gloo")
    try:
        results = [train(method, args, data) for method in methods]
        if dist.get_rank() == 0:
            print_table(results, dist.get_world_size())
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        # Free the DDP models and hook states before the group so that destroying the group
        # joins Gloo's threads while the interpreter is still fully alive.
        gc.collect()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
