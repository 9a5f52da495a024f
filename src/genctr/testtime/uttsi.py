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

Generative paths (`impute: denoiser`, none of the three papers has them): instead of dropping
more fields, each of an explored instance's K paths gives its filtered id and categorical fields
a value sampled from the pre-trained denoiser's top-k proposal given the other fields (a cold
user's unknown id becomes users like the one its gender, age, occupation, zip and history
describe); the paths are aggregated the same way.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from genctr.data.batches import Batch, iterate_batches
from genctr.testtime.confidence import Confidence
from genctr.testtime.inference import Inference
from genctr.testtime.kernels import aggregate_paths
from genctr.testtime.paths import confidence_paths_kept, tile_batch


def uncertainty(logits: torch.Tensor, conf: Confidence) -> np.ndarray:
    """Data scarcity per instance: (1 − model confidence)·(1 − frequency prior)."""
    return uncertainty_from_prob(torch.sigmoid(logits).numpy(), conf)


def uncertainty_from_prob(prob: np.ndarray, conf: Confidence) -> np.ndarray:
    """uncertainty() from the probabilities σ(logits) [N] (float32, as torch computes them)."""
    return (1 - np.abs(2 * prob - 1)) * (1 - conf.prior)


class UTTSI(Inference):
    uses_index = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.budget = self.budget_controller(self.options.max_paths)

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

    def warm_up(self, model, split) -> None:
        """Inference.warm_up, the budget's window and spending left as fitted too."""
        budget = copy.deepcopy(self.budget, {id(self.generator): self.generator})
        try:
            super().warm_up(model, split)
        finally:
            self.budget = budget

    def predict(self, model, batch):
        conf = self.confidence(batch)
        base = self.filtered(conf)
        first = torch.sigmoid(self.logits(model, batch, base)).numpy()
        paths = self.budget.allocate(uncertainty_from_prob(first, conf))
        prob = first.copy()
        explored = np.flatnonzero(paths)
        if len(explored):
            prob[explored] = self._explore(model, batch, conf, base, first, explored, paths[explored])
        return prob, 1.0 + paths

    def _explore(self, model, batch, conf, base, first, explored, paths) -> np.ndarray:
        """Aggregated probabilities of the explored instances (their K paths + the filtered one)."""
        most = int(paths.max())
        # path-major; contiguous always (np.nonzero's are strided views, but a single path's
        # are contiguous, and the compiled aggregation then compiled a second variant inside a
        # served request: a 2.6 s stall)
        path_of, member = map(np.ascontiguousarray, np.nonzero(np.arange(most)[:, None] < paths[None, :]))
        if self.imputer is not None:
            path_batch, path_drop = self._imputed_paths(batch.take(torch.from_numpy(explored)),
                                                        base[explored], most, model)
            flat = torch.from_numpy(path_of * len(explored) + member)  # as tile_batch lays them out
            logits = self.logits(model, path_batch, path_drop[flat], flat)
        else:
            kept = confidence_paths_kept(conf, self.index, most, self.generator,
                                         base_drop=base.numpy(), rows=explored)  # [most, n, F]
            logits = self.logits(model, batch, torch.from_numpy(~kept[path_of, member]),
                                 torch.from_numpy(explored[member]))
        return self._aggregate(first[explored], torch.sigmoid(logits).numpy(), path_of, member, paths)

    def _aggregate(self, first: np.ndarray, sampled: np.ndarray, path_of: np.ndarray,
                   member: np.ndarray, paths: np.ndarray) -> np.ndarray:
        """Consistency aggregation of each explored instance's filtered probability `first` [n]
        and its paths' `sampled` [P] (path path_of[i] of instance member[i]; `paths` [n] each):
        weight exp(-|p - median p| / temperature), the median the lower middle one of the
        instance's 1 + K values (compiled: a served micro-batch's few rows)."""
        return aggregate_paths(first, sampled, path_of, member, paths,
                               self.options.consistency_temperature, self.options.mix)

    def _imputed_paths(self, batch: Batch, filtered: torch.Tensor, paths: int, model
                       ) -> tuple[Batch, torch.Tensor]:
        """`paths` copies of the batch (path-major) in which every filtered field the denoiser
        can impute holds a value sampled from its top-k proposal given the other fields, and
        the drop mask [paths·B, F] of the filtered fields it cannot impute."""
        proposals = self.imputer.impute(batch, filtered, self.options.impute_top_k)
        tiled = tile_batch(batch, paths)
        drop = filtered.repeat(paths, 1)
        tokens = dict(tiled.tokens)
        for name, (values, probabilities) in proposals.items():
            position = model.embedding.field_index(name)
            draws = torch.multinomial(probabilities.repeat(paths, 1), 1, generator=self.generator)
            sampled = values.repeat(paths, 1).gather(1, draws).squeeze(1)
            where = drop[:, position]
            tokens[name] = torch.where(where, sampled.to(tokens[name].dtype), tokens[name])
            drop[:, position] = False
        return Batch(tokens, tiled.values, tiled.label, tiled.group), drop
