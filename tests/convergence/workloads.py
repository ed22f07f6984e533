"""The convergence suites' two workloads and the training loop they share.

- Fashion-MNIST: the demo's SmallCNN on Debian's dataset-fashion-mnist (test accuracy).
- Char-LM: a small causal transformer over the bytes of Python standard-library source files
  that every Python installation has (validation loss in nats per byte).

`run_suite` runs in every spawned rank: it trains the workload once per method from the same
initialisation and data order, evaluates at fixed steps, and rank 0 writes one JSON file.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import gradcomp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from fashion_mnist_ddp import SmallCNN, load_fashion_mnist  # noqa: E402


@dataclass(frozen=True)
class Method:
    """One training run: `spec` None is DDP's own allreduce (the dense baseline). `options` are
    more keyword arguments of gradcomp.register (momentum=, clip=, warmup_steps=, ...). With
    momentum the optimizer runs without its own, and the recipe's clipping moves into the hook
    (clip=, each rank's gradient before error feedback, as DGC does): clipping the averaged
    update would clip the velocity. A method's own clip= replaces the recipe's clipping too."""

    label: str
    spec: str | None
    error_feedback: bool = True
    options: dict = field(default_factory=dict)


DENSE = Method("dense", None)
METHODS = [
    DENSE,
    Method("topk 1%", "topk:ratio=0.01"),
    Method("topk 1% without EF", "topk:ratio=0.01", error_feedback=False),
    Method("topk_approx 1%", "topk_approx:ratio=0.01"),
    Method("randomk 10%", "randomk:ratio=0.1"),
    Method("threshold 1%", "threshold:density=0.01"),
    Method("sign", "sign"),
    Method("qsgd 4-bit", "qsgd:bits=4"),
    Method("int8", "int8"),
    Method("topk_int8 1%", "topk_int8:ratio=0.01"),
    Method("powersgd rank 2", "powersgd:rank=2"),
    Method("topk 10%", "topk:ratio=0.1"),
    # The recipes of docs/convergence.md's second part (issue 16): what each option buys.
    Method("topk 4%", "topk:ratio=0.04"),
    Method("topk_int8 5%", "topk_int8:ratio=0.05"),
    Method("topk_int8 7%", "topk_int8:ratio=0.07"),
    Method("topk_int8 15%", "topk_int8:ratio=0.15"),
    Method("topk_int8 25%", "topk_int8:ratio=0.25"),
    Method("topk_bitmap 10%", "topk_bitmap:ratio=0.1"),
    Method("topk_bitmap 15%", "topk_bitmap:ratio=0.15"),
    Method("topk_bitmap 20%", "topk_bitmap:ratio=0.2"),
    Method("qsgd 2-bit", "qsgd:bits=2"),
    Method("powersgd rank 4", "powersgd:rank=4"),
    Method("topk 1% local clip", "topk:ratio=0.01", options={"clip": 1.0}),
    Method("topk 1% dgc", "topk:ratio=0.01", options={"momentum": 0.9, "warmup_steps": 200}),
    Method("topk 1% ef21", "topk:ratio=0.01", options={"momentum": 0.9, "feedback": "ef21"}),
    Method("topk_int8 5% local clip", "topk_int8:ratio=0.05", options={"clip": 1.0}),
    Method(
        "topk_int8 5% dgc", "topk_int8:ratio=0.05", options={"momentum": 0.9, "warmup_steps": 200}
    ),
    Method(
        "topk_int8 5% momentum",
        "topk_int8:ratio=0.05",
        options={"momentum": 0.9, "mask_momentum": False},
    ),
    Method(
        "topk_int8 4% ef21", "topk_int8:ratio=0.04", options={"momentum": 0.9, "feedback": "ef21"}
    ),
    Method("randomk 10% dgc", "randomk:ratio=0.1", options={"momentum": 0.9}),
    Method(
        "randomk 10% momentum",
        "randomk:ratio=0.1",
        options={"momentum": 0.9, "mask_momentum": False},
    ),
    Method("randomk 10% ef21", "randomk:ratio=0.1", options={"feedback": "ef21"}),
    Method("randomk 10% unbiased", "randomk:ratio=0.1,unbiased=1", error_feedback=False),
    Method(
        "randomk 10% ef21 momentum",
        "randomk:ratio=0.1",
        options={"momentum": 0.9, "feedback": "ef21"},
    ),
    Method("sign momentum", "sign", options={"momentum": 0.9}),
    Method("sign ef21", "sign", options={"feedback": "ef21"}),
    # Issue 17: the two-phase exchange re-compresses each reduced chunk at its owner, at the
    # method's density or (denser) twice it.
    Method("topk 1% two_phase", "topk:ratio=0.01", options={"collective": "two_phase"}),
    Method(
        "topk 1% two_phase denser",
        "topk:ratio=0.01",
        options={"collective": "two_phase", "reduced_density_factor": 2.0},
    ),
]
METHODS_BY_LABEL = {m.label: m for m in METHODS}
# Each suite's methods: the first suite's list (Fashion-MNIST adds Top-K without error feedback,
# what EF buys; the LM adds Top-K 10%, what ratio a small transformer needs), then the recipes
# of issue 16 that each suite compares; docs/convergence.md has every result.
_BASE = [m.label for m in METHODS[: METHODS.index(METHODS_BY_LABEL["topk 10%"]) + 1]]
SUITE_METHODS = {
    "fashion_mnist": [label for label in _BASE if label != "topk 10%"]
    + ["randomk 10% momentum", "randomk 10% dgc", "randomk 10% ef21 momentum", "sign momentum"]
    + ["sign ef21", "randomk 10% unbiased", "topk 1% two_phase", "topk 1% two_phase denser"],
    "char_lm": [label for label in _BASE if not label.endswith("without EF")]
    + ["topk_bitmap 10%", "topk_bitmap 15%", "topk_bitmap 20%"]
    + ["topk 1% local clip", "topk 1% dgc", "topk 1% ef21", "topk_int8 5% momentum"]
    + ["randomk 10% dgc", "sign momentum"],
    "char_lm_1m": ["dense", "topk_bitmap 15%", "topk_bitmap 10%"],
}


@dataclass(frozen=True)
class Recipe:
    """Everything that fixes a run besides the method: same for every method of a suite."""

    epochs: float  # passes over the training set (Fashion-MNIST; the LM runs extra["steps"])
    batch_size: int
    optimizer: str  # "sgd" (momentum 0.9) or "adamw"
    lr: float
    warmup_steps: int
    evals: int  # evaluations spread evenly over the run (the last at its end)
    clip_grad_norm: float | None = None  # of the averaged gradient, before the optimizer step
    seed: int = 0
    extra: dict = field(default_factory=dict)


FASHION_MNIST = Recipe(epochs=5, batch_size=64, optimizer="sgd", lr=0.05, warmup_steps=0, evals=10)
CHAR_LM = Recipe(
    epochs=1,
    batch_size=32,
    optimizer="sgd",
    lr=0.5,
    warmup_steps=50,
    evals=10,
    clip_grad_norm=1.0,
    extra={"context": 64, "width": 64, "layers": 2, "heads": 4, "steps": 1000},
)
# The second LM configuration: 1.07M parameters, matrices of 8k-66k elements (width 128, 5
# blocks), so that results are not an artifact of tiny tensors; twice the steps.
CHAR_LM_1M = replace(
    CHAR_LM,
    lr=0.3,
    warmup_steps=100,
    extra={"context": 64, "width": 128, "layers": 5, "heads": 4, "steps": 2000},
)


def lr_at(recipe: Recipe, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero at the last step."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


# --- Fashion-MNIST ------------------------------------------------------------------------


class FashionMnist:
    name = "fashion_mnist"
    metric = "test_accuracy"

    def __init__(self, recipe: Recipe, rank: int, world: int) -> None:
        self.recipe, self.rank, self.world = recipe, rank, world
        self.train_images, self.train_labels = load_fashion_mnist("train")
        self.test_images, self.test_labels = load_fashion_mnist("test")
        self.shard = torch.arange(rank, len(self.train_images), world)
        self.steps_per_epoch = len(self.shard) // recipe.batch_size
        self.total_steps = int(recipe.epochs * self.steps_per_epoch)

    def model(self) -> torch.nn.Module:
        return SmallCNN()

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.Generator().manual_seed(self.recipe.seed)
        step, b = 0, self.recipe.batch_size
        while True:
            perm = self.shard[torch.randperm(len(self.shard), generator=order)]
            for start in range(0, self.steps_per_epoch * b, b):
                if step == self.total_steps:
                    return
                idx = perm[start : start + b]
                yield self.train_images[idx], self.train_labels[idx]
                step += 1

    def loss(
        self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: torch.nn.Module) -> float:
        """Accuracy on all 10,000 test images, each rank scoring its own share."""
        correct = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for start in range(self.rank * 1000, len(self.test_images), self.world * 1000):
                logits = model(self.test_images[start : start + 1000])
                correct[0] += (logits.argmax(1) == self.test_labels[start : start + 1000]).sum()
                correct[1] += len(logits)
        dist.all_reduce(correct)
        return (correct[0] / correct[1]).item()

    def evaluate_local(self, model: torch.nn.Module) -> float:
        """Accuracy on all 10,000 test images in this process (the simulator has no group)."""
        with torch.no_grad():
            logits = torch.cat(
                [model(self.test_images[s : s + 1000]) for s in range(0, 10000, 1000)]
            )
        return (logits.argmax(1) == self.test_labels[: len(logits)]).double().mean().item()


# --- Char-LM ------------------------------------------------------------------------------

# Standard-library modules present as single files in CPython 3.10 to 3.13 (some packages and
# renamed modules are left out so that every version finds every file).
STDLIB_FILES = [
    "argparse.py", "ast.py", "bisect.py", "calendar.py", "configparser.py", "copy.py",
    "csv.py", "dataclasses.py", "difflib.py", "enum.py", "fractions.py", "functools.py",
    "gettext.py", "heapq.py", "inspect.py", "ipaddress.py", "locale.py", "pickle.py",
    "pprint.py", "random.py", "shlex.py", "shutil.py", "statistics.py", "string.py",
    "subprocess.py", "tarfile.py", "textwrap.py", "threading.py", "tokenize.py", "typing.py",
]  # fmt: skip


def stdlib_corpus(min_bytes: int = 1_000_000) -> tuple[bytes, list[str]]:
    """The listed standard-library sources, concatenated in list order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = [name for name in STDLIB_FILES if (root / name).is_file()]
    data = b"".join((root / name).read_bytes() for name in found)
    if len(data) < min_bytes:
        raise FileNotFoundError(
            f"only {len(data):,} bytes of Python source found under {root} "
            f"({len(found)} of {len(STDLIB_FILES)} files); the char-LM suite needs {min_bytes:,}"
        )
    return data, found


class Block(torch.nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.norm2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class CharTransformer(torch.nn.Module):
    """A byte-level GPT: token and position embeddings, pre-norm blocks, a linear head."""

    def __init__(self, context: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.token = torch.nn.Embedding(256, width)
        self.position = torch.nn.Embedding(context, width)
        self.blocks = torch.nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, 256)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1])
        x = self.blocks(self.token(tokens) + self.position(positions))
        return self.head(self.norm(x))


class CharLm:
    name = "char_lm"
    metric = "val_loss"

    def __init__(self, recipe: Recipe, rank: int, world: int) -> None:
        self.recipe, self.rank, self.world = recipe, rank, world
        data, self.files = stdlib_corpus()
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        split = int(0.9 * len(tokens))
        self.train_tokens, self.val_tokens = tokens[:split], tokens[split:]
        self.context = recipe.extra["context"]
        self.total_steps = recipe.extra["steps"]
        # A fixed validation set: 256 windows spread over the held-out tail.
        starts = torch.linspace(0, len(self.val_tokens) - self.context - 2, 256).long()
        self.val_windows = torch.stack([self.val_tokens[s : s + self.context + 1] for s in starts])

    def model(self) -> torch.nn.Module:
        e = self.recipe.extra
        return CharTransformer(self.context, e["width"], e["layers"], e["heads"])

    def batches(self) -> Iterator[torch.Tensor]:
        # Each rank draws its own windows (a different data stream per rank, as in DDP).
        g = torch.Generator().manual_seed(self.recipe.seed * 1000 + self.rank)
        high = len(self.train_tokens) - self.context - 1
        offsets = torch.arange(self.context + 1)
        for _ in range(self.total_steps):
            starts = torch.randint(0, high, (self.recipe.batch_size, 1), generator=g)
            yield self.train_tokens[starts + offsets]

    def loss(self, model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        logits = model(windows[:, :-1])
        return F.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1))

    def evaluate(self, model: torch.nn.Module) -> float:
        """Mean validation loss (nats per byte); every rank scores the same windows."""
        with torch.no_grad():
            return self.loss(model, self.val_windows).item()

    evaluate_local = evaluate


WORKLOADS = {
    "fashion_mnist": (FashionMnist, FASHION_MNIST),
    "char_lm": (CharLm, CHAR_LM),
    "char_lm_1m": (CharLm, CHAR_LM_1M),
}
RECIPE_ENV = "GRADCOMP_CONVERGENCE_RECIPE"


def recipe_for(workload_name: str) -> Recipe:
    """The workload's recipe, with fields overridden by the JSON object in $GRADCOMP_CONVERGENCE_
    RECIPE if set (for trying other settings; the JSON output records the recipe used)."""
    recipe = WORKLOADS[workload_name][1]
    overrides = json.loads(os.environ.get(RECIPE_ENV) or "{}")
    unknown = set(overrides) - set(asdict(recipe))
    if unknown:
        raise ValueError(f"{RECIPE_ENV}: unknown fields {sorted(unknown)}; valid: {asdict(recipe)}")
    if "extra" in overrides:
        overrides["extra"] = {**recipe.extra, **overrides["extra"]}
    return replace(recipe, **overrides)


# --- the shared loop ----------------------------------------------------------------------


def optimizer_for(recipe: Recipe, model: torch.nn.Module, momentum: float) -> torch.optim.Optimizer:
    """The recipe's optimizer; without its own momentum when the hook applies it."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.0 if momentum else 0.9)
    if recipe.optimizer == "adamw":
        betas = (0.0, 0.999) if momentum else (0.9, 0.999)
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=betas, weight_decay=0.01)
    raise ValueError(f"recipe optimizer {recipe.optimizer!r}; valid: 'sgd', 'adamw'")


def hook_options(recipe: Recipe, method: Method) -> tuple[dict, float | None]:
    """The method's register() options, and the norm to clip the averaged gradient to (None:
    no clipping after averaging); see Method."""
    options = dict(method.options)
    if options.get("momentum") and "clip" not in options and recipe.clip_grad_norm is not None:
        options["clip"] = recipe.clip_grad_norm
    return options, None if "clip" in options else recipe.clip_grad_norm


def train_one(workload, recipe: Recipe, method: Method, log_prefix: str) -> dict:
    torch.manual_seed(recipe.seed)  # the same initialisation for every method
    model = workload.model()
    dense_bytes = 4 * sum(p.numel() for p in model.parameters())
    ddp = DistributedDataParallel(model)
    state = None
    optimizer = optimizer_for(recipe, model, method.options.get("momentum", 0.0))
    options, clip = hook_options(recipe, method)
    if method.spec is not None:
        state = gradcomp.register(
            ddp,
            method.spec,
            error_feedback=method.error_feedback,
            seed=recipe.seed,
            optimizer=optimizer,
            **options,
        )
    total = workload.total_steps
    eval_steps = {round(total * (i + 1) / recipe.evals) for i in range(recipe.evals)}
    curve, losses = [], []
    began = time.perf_counter()
    for step, batch in enumerate(workload.batches(), start=1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, step - 1, total)
        optimizer.zero_grad()
        loss = workload.loss(ddp, batch)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
        if step in eval_steps:
            model.eval()
            metric = workload.evaluate(model)
            model.train()
            sent = state.stats()["bytes_sent"] if state is not None else step * dense_bytes
            curve.append({"step": step, "bytes_sent": sent, workload.metric: metric})
            if workload.rank == 0:
                recent = losses[-50:]
                print(
                    f"{log_prefix} {method.label}: step {step}/{total} {workload.metric} "
                    f"{metric:.4f}, train loss {sum(recent) / len(recent):.4f} "
                    f"({time.perf_counter() - began:.0f} s)",
                    flush=True,
                )
    bytes_sent = state.stats()["bytes_sent"] if state is not None else total * dense_bytes
    # What one rank put on the wire against a dense ring allreduce (1.0 for dense itself).
    wire_ratio = state.stats()["wire_ratio"] if state is not None else 1.0
    return {
        **asdict(method),
        workload.metric: curve[-1][workload.metric],
        "steps": total,
        "bytes_per_step": bytes_sent / total,
        "dense_bytes_per_step": dense_bytes,
        "wire_ratio": wire_ratio,
        "seconds": time.perf_counter() - began,
        "train_loss_first50": sum(losses[:50]) / 50,
        "train_loss_last50": sum(losses[-50:]) / 50,
        "curve": curve,
    }


def _write(out: str, name: str, workload, world: int, recipe: Recipe, runs: list[dict]) -> None:
    result = {
        "workload": name,
        "metric": workload.metric,
        "world_size": world,
        "recipe": asdict(recipe),
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "corpus_files": getattr(workload, "files", None),
        },
        "runs": runs,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


def run_suite(
    rank: int, world: int, store: str, workload_name: str, labels: list[str], out: str
) -> None:
    """One rank of a suite run (spawned): every method in turn, JSON from rank 0."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        recipe = recipe_for(workload_name)
        workload = WORKLOADS[workload_name][0](recipe, rank, world)
        runs: list[dict] = []
        for i, label in enumerate(labels):
            prefix = f"[{workload_name} {i + 1}/{len(labels)}]"
            runs.append(train_one(workload, recipe, METHODS_BY_LABEL[label], prefix))
            gc.collect()
            if rank == 0:  # after every method, so a long run interrupted keeps what it did
                _write(out, workload_name, workload, world, recipe, runs)
    finally:
        gc.collect()
        dist.destroy_process_group()
