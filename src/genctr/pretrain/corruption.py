"""Absorbing-state corruption: which field tokens (the label included) a training sample hides.

A sample draws t ~ U(0, 1]; each field, and each position of a sequence field, is masked
independently with probability λ(t) (linear: t; cosine: 1 − cos(πt/2)); a sample with nothing
masked gets one random field masked. With probability `label_only_rate` a sample is instead put
in the fine-tuning state: only the label masked (under the linear schedule that state is rare,
about 1 sample in 130 on 10 fields), so that pre-training practises the task it is tuned for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from genctr.schema import Strict


class CorruptionOptions(Strict):
    schedule: Literal["linear", "cosine"] = "linear"
    label_only_rate: float = Field(0.0, ge=0, le=1, description="share of samples with only the "
                                   "label masked")


@dataclass
class Masks:
    """fields: bool [B, F + 1] (the label last): the field is masked (a sequence field: any of
    its positions); positions: sequence field -> bool [B, L] masked positions."""

    fields: torch.Tensor
    positions: dict[str, torch.Tensor]

    @staticmethod
    def label_only(rows: int, num_fields: int, sequences: dict[str, int],
                   device: torch.device | None = None) -> "Masks":
        """The fine-tuning state: every field visible, only the label masked."""
        fields = torch.zeros(rows, num_fields + 1, dtype=torch.bool, device=device)
        fields[:, -1] = True
        return Masks(fields, {name: torch.zeros(rows, length, dtype=torch.bool, device=device)
                              for name, length in sequences.items()})

    def to(self, device: torch.device) -> "Masks":
        """The masks on `device` (they are drawn on the host, from a seeded CPU generator)."""
        return Masks(self.fields.to(device), {k: v.to(device) for k, v in self.positions.items()})


class Corruption:
    def __init__(self, options: CorruptionOptions, num_fields: int,
                 sequence_index: dict[str, int]) -> None:
        self.options = options
        self.num_fields = num_fields
        self.sequence_index = sequence_index  # sequence field -> its position among the fields

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        """λ(t) for t in (0, 1]."""
        if self.options.schedule == "cosine":
            return 1 - torch.cos(math.pi * t / 2)
        return t

    def sample(self, rows: int, present: dict[str, torch.Tensor],
               generator: torch.Generator | None = None) -> Masks:
        """Masks for a batch; `present` gives each sequence field's non-padding positions [B, L]."""
        t = 1 - torch.rand(rows, 1, generator=generator)  # (0, 1]
        rate = self.rate(t)
        fields = torch.rand(rows, self.num_fields + 1, generator=generator) < rate
        positions = {}
        for name, valid in present.items():
            masked = (torch.rand(valid.shape, generator=generator) < rate) & valid
            positions[name] = masked
            fields[:, self.sequence_index[name]] = masked.any(dim=1)
        maskable = torch.ones(rows, self.num_fields + 1, dtype=torch.bool)
        for name, valid in present.items():  # an empty history has nothing to mask
            maskable[:, self.sequence_index[name]] = valid.any(dim=1)
        nothing = ~(fields & maskable).any(dim=1)
        if nothing.any():  # at least one field masked: pick one maskable field at random
            weights = maskable[nothing].float()
            pick = torch.multinomial(weights, 1, generator=generator).squeeze(1)
            rows_idx = nothing.nonzero().squeeze(1)
            fields[rows_idx, pick] = True
            for name, valid in present.items():
                chosen = rows_idx[pick == self.sequence_index[name]]
                if len(chosen):  # mask one random valid position of that history
                    position = torch.multinomial(valid[chosen].float(), 1, generator=generator).squeeze(1)
                    positions[name][chosen, position] = True
        fields &= maskable
        if self.options.label_only_rate > 0:
            label_only = torch.rand(rows, generator=generator) < self.options.label_only_rate
            fields[label_only] = False
            fields[label_only, -1] = True
            for name in positions:
                positions[name][label_only] = False
        return Masks(fields, positions)
