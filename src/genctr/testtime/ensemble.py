"""Ensembles of independently trained models: the control a practitioner compares test-time
compute with.

    ensemble             every instance: the mean over K models (this one and K − 1 members)
    selective_ensemble   UTTSI's trigger picks who gets the extra members, within a budget

The members are other runs of the same task with the same encoder (in an experiment: the
cell's other seeds). Averaging is over logits by default (option: probabilities). cost = the
number of models that scored the instance.
"""

from __future__ import annotations

import numpy as np
import torch

from genctr.data.batches import Batch, iterate_batches
from genctr.errors import ConfigError
from genctr.models.base import CTRModel
from genctr.testtime.inference import Inference
from genctr.testtime.uttsi import uncertainty


class Ensemble(Inference):
    """The mean over the model and its members, for every instance."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if len(self.members) != self.options.members - 1:
            raise ConfigError(f"inference {self.options.strategy}: members {self.options.members} "
                              f"needs {self.options.members - 1} other run(s), got {len(self.members)}")

    def passes_per_batch(self) -> int:
        return self.options.members

    def average(self, logits: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        """Probabilities [B] from logits [K, B] of which `used` [K, B] count."""
        weights = used.float()
        if self.options.average == "probability":
            return (weights * torch.nan_to_num(torch.sigmoid(logits))).sum(0) / weights.sum(0)
        return torch.sigmoid((weights * torch.nan_to_num(logits)).sum(0) / weights.sum(0))

    def predict(self, model, batch):
        logits = torch.stack([self.logits(m, batch) for m in (model, *self.members)])
        prob = self.average(logits, torch.ones_like(logits, dtype=torch.bool))
        return prob.numpy(), np.full(len(batch), float(self.options.members))


class SelectiveEnsemble(Ensemble):
    """The model for everyone; its members only for the instances UTTSI's trigger finds
    uncertain ((1 − model confidence)·(1 − frequency prior), from the plain pass), the most
    uncertain getting the most members, within the budget. `trigger: random` grants the same
    extra members to random instances: it isolates the trigger's value from the ensemble's."""

    uses_index = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.budget = self.budget_controller(self.options.members - 1)

    def fit(self, model: CTRModel, valid) -> None:
        super().fit(model, valid)
        scores = [uncertainty(self.logits(model, batch), self.confidence(batch))
                  for batch in iterate_batches(valid, 65536)]
        self.budget.fit(np.concatenate(scores))

    def predict(self, model, batch: Batch):
        first = self.logits(model, batch)
        extra = self.budget.allocate(uncertainty(first, self.confidence(batch)))
        logits = torch.full((self.options.members, len(batch)), float("nan"))
        logits[0] = first
        for position, member in enumerate(self.members):
            rows = np.flatnonzero(extra > position)  # member j serves those granted more than j
            if len(rows):
                logits[position + 1, rows] = self.logits(member, batch.take(torch.from_numpy(rows)))
        prob = self.average(logits, ~logits.isnan())
        return prob.numpy(), 1.0 + extra
