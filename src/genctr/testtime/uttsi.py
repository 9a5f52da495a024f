"""UTTSI: uncertainty-triggered selective test-time compute.

Every instance gets one filtered pass (features whose confidence is below `filter_threshold`
take their neutral embedding); its logit gives the model confidence |2σ(z) − 1|. The instance's
frequency prior comes from the FrequencyIndex. Data scarcity (epistemic uncertainty) is high when
both are low: u = (1 − model confidence)·(1 − prior). An instance that is ambiguous but frequent
(low model confidence, high prior) has low u and is not explored. Instances with u ≥ τ get
K = ceil(max_paths·(u − τ)/(1 − τ)) extra confidence-sampled paths (K grows with u), aggregated
with the filtered pass by consistency: weight exp(−|p − median p| / temperature). τ is fitted on
the validation split so that the average cost, 1 + mean K, meets the budget, and refitted on the
recent rows while scoring so that it still does on test (genctr.testtime.budget).
"""

from __future__ import annotations

import numpy as np
import torch

from genctr.data.batches import iterate_batches
from genctr.testtime.budget import BudgetController
from genctr.testtime.confidence import Confidence
from genctr.testtime.inference import Inference
from genctr.testtime.paths import sample_confidence_paths


def uncertainty(logits: torch.Tensor, conf: Confidence) -> np.ndarray:
    """Data scarcity per instance: (1 − model confidence)·(1 − frequency prior)."""
    model_confidence = (2 * torch.sigmoid(logits) - 1).abs().numpy()
    return (1 - model_confidence) * (1 - conf.prior)


class UTTSI(Inference):
    uses_index = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.budget = BudgetController(self.options.budget, self.options.max_paths,
                                       self.options.budget_window)

    def passes_per_batch(self) -> int:
        return 1 + self.options.max_paths

    def filtered(self, conf: Confidence) -> torch.Tensor:
        """drop [B, F]: features below the confidence threshold, for every instance."""
        return torch.from_numpy(conf.fields < self.options.filter_threshold)

    def fit(self, model, valid) -> None:
        super().fit(model, valid)
        scores = []
        for batch in iterate_batches(valid, 65536):
            conf = self.confidence(batch)
            scores.append(uncertainty(self.logits(model, batch, self.filtered(conf)), conf))
        self.budget.fit(np.concatenate(scores))

    def predict(self, model, batch):
        conf = self.confidence(batch)
        base = self.filtered(conf)
        logits = self.logits(model, batch, base)
        first = torch.sigmoid(logits)
        paths = self.budget.allocate(uncertainty(logits, conf))
        if self.options.trigger == "random":  # control: same rate and costs, random instances
            paths = paths[torch.randperm(len(paths), generator=self.generator).numpy()]
        prob = first.clone()
        explored = np.flatnonzero(paths)
        if len(explored):
            prob[explored] = self._explore(model, batch, conf, base, first, explored, paths[explored])
        return prob.numpy(), 1.0 + paths

    def _explore(self, model, batch, conf, base, first, explored, paths) -> torch.Tensor:
        """Aggregated probabilities of the explored instances (their K paths + the filtered one)."""
        most = int(paths.max())
        drops = sample_confidence_paths(conf.take(explored), self.index, most, self.generator,
                                        base_drop=base[explored])  # [most, n, F]
        used = torch.from_numpy(np.arange(most)[:, None] < paths[None, :])  # [most, n]
        path_of, member = used.nonzero(as_tuple=True)
        rows = torch.from_numpy(explored)[member]
        logits = self.logits(model, batch.take(rows), drops[path_of, member])
        table = torch.full((len(explored), most + 1), float("nan"))
        table[:, 0] = first[explored]
        table[member, path_of + 1] = torch.sigmoid(logits)
        median = table.nanmedian(dim=1, keepdim=True).values
        weights = torch.exp(-(table - median).abs() / self.options.consistency_temperature)
        weights = torch.nan_to_num(weights, nan=0.0)
        aggregate = (weights * torch.nan_to_num(table)).sum(1) / weights.sum(1)
        return self.options.mix * aggregate + (1 - self.options.mix) * first[explored]
