"""CTRModel: the interface every backbone implements, and the first-order (linear) term."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from genctr.data.batches import Batch
from genctr.nn.embedding import FieldEmbedding, FieldInfo
from genctr.schema import Strict


class ModelOptions(Strict):
    """Options every backbone takes; each backbone adds its own."""

    embedding_dim: int = Field(10, ge=1)
    numeric_embedding: Literal["bin", "scaled"] = "bin"
    learned_neutral: bool = Field(False, description="a trainable neutral embedding per field "
                                  "(trained by train.field_dropout) instead of the frequency mean")


class CTRModel(nn.Module):
    """A backbone: `forward(batch, drop=None) -> logits [B]`.

    `drop` [B, F] marks fields replaced by their neutral embedding; it is what lets MATT and
    UTTSI run on every model unchanged. The Trainer owns optimizer, loss and regularisation;
    a model only maps a batch to logits.
    """

    name: ClassVar[str]
    Options: ClassVar[type[ModelOptions]] = ModelOptions

    def __init__(self, fields: list[FieldInfo], options: ModelOptions) -> None:
        super().__init__()
        self.options = options
        self.embedding = FieldEmbedding(fields, options.embedding_dim, options.numeric_embedding,
                                        options.learned_neutral)

    @property
    def flat_dim(self) -> int:
        return self.embedding.num_fields * self.embedding.dim

    # models that split into a body and an output layer (represent + score) can serve as a
    # pre-training denoiser and receive full transfer (genctr.pretrain.backbone)
    can_represent: ClassVar[bool] = False

    def forward(self, batch: Batch, drop: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(self.represent(batch, drop))

    def represent(self, batch: Batch, drop: torch.Tensor | None = None) -> torch.Tensor:
        """[B, H]: everything before the output layer."""
        raise NotImplementedError(f"model '{self.name}' has no represent()")

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """logits [B] from represent()'s [B, H]."""
        raise NotImplementedError(f"model '{self.name}' has no score()")

    @property
    def hidden_dim(self) -> int:
        """H, the width of represent()'s output."""
        raise NotImplementedError(f"model '{self.name}' has no represent()")


class FirstOrder(nn.Module):
    """Σ_f w_f(x_f) + b: one scalar weight per token (the 'wide' / linear part)."""

    def __init__(self, fields: list[FieldInfo], options: ModelOptions) -> None:
        super().__init__()
        self.weights = FieldEmbedding(fields, 1, options.numeric_embedding, options.learned_neutral)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch, drop: torch.Tensor | None = None) -> torch.Tensor:
        return self.weights(batch, drop).sum(dim=(1, 2)) + self.bias
