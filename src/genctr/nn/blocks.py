"""Reusable blocks shared by the backbones. Shapes: B batch, F fields, D embedding size."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def random_bits(count: int, device: torch.device) -> torch.Tensor:
    """`count` uniformly random int64 words, drawn as decided by torch's global generator."""
    if device.type != "cpu":
        return torch.empty(count, dtype=torch.int64, device=device).random_(-2 ** 63, 2 ** 63 - 1)
    seed = int(torch.randint(0, 2 ** 63 - 1, (1,)))
    return torch.from_numpy(np.random.PCG64(seed).random_raw(count).view(np.int64))


class Dropout(nn.Module):
    """Inverted dropout with nn.Dropout's distribution (p rounded to 1/65536), ~2.5x faster on CPU.

    PyTorch's CPU random generator is serial, so drawing one float per element (`bernoulli_`,
    `rand_like`) took a third of a DNN training step here. One 64-bit draw gives four 16-bit
    uniforms, compared with p; the keep mask is folded into the scale in the input's dtype.
    On CPU the 64-bit draws come from numpy's PCG64 (twice as fast as torch's MT19937), seeded
    from torch's generator, so `torch.manual_seed` still decides every mask.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = -(2 ** 15) + round(p * 2 ** 16)  # int16 draws >= threshold are kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":  # the fast path is for CPU; on a GPU torch's kernel is
            return nn.functional.dropout(x, self.p, training=True)
        bits = random_bits(-(-x.numel() // 4), x.device)
        keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= self.threshold
        # bool -> uint8 is a free view and uint8 -> float is vectorized; bool -> float is ~6x slower
        return x * keep.view(torch.uint8).to(x.dtype).mul_(1.0 / (1.0 - self.p))


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> [Dropout], per hidden layer; optional output layer."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int | None = None,
                 dropout: float = 0.0, batch_norm: bool = False, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers.append(nn.Linear(in_dim, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(activation())
            if dropout > 0:
                layers.append(Dropout(dropout))
            in_dim = width
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
        self.layers = nn.Sequential(*layers)
        self.out_dim = out_dim if out_dim is not None else in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer but the output layer: what a model's own head (or a denoiser's) reads.
        Runs the layers in place, where `layers[:-1]` would build a new Sequential on every call
        (a fifth of a served 1-row forward)."""
        *body, _ = self.layers
        for layer in body:
            x = layer(x)
        return x


def to_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """x in the autocast dtype when autocast is on: one cast for a tensor that several
    autocast ops consume (each would otherwise make its own copy)."""
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


def fm_pairwise(fields: torch.Tensor) -> torch.Tensor:
    """Σ_{i<j} v_i ⊙ v_j of [B, F, D] fields -> [B, D] (the bi-interaction vector)."""
    square_of_sum = fields.sum(dim=1).pow(2)
    sum_of_square = fields.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square)


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """Second-order factorization-machine term of [B, F, D] fields -> [B]."""
    return fm_pairwise(fields).sum(dim=1)


class CrossNetV2(nn.Module):
    """DCNv2 cross layers: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l on [B, K] inputs."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.crosses = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x0 = to_autocast_dtype(x0)  # one cast, not one per layer and operand
        x = x0
        for cross in self.crosses:
            x = x0 * cross(x) + x
        return x


class SelfAttentionLayer(nn.Module):
    """AutoInt's interacting layer: multi-head self-attention over fields with a residual."""

    def __init__(self, in_dim: int, attention_dim: int, heads: int, residual: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if attention_dim % heads:
            raise ValueError(f"attention_dim {attention_dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(in_dim, 3 * attention_dim, bias=False)
        self.residual = nn.Linear(in_dim, attention_dim, bias=False) if residual else None
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F, in_dim] -> [B, F, attention_dim]."""
        b, f, _ = x.shape
        q, k, v = self.qkv(x).view(b, f, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, f, -1)
        if self.residual is not None:
            out = out + self.residual(x)
        return torch.relu(out)


class TargetAttention(nn.Module):
    """DIN's activation unit: weights each history item by an MLP of (item, target, item-target,
    item*target), without softmax (as in the paper), masked to real items -> [B, D]."""

    def __init__(self, dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.score = MLP(4 * dim, hidden, out_dim=1, activation=nn.Sigmoid)

    def forward(self, items: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.unsqueeze(1).expand_as(items)
        features = torch.cat([items, target, items - target, items * target], dim=-1)
        weights = self.score(features).squeeze(-1) * mask.to(items.dtype)
        return (weights.unsqueeze(-1) * items).sum(dim=1)


class FeatureSelection(nn.Module):
    """FinalMLP's gating of the flat embedding by a context (learned, or some fields' vectors)."""

    def __init__(self, flat_dim: int, context_dim: int | None, hidden: int) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.bias = nn.Parameter(torch.zeros(1, hidden)) if context_dim is None else None
        self.gate = MLP(context_dim or hidden, [hidden], out_dim=flat_dim)

    def forward(self, flat: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if context is None:
            context = self.bias.expand(flat.shape[0], -1)
        return flat * 2 * torch.sigmoid(self.gate(context))


class BilinearFusion(nn.Module):
    """FinalMLP's multi-head bilinear fusion of two streams into one logit [B]."""

    def __init__(self, dim_x: int, dim_y: int, heads: int) -> None:
        super().__init__()
        if dim_x % heads or dim_y % heads:
            raise ValueError(f"stream widths {dim_x}, {dim_y} must be divisible by heads {heads}")
        self.heads = heads
        self.linear_x = nn.Linear(dim_x, 1)
        self.linear_y = nn.Linear(dim_y, 1, bias=False)
        self.bilinear = nn.Parameter(torch.empty(heads, dim_x // heads, dim_y // heads))
        nn.init.xavier_normal_(self.bilinear)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hx = x.view(x.shape[0], self.heads, -1)
        hy = y.view(y.shape[0], self.heads, -1)
        pair = torch.einsum("bhi,hij,bhj->b", hx, self.bilinear, hy)
        return (self.linear_x(x) + self.linear_y(y)).squeeze(-1) + pair
