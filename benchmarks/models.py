"""The models the DDP benchmarks train, defined here so nothing is downloaded.

Sizes follow the networks users compare against: a ResNet-50-sized CNN (bottleneck blocks
[3, 4, 6, 3], 25.6M parameters), a ResNet-18-sized one (basic blocks [2, 2, 2, 2], 11.7M), a
small transformer language model and a GPT-2-small-sized one (GPT, 124M; bench_ddp_gpu.py).
The CNNs keep ImageNet's stem but the network benchmark feeds them 32x32 inputs, so a step
costs little compute on a CPU while the gradients (what the network carries) keep full size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(inputs, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut = _shortcut(inputs, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(inputs, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut = _shortcut(inputs, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(inputs: int, out: int, stride: int) -> nn.Module:
    if stride == 1 and inputs == out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(inputs, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class ResNet(nn.Module):
    def __init__(
        self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], classes: int = 1000
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages: list[nn.Module] = []
        inputs = 64
        for i, blocks in enumerate(layers):
            width = 64 * 2**i
            for b in range(blocks):
                stages.append(block(inputs, width, 2 if (b == 0 and i > 0) else 1))
                inputs = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(inputs, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TinyTransformer(nn.Module):
    """A decoder-style language model: token + position embeddings, pre-norm encoder layers
    with a causal mask, a tied output head."""

    def __init__(self, vocab: int = 8192, dim: int = 256, layers: int = 4, context: int = 64):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(torch.zeros(context, dim))
        layer = nn.TransformerEncoderLayer(
            dim, 4, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length)
        h = self.tokens(tokens) + self.positions[:length]
        h = self.norm(self.layers(h, mask=mask, is_causal=True))
        return h @ self.tokens.weight.t()


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        # (3, batch, heads, length, head width): the layout scaled_dot_product_attention takes.
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, length, dim))


class GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """A GPT-2-style decoder: learned token and position embeddings, pre-norm blocks with
    causal scaled-dot-product attention (a fused kernel on GPUs), a final LayerNorm and an
    output head tied to the token embedding. The defaults are GPT-2 small's shape at a
    512-token context: 124.0M parameters."""

    def __init__(
        self,
        vocab: int = 50257,
        dim: int = 768,
        layers: int = 12,
        heads: int = 12,
        context: int = 512,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*(GPTBlock(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        # GPT-2's N(0, 0.02) embeddings: PyTorch's N(0, 1) would make the tied head's logits
        # ~sqrt(dim) large (a loss in the hundreds instead of ~ln(vocab)).
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        where = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.blocks(self.tokens(tokens) + self.positions(where))
        return nn.functional.linear(self.norm(h), self.tokens.weight)


def _image_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, 32, 32, generator=generator), torch.randint(
        0, 1000, (batch,), generator=generator
    )


def _token_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, 8192, (batch, 65), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


def _vector_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 1024, generator=generator), torch.randint(
        0, 1000, (batch,), generator=generator
    )


def _mlp() -> nn.Module:
    """4.2M parameters in four large matrices and cheap compute: many ranks fit on 2 cores,
    so the benchmark of collectives measures the network rather than the contention."""
    return nn.Sequential(
        nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
        nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1000),
    )  # fmt: skip


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 1000)
    )


# name -> (constructor, batch maker, default batch size). "tiny" is for tests of the harness.
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable, int]] = {
    "resnet50": (lambda: ResNet(Bottleneck, [3, 4, 6, 3]), _image_batch, 4),
    "resnet18": (lambda: ResNet(BasicBlock, [2, 2, 2, 2]), _image_batch, 8),
    "transformer": (TinyTransformer, _token_batch, 8),
    "mlp": (_mlp, _vector_batch, 16),
    "tiny": (_tiny_cnn, _image_batch, 4),
}


def loss_of(model_name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if model_name == "transformer":
        return nn.functional.cross_entropy(output.flatten(0, 1), target.flatten())
    return nn.functional.cross_entropy(output, target)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _for_probe(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    make_model, make_batch, batch = MODELS[name]
    inputs, _target = make_batch(batch, torch.Generator().manual_seed(0))
    return make_model(), (inputs,)


# For `python -m gradcomp probe --model models:<name>` (run from benchmarks/): (model, inputs).
def probe_resnet50() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return _for_probe("resnet50")


def probe_resnet18() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return _for_probe("resnet18")


def probe_transformer() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return _for_probe("transformer")
