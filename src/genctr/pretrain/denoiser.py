"""The denoiser: a bidirectional transformer over field tokens, with difficulty-guided attention.

Tokens: one per field (a multi field's items mean-pooled), one per position of a sequence field
(or, with `sequence_tokens: pooled`, one mean-pooled token like a multi field's), and the label
last. Each token is its field's embedding (FieldEmbedding, numerics as their bin
token) or, where masked, its field's learned [MASK] vector, plus a learned field-identity vector
(fields have no order between them) and, inside a sequence, a position vector.

Difficulty-guided attention (HeteGenCTR): the query (or, as an option, the key) of every token of
field f is scaled by exp(−s_f / 2), s_f the field's learned log-difficulty; softmax attention
(default) or HSTU-style pointwise SiLU attention.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from genctr.data.batches import Batch
from genctr.nn.embedding import FieldEmbedding, FieldInfo
from genctr.pretrain.corruption import Masks
from genctr.schema import FieldKind, Strict


TRANSFORMER_KEYS = ("d_model", "layers", "heads", "ffn_multiple", "dropout", "attention",
                    "guidance", "guidance_detach", "sequence_tokens")


class DenoiserOptions(Strict):
    backbone: str = Field("transformer", description="transformer (the field-token denoiser "
                          "below) or a model name whose body denoises (dnn, dcnv2, autoint, din)")
    backbone_options: dict[str, Any] = Field(default_factory=dict, description="that model's "
                                             "options (as under `model:` in a run config)")
    d_model: int = Field(32, ge=4, description="token width; also the field embedding dimension")
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ffn_multiple: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    attention: Literal["softmax", "silu"] = Field("softmax", description="silu: HSTU-style pointwise")
    guidance: Literal["none", "query", "key"] = Field(
        "query", description="scale this side of a field's tokens by exp(-s_f/2)")
    guidance_detach: bool = Field(True, description="no gradient from attention into s")
    sequence_tokens: Literal["positions", "pooled"] = Field(
        "positions", description="a sequence field as one token per position, or as one "
        "mean-pooled token (reconstructed as a set, like a multi field; fewer tokens, cheaper)")
    input_scaling: bool = Field(
        False, description="model backbones: multiply each field's input embedding by "
        "exp(-s_f/2) (s detached) while pre-training, the difficulty guidance of a body without "
        "attention (an ablation; needs a learned balancer; fine-tuning sees unscaled inputs)")
    mask: Literal["neutral", "oov"] = Field(
        "neutral", description="model backbones, objective mfp: what a masked field receives, "
        "the backbone's learned per-field [MASK] vector (not transferred), or the field's "
        "out-of-vocabulary token (its table's OOV row, or a numeric field's missing-value vector: "
        "transferred, and what fine-tuning and scoring give an unseen value, such as a cold user's id)")

    @model_validator(mode="after")
    def _keys_of_the_chosen_denoiser(self) -> "DenoiserOptions":
        if self.backbone == "transformer":
            if self.backbone_options:
                raise ValueError("backbone_options apply to a model backbone, not the transformer")
            if self.input_scaling:
                raise ValueError("input_scaling applies to a model backbone; the transformer "
                                 "has difficulty-guided attention (guidance)")
            if self.mask != "neutral":
                raise ValueError("mask applies to a model backbone; the transformer has its own "
                                 "[MASK] state")
            return self
        from genctr.models import MODELS, model_options  # the registry, validated by name

        # a saved config lists every key: only a non-default transformer key is a mistake
        misplaced = sorted(k for k in self.model_fields_set & set(TRANSFORMER_KEYS)
                           if getattr(self, k) != type(self).model_fields[k].default)
        if misplaced:
            raise ValueError(f"{misplaced} apply to the transformer denoiser only; give "
                             f"'{self.backbone}' its options under backbone_options")
        if self.backbone not in MODELS or not MODELS[self.backbone].can_represent:
            able = sorted(n for n, cls in MODELS.items() if cls.can_represent)
            raise ValueError(f"backbone '{self.backbone}' cannot denoise; choose transformer or "
                             f"one of {able}")
        model_options(self.backbone, self.backbone_options)
        return self


class GuidedSelfAttention(nn.Module):
    def __init__(self, options: DenoiserOptions) -> None:
        super().__init__()
        if options.d_model % options.heads:
            raise ValueError(f"d_model {options.d_model} is not divisible by heads {options.heads}")
        self.heads, self.head_dim = options.heads, options.d_model // options.heads
        self.qkv = nn.Linear(options.d_model, 3 * options.d_model)
        self.out = nn.Linear(options.d_model, options.d_model)
        self.kind, self.side = options.attention, options.guidance

    def forward(self, x: torch.Tensor, token_scale: torch.Tensor | None = None,
                query_token: int | None = None) -> torch.Tensor:
        """x [B, T, d]; token_scale [T]: the guidance factor exp(−s_f/2) of each token's field.
        With `query_token`, only that token attends (the output is [B, 1, d])."""
        rows, tokens, width = x.shape
        picked = slice(None) if query_token is None else slice(query_token, query_token + 1)
        if query_token is None:  # one fused projection
            q, k, v = self.qkv(x).view(rows, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:  # keys and values of every token, the query of one
            w_q, w_kv = self.qkv.weight.split([width, 2 * width])
            b_q, b_kv = self.qkv.bias.split([width, 2 * width])
            q = nn.functional.linear(x[:, picked], w_q, b_q)
            q = q.view(rows, 1, self.heads, self.head_dim).transpose(1, 2)
            kv = nn.functional.linear(x, w_kv, b_kv).view(rows, tokens, 2, self.heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4)
        if token_scale is not None and self.side != "none":
            if self.side == "query":
                q = q * token_scale[picked].view(1, 1, -1, 1).to(q.dtype)
            else:
                k = k * token_scale.view(1, 1, tokens, 1).to(k.dtype)
        # explicit attention: with a dozen tokens and narrow heads, two batched matmuls are several
        # times faster on CPU than scaled_dot_product_attention's flash kernel (forward + backward)
        if self.kind == "softmax" and q.device.type == "cuda":  # fused kernels pay on a GPU
            mixed = nn.functional.scaled_dot_product_attention(q, k, v)
            return self.out(mixed.transpose(1, 2).reshape(rows, q.shape[2], width))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if self.kind == "softmax":
            mixed = scores.softmax(dim=-1) @ v
        else:  # HSTU: SiLU of the scores, averaged over the tokens instead of normalised
            mixed = nn.functional.silu(scores) @ v / tokens
        return self.out(mixed.transpose(1, 2).reshape(rows, q.shape[2], width))


class DenoiserLayer(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, options: DenoiserOptions) -> None:
        super().__init__()
        width = options.d_model
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = GuidedSelfAttention(options)
        self.ffn = nn.Sequential(nn.Linear(width, options.ffn_multiple * width), nn.GELU(),
                                 nn.Linear(options.ffn_multiple * width, width))
        self.dropout = nn.Dropout(options.dropout)

    def forward(self, x: torch.Tensor, token_scale: torch.Tensor | None,
                query_token: int | None = None) -> torch.Tensor:
        """With `query_token`, only that token's output is computed ([B, 1, d])."""
        attended = self.attention(self.norm1(x), token_scale, query_token)
        if query_token is not None:
            x = x[:, query_token:query_token + 1]
        x = x + self.dropout(attended)
        return x + self.dropout(self.ffn(self.norm2(x)))


class Denoiser(nn.Module):
    """Batch + masks -> contextual token vectors [B, T, d]; `token_field` [T] maps tokens to
    fields (0..F−1, the label F)."""

    def __init__(self, fields: list[FieldInfo], options: DenoiserOptions) -> None:
        super().__init__()
        self.options = options
        self.fields = fields
        width = options.d_model
        self.embedding = FieldEmbedding(fields, width, numeric="bin")
        self.num_fields = len(fields)
        self.mask_vectors = nn.Parameter(torch.randn(self.num_fields + 1, width) * 0.02)
        self.field_identity = nn.Parameter(torch.randn(self.num_fields + 1, width) * 0.02)
        self.label_embedding = nn.Embedding(2, width)
        # sequence fields with a token per position (none when they are pooled)
        self.sequences = ({f.name: f.max_len for f in fields if f.kind is FieldKind.sequence}
                          if options.sequence_tokens == "positions" else {})
        self.positions = nn.ParameterDict({name: nn.Parameter(torch.randn(length, width) * 0.02)
                                           for name, length in self.sequences.items()})
        token_field, self.slices = [], {}
        for i, f in enumerate(fields):
            length = self.sequences.get(f.name, 1)
            self.slices[f.name] = slice(len(token_field), len(token_field) + length)
            token_field += [i] * length
        self.label_token = len(token_field)
        token_field.append(self.num_fields)
        self.register_buffer("token_field", torch.tensor(token_field), persistent=False)
        self.layers = nn.ModuleList(DenoiserLayer(options) for _ in range(options.layers))
        self.norm = nn.LayerNorm(width)

    @property
    def num_tokens(self) -> int:
        return len(self.token_field)

    def inputs(self, batch: Batch, masks: Masks, drop: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, d]: token vectors before the transformer."""
        pooled = self.embedding(batch, drop)  # [B, F, d]; dropped fields: neutral embedding
        parts = []
        for i, f in enumerate(self.fields):
            if f.name in self.sequences:
                items, _ = self.embedding.sequence(batch, f.name)  # [B, L, d]
                if drop is not None:  # a dropped history: every position neutral
                    items = torch.where(drop[:, i].view(-1, 1, 1), pooled[:, i:i + 1], items)
                masked = masks.positions[f.name].unsqueeze(-1)
                items = torch.where(masked, self.mask_vectors[i], items)
                parts.append(items + self.positions[f.name])
            else:
                vector = torch.where(masks.fields[:, i:i + 1], self.mask_vectors[i], pooled[:, i])
                parts.append(vector.unsqueeze(1))
        label = self.label_embedding(batch.label.long().clamp(0, 1))
        label = torch.where(masks.fields[:, -1:], self.mask_vectors[-1], label)
        parts.append(label.unsqueeze(1))
        return torch.cat(parts, dim=1) + self.field_identity[self.token_field]

    def forward(self, batch: Batch, masks: Masks, drop: torch.Tensor | None = None,
                log_difficulty: torch.Tensor | None = None, query_token: int | None = None
                ) -> torch.Tensor:
        """[B, T, d]; with `query_token`, [B, 1, d]: that token's vector alone, the last layer
        computing only its query and feed-forward (the same values, a fraction of the work)."""
        x = self.inputs(batch, masks, drop)
        scale = None
        if log_difficulty is not None and self.options.guidance != "none":
            s = log_difficulty.detach() if self.options.guidance_detach else log_difficulty
            scale = torch.exp(-s / 2)[self.token_field]
        last = len(self.layers) - 1
        for depth, layer in enumerate(self.layers):
            x = layer(x, scale, query_token if depth == last else None)
        return self.norm(x)
