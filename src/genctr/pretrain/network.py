"""The pre-training network: corruption, denoiser, heads and balancer composed."""

from __future__ import annotations

import torch
from torch import nn

from genctr.data.batches import Batch
from genctr.nn.embedding import FieldEmbedding, FieldInfo
from genctr.pretrain.balance import Balancer, BalancerOptions
from genctr.pretrain.corruption import Corruption, CorruptionOptions, Masks
from genctr.pretrain.denoiser import Denoiser, DenoiserOptions
from genctr.pretrain.heads import FieldHeads, FieldLosses, HeadOptions


class GenerativeNet(nn.Module):
    def __init__(self, fields: list[FieldInfo], denoiser: DenoiserOptions, heads: HeadOptions,
                 balancer: BalancerOptions, corruption: CorruptionOptions) -> None:
        super().__init__()
        self.fields = fields
        self.denoiser = Denoiser(fields, denoiser)
        self.heads = FieldHeads(fields, denoiser.d_model, heads,
                                sequence_as_set=denoiser.sequence_tokens == "pooled")
        self.balancer = Balancer(balancer, len(fields) + 1)
        sequence_index = {f.name: i for i, f in enumerate(fields) if f.name in self.denoiser.sequences}
        self.corruption = Corruption(corruption, len(fields), sequence_index)

    @property
    def embedding(self) -> FieldEmbedding:
        """The field tables (what embedding transfer carries into another backbone)."""
        return self.denoiser.embedding

    def field_names(self) -> list[str]:
        return [f.name for f in self.fields] + ["label"]

    def masks(self, batch: Batch, generator: torch.Generator | None = None) -> Masks:
        # masks are drawn on the host generator (the same stream on every device): the batch
        # may already live on a GPU, so its padding pattern comes to the host
        present = {name: (batch.tokens[name] != 0).cpu() for name in self.denoiser.sequences}
        return self.corruption.sample(len(batch), present, generator)

    def losses(self, batch: Batch, masks: Masks) -> tuple[torch.Tensor, torch.Tensor, FieldLosses]:
        """(scalar loss, per-field weights, per-field losses) of one corrupted batch."""
        hidden = self.denoiser(batch, masks, log_difficulty=self.balancer.difficulty())
        field_losses = self.heads(hidden, batch, masks, self.denoiser)
        loss, weights = self.balancer(field_losses.losses, field_losses.present)
        return loss, weights, field_losses
