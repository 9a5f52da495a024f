"""FieldEmbedding: Batch -> [B, F, D], one vector per field, with neutral embeddings for `drop`.

Every backbone consumes this one tensor (FuxiCTR's convention). A field marked in `drop`
receives its neutral embedding: the training-frequency-weighted mean of its table, i.e. what
the model "expects" of the field when it knows nothing about it. This is what MATT and UTTSI
substitute for an unreliable feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from genctr.data.batches import Batch
from genctr.data.encode import FeatureEncoder
from genctr.errors import ConfigError
from genctr.schema import OOV, FieldKind

NeutralMode = Literal["mean", "zero", "learned", "mask"]
NO_LEARNED_NEUTRAL = ("neutral: learned needs a model trained with the model option "
                      "learned_neutral: true (and train.field_dropout > 0)")
NO_MASK_STATE = ("neutral: mask needs a model with a [MASK] state for its fields (hetegen); "
                 "other backbones take mean, zero or learned")


@dataclass(frozen=True)
class FieldInfo:
    """What a model needs to know of a field: its kind, table and training frequencies."""

    name: str
    kind: FieldKind
    vocab_size: int
    table: str  # the field owning the embedding table (itself unless it shares a vocabulary)
    max_len: int | None
    train_counts: tuple[int, ...]

    @property
    def is_list(self) -> bool:
        return self.kind in (FieldKind.multi, FieldKind.sequence)


def field_infos(encoder: FeatureEncoder) -> list[FieldInfo]:
    """FieldInfo for every schema field, in schema order."""
    infos = []
    for spec in encoder.schema.fields:
        table = spec.share_vocab or spec.name
        infos.append(FieldInfo(spec.name, spec.kind, encoder.vocab_size(table), table, spec.max_len,
                               tuple(int(c) for c in encoder.train_counts(table))))
    return infos


class FieldEmbedding(nn.Module):
    """Embeds every field of a batch into [B, F, D].

    Numeric fields use their quantile-bin token (`numeric="bin"`) or their value times a
    learned vector (`numeric="scaled"`, with a separate vector for missing values). Multi and
    sequence fields are mean-pooled over their non-padding items; `sequence()` gives a model
    the raw [B, L, D] items instead (DIN).
    """

    def __init__(self, fields: list[FieldInfo], dim: int,
                 numeric: Literal["bin", "scaled"] = "bin", learned_neutral: bool = False) -> None:
        super().__init__()
        self.fields = fields
        self.dim = dim
        self.numeric = numeric
        # learned: one trainable vector per field, trained through the Trainer's field_dropout
        self.learned_neutral = nn.Parameter(torch.zeros(len(fields), dim)) if learned_neutral else None
        self.neutral_mode: NeutralMode = "learned" if learned_neutral else "mean"
        # [F] per-field factors on the output, set only while a backbone pre-trains with
        # input scaling (genctr.pretrain.backbone); never saved, never transferred
        self.input_scale: torch.Tensor | None = None
        self._neutral_cache: tuple[tuple, torch.Tensor] | None = None  # see neutral()
        self.tables = nn.ModuleDict()
        frequencies = {}
        for f in fields:
            if f.table == f.name:
                self.tables[f.name] = nn.Embedding(f.vocab_size, dim, padding_idx=0)
                counts = np.asarray(f.train_counts, dtype=np.float64)
                if counts.sum() == 0:  # a field never seen in train: fall back to OOV
                    counts = np.eye(f.vocab_size)[OOV]
                frequencies[f.name] = counts / counts.sum()
        for name, freq in frequencies.items():
            self.register_buffer(f"frequency_{name}", torch.tensor(freq, dtype=torch.float32),
                                 persistent=False)
        self.scaled = {f.name for f in fields if f.kind is FieldKind.numeric and numeric == "scaled"}
        # drawn in field order: over the set, the draws followed Python's per-process string
        # hashing, so one seed gave two different models (ml1m-ctr: two of them, 0.001 valid AUC apart)
        self.value_vectors = nn.ParameterDict({  # [value, missing] vectors
            f.name: nn.Parameter(torch.randn(2, dim) * 0.01) for f in fields if f.name in self.scaled})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=1e-4)  # small init, as FuxiCTR does for CTR
            with torch.no_grad():
                table.weight[0].zero_()

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def field_index(self, name: str) -> int:
        return [f.name for f in self.fields].index(name)

    def sequence(self, batch: Batch, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw item embeddings [B, L, D] of a list field and its mask [B, L] (True = item)."""
        info = self.fields[self.field_index(name)]
        tokens = batch.tokens[name]
        return self.tables[info.table](tokens), tokens != 0

    def neutral(self) -> torch.Tensor:
        """[F, D]: what a dropped field receives, by `neutral_mode`: "mean" (default), each
        field's training-frequency-weighted mean embedding (for a `scaled` numeric field: its
        missing-value vector, the embedding of 'value unknown'); "zero"; or "learned".
        ("mask" is handled by a model that owns a [MASK] state, before the embedding.)"""
        inputs = self._neutral_inputs()
        if torch.is_grad_enabled() or torch.compiler.is_compiling() \
                or any(t.is_inference() for t in inputs):
            return self._neutral()  # training through the vectors, tracing, or no version counters
        # scoring: reused until a table, vector or buffer changes (in place or replaced), so a
        # served request with dropped fields does not recompute F frequency-weighted means
        state = (self.neutral_mode, *((t.data_ptr(), t._version) for t in inputs))
        if self._neutral_cache is None or self._neutral_cache[0] != state:
            self._neutral_cache = (state, self._neutral().detach())
        return self._neutral_cache[1]

    def _neutral_inputs(self) -> list[torch.Tensor]:
        """The tensors neutral() reads (collected directly: parameters() walks every module)."""
        inputs = [table.weight for table in self.tables.values()] + list(self.value_vectors.values())
        inputs += [getattr(self, f"frequency_{name}") for name in self.tables]
        return inputs if self.learned_neutral is None else inputs + [self.learned_neutral]

    def _neutral(self) -> torch.Tensor:
        if self.neutral_mode == "zero":
            return torch.zeros(len(self.fields), self.dim, device=self.tables_device())
        if self.neutral_mode == "learned":
            if self.learned_neutral is None:
                raise ConfigError(NO_LEARNED_NEUTRAL)
            return self.learned_neutral
        rows = []
        for f in self.fields:
            if f.name in self.scaled:
                rows.append(self.value_vectors[f.name][1])
            else:
                rows.append(getattr(self, f"frequency_{f.table}") @ self.tables[f.table].weight)
        return torch.stack(rows)

    def tables_device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batch: Batch, drop: torch.Tensor | None = None) -> torch.Tensor:
        """[B, F, D]; fields where `drop` [B, F] is True get their neutral embedding."""
        vectors = []
        for f in self.fields:
            tokens = batch.tokens[f.name]
            if f.name in self.scaled:
                value = batch.values[f.name].unsqueeze(-1)
                present = (tokens != OOV).unsqueeze(-1)
                vec = self.value_vectors[f.name]
                vectors.append(torch.where(present, value * vec[0], vec[1]))
            elif f.is_list:
                items = self.tables[f.table](tokens)
                mask = (tokens != 0).unsqueeze(-1).to(items.dtype)
                vectors.append((items * mask).sum(1) / mask.sum(1).clamp(min=1.0))
            else:
                vectors.append(self.tables[f.table](tokens))
        # [B, F·D] viewed as [B, F, D]: torch.stack's values, but an exported graph gets one
        # Concat instead of an Unsqueeze per field before it (12 of a served ONNX pass's 71 nodes)
        out = torch.cat(vectors, dim=1).unflatten(1, (len(vectors), self.dim))
        if drop is not None:
            out = torch.where(drop.unsqueeze(-1), self.neutral().unsqueeze(0).to(out.dtype), out)
        if self.input_scale is not None:
            out = out * self.input_scale.view(1, -1, 1).to(out.dtype)
        return out


def set_neutral_mode(model: nn.Module, mode: NeutralMode) -> None:
    """Choose what every FieldEmbedding of a model substitutes for a dropped field."""
    if mode == "mask" and not getattr(model, "has_mask_state", False):
        raise ConfigError(NO_MASK_STATE)
    for module in model.modules():
        if isinstance(module, FieldEmbedding):
            if mode == "learned" and module.learned_neutral is None:
                raise ConfigError(NO_LEARNED_NEUTRAL)
            module.neutral_mode = mode
