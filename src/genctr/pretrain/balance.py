"""Balancers: the scalar pre-training loss from the per-field losses ℓ_f (present fields only).

- `uniform`: Σ_f ℓ_f (DGenCTR/SGCTR).
- `self_balancing` (HeteGenCTR): learnable log-difficulty s_f (initialised at 0, so it starts as
  uniform), L = Σ_f [exp(−s_f)·ℓ_f + s_f/2]; the equilibrium exp(−s_f) = 1/(2ℓ_f) gives the
  hardest fields the smallest weights (weight·ℓ_f is equalised).
- `proportional`: the same learned signal in the opposite, still stable direction: s_f is fitted
  to ln ℓ_f by minimising exp(−s_f)·sg(ℓ_f) + s_f, and the loss weights are F·softmax(s)_f with
  stop-gradient, so harder fields get more weight.
`apply_weights: false` fits s but keeps the network's loss uniform (the "attention without the
balancing" ablation: s still guides the attention). The label token has its own s, or a fixed
weight 1 (`label: fixed`). s has its own learning rate (a separate parameter group).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from genctr.schema import Strict


class BalancerOptions(Strict):
    name: Literal["uniform", "self_balancing", "proportional"] = "self_balancing"
    apply_weights: bool = Field(True, description="false: fit s, keep the loss uniform")
    label: Literal["learned", "fixed"] = Field("learned", description="fixed: the label's weight is 1")
    s_learning_rate: float = Field(1e-2, gt=0, description="Adam learning rate of s (own group)")


class Balancer(nn.Module):
    def __init__(self, options: BalancerOptions, num_tokens: int) -> None:
        super().__init__()
        self.options = options
        self.size = num_tokens
        learned = options.name != "uniform"
        self.log_difficulty = nn.Parameter(torch.zeros(num_tokens)) if learned else None

    def forward(self, losses: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss, weights [F + 1] applied to each ℓ_f, detached, for logging)."""
        present = present.to(losses.device)
        present_f = present.to(losses.dtype)
        if self.log_difficulty is None:
            return (losses * present_f).sum(), present_f.detach().clone()
        s = self.log_difficulty
        fixed_label = self.options.label == "fixed"
        if self.options.name == "self_balancing":
            weights = torch.exp(-s)
            fit = (torch.exp(-s) * losses.detach() + s / 2) * present_f  # s's own objective
            weighted = torch.exp(-s) * losses + s / 2
        else:  # proportional
            fit = (torch.exp(-s) * losses.detach() + s) * present_f
            share = torch.softmax(s.detach().masked_fill(~present, float("-inf")), dim=0)
            weights = present_f.sum() * share
            weighted = weights * losses
        if fixed_label:
            weights = torch.cat([weights[:-1], weights.new_ones(1)])
            weighted = torch.cat([weighted[:-1], losses[-1:]])
            fit = torch.cat([fit[:-1], fit.new_zeros(1)])
        if not self.options.apply_weights:
            loss = (losses * present_f).sum() + fit.sum()
            shown = present_f
        elif self.options.name == "self_balancing":
            loss = (weighted * present_f).sum()
            shown = weights * present_f
        else:
            loss = (weighted * present_f).sum() + fit.sum()
            shown = weights * present_f
        return loss, shown.detach()

    def field_weights(self, last_weights: torch.Tensor) -> np.ndarray:
        """Each field's current loss weight, for logging: exp(−s_f) (self_balancing; the label
        1 when fixed), F·softmax(s) over the last batch's fields (proportional), or 1 (uniform)."""
        if self.log_difficulty is None:
            return np.ones(len(last_weights))
        if self.options.name == "self_balancing":
            weights = torch.exp(-self.log_difficulty.detach()).cpu().numpy()
            if self.options.label == "fixed":
                weights[-1] = 1.0
            return weights
        return last_weights.cpu().numpy()

    def log_difficulties(self) -> np.ndarray:
        """s [F + 1] (zeros for uniform), for logging."""
        s = self.log_difficulty
        return np.zeros(self.size) if s is None else s.detach().cpu().numpy()

    def difficulty(self) -> torch.Tensor | None:
        """s [F + 1] for the attention guidance (None for uniform)."""
        return self.log_difficulty
