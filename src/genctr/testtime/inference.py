"""Inference strategies: `predict(model, batch) -> (probabilities [B], cost [B])`.

cost counts forward passes per instance relative to plain inference (plain = 1). A strategy
is fitted once on the validation split where it has something to fit (a temperature, UTTSI's
trigger threshold for a cost budget), then composes with any CTRModel through `drop`.

    plain          one pass
    temperature    one pass, logit / T with T fitted on valid (a calibration control)
    matt           M confidence-sampled paths (the plain path is one of them), aggregated
    random         M paths with random field drops (equal-cost ensemble control)
    mcdropout      M passes with dropout on (equal-cost ensemble control)
    uttsi          filtered pass for all; K stochastic paths for the uncertain, within a budget
    ensemble       K independently trained models averaged (the practitioner's control)
    selective_ensemble  the extra models only for the uncertain, within a budget
"""

from __future__ import annotations

import copy
from typing import Callable, Literal, Protocol

import numpy as np
import torch
from pydantic import Field
from scipy.optimize import minimize_scalar

from genctr.data.batches import Batch, batch_of, iterate_batches
from genctr.data.encoded import EncodedSplit
from genctr.errors import ConfigError
from genctr.metrics import logloss
from genctr.models.base import CTRModel
from genctr.testtime.budget import BudgetController
from genctr.nn.blocks import Dropout
from genctr.nn.embedding import NeutralMode
from genctr.schema import Strict
from genctr.runtime import model_device, move_batch
from genctr.testtime.confidence import (MIN_COUNT_GRID, Confidence, ConfidenceOptions, ConfidenceScale,
                                        confidence, confidence_scale)
from genctr.testtime.index import FrequencyIndex, IndexOptions, tokens_of
from genctr.testtime.paths import (path_weights, sample_confidence_paths, sample_random_paths,
                                   tile_batch)

class Imputer(Protocol):
    """Proposes values for masked fields (genctr.pretrain.imputer builds one from a pre-training)."""

    def impute(self, batch: Batch, masked: torch.Tensor, top_k: int
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]: ...


Strategy = Literal["plain", "temperature", "matt", "random", "mcdropout", "uttsi", "ensemble",
                   "selective_ensemble"]


class InferenceOptions(Strict):
    """One inference strategy and its options (config key `inference`)."""

    strategy: Strategy = "plain"
    paths: int = Field(8, ge=1, description="matt/random/mcdropout: passes per instance, the plain one included")
    aggregate: Literal["confidence", "uniform"] = Field(
        "confidence", description="matt: weight each path by its confidence, or not")
    mix: float = Field(1.0, ge=0, le=1, description="weight of the path aggregate against the "
                       "plain (uttsi: filtered) prediction")
    neutral: NeutralMode | None = Field(None, description="what a dropped field receives; default: "
                                        "the model's own (learned if it has one, else mean); mask: the [MASK] "
                                        "state of a model that has one (hetegen)")
    random_drop: float = Field(0.1, ge=0, lt=1, description="random: per-field drop probability")
    budget: float = Field(2.8, ge=1, description="uttsi, selective_ensemble: average passes per instance")
    budget_window: int = Field(4096, ge=0, description="uttsi, selective_ensemble: the trigger "
                               "threshold is refitted on this many recent rows while scoring, so "
                               "that the budget holds on test too; 0: keep the threshold fitted on valid")
    members: int = Field(2, ge=2, description="ensemble, selective_ensemble: models averaged, this "
                         "one included (the others: evaluate --members, or an experiment cell's next seeds)")
    average: Literal["logit", "probability"] = Field("logit", description="ensemble: what is averaged")
    impute: Literal["neutral", "denoiser"] = Field(
        "neutral", description="uttsi: the explored paths of an uncertain instance give its "
        "filtered (low-confidence) id and categorical fields values sampled from the pre-trained "
        "denoiser's prediction given the other fields, instead of dropping more fields (a run "
        "fine-tuned from a backbone pre-training with objective mfp)")
    impute_top_k: int = Field(10, ge=1, description="impute denoiser: sample among the k most "
                              "probable values")
    max_paths: int = Field(8, ge=1, description="uttsi: most extra paths one instance gets")
    filter_threshold: float = Field(0.1, ge=0, le=1, description="uttsi: drop features with a "
                                    "confidence below this, for every instance")
    trigger: Literal["uncertainty", "random"] = Field(
        "uncertainty", description="uttsi, selective_ensemble: explore the uncertain, or random "
        "instances at the same rate")
    consistency_temperature: float = Field(0.05, gt=0, description="uttsi: weight of a path = "
                                           "exp(-|p - median p| / this)")
    seed: int = 0
    index: IndexOptions = Field(default_factory=IndexOptions)
    confidence: ConfidenceOptions = Field(default_factory=ConfidenceOptions)

    def label(self) -> str:
        """The record's `inference` value, its cost class in BENCHMARKS.md's terms: `plain` (one
        pass: plain, temperature), `matt@M` (M passes: matt and its random/mcdropout controls),
        `uttsi@B` (budget B, either trigger), `ensemble@K` (K models; a selective ensemble at
        budget B: `ensemble@B`). The variant name says which strategy it was."""
        budget = f"{self.budget:.1f}" if round(self.budget, 1) == self.budget else f"{self.budget:g}"
        if self.strategy in ("plain", "temperature"):
            return "plain"
        if self.strategy == "uttsi":
            return f"uttsi@{budget}"
        if self.strategy == "ensemble":
            return f"ensemble@{self.members}"
        if self.strategy == "selective_ensemble":
            return f"ensemble@{budget}"
        return f"matt@{self.paths}"

    def describe(self) -> str:
        """For people: the strategy and its main parameter, e.g. mcdropout@8, uttsi-random@2.0,
        selective_ensemble3@1.5 (3 models, budget 1.5)."""
        if self.strategy in ("plain", "temperature"):
            return self.strategy
        if self.strategy == "uttsi":
            return self.label().replace("uttsi", "uttsi-random" if self.trigger == "random" else "uttsi")
        if self.strategy == "ensemble":
            return self.label()
        if self.strategy == "selective_ensemble":
            random = "-random" if self.trigger == "random" else ""
            return self.label().replace("ensemble", f"selective_ensemble{self.members}{random}")
        return f"{self.strategy}@{self.paths}"


WARM_UP_ROWS = 512  # enough that a budgeted strategy explores some, so every loop has run


class Inference:
    """Plain inference; the base of every strategy."""

    uses_index = False
    # its passes are plain forwards (the model with a drop mask), which an exported graph can run
    # instead of the torch model (`forward`, set by a server on the ONNX backend)
    exported_forward = True

    def __init__(self, options: InferenceOptions, bf16: bool = False,
                 index: FrequencyIndex | None = None, members: list[CTRModel] | tuple = (),
                 imputer: Imputer | None = None) -> None:
        self.options = options
        self.bf16 = bf16
        self.index = index
        self.members = list(members)  # other models (ensembles); each in eval mode
        self.imputer = imputer
        # (batch, drop, rows) -> logits, as Inference.logits takes them
        self.forward: Callable[[Batch, torch.Tensor | None, torch.Tensor | None], torch.Tensor] | None = None
        if options.impute == "denoiser" and (imputer is None or options.strategy != "uttsi"):
            raise ConfigError("inference impute: denoiser is a uttsi option and needs the run's "
                              "pre-trained denoiser (a run fine-tuned from a pre-training)")
        self.confidence_options = options.confidence  # fit() may fill in min_count
        self._scale: tuple[ConfidenceOptions, ConfidenceScale] | None = None  # for those options
        self.generator = torch.Generator().manual_seed(options.seed)
        if self.uses_index and index is None:
            raise ConfigError(f"inference strategy '{options.strategy}' needs a FrequencyIndex")

    def budget_controller(self, max_extra: int) -> BudgetController:
        """The controller of a budgeted strategy (uttsi, selective_ensemble): its grants go to
        the uncertain, or under `trigger: random` to random instances."""
        shuffle = self.generator if self.options.trigger == "random" else None
        return BudgetController(self.options.budget, max_extra, self.options.budget_window, shuffle)

    def fit(self, model: CTRModel, valid: EncodedSplit) -> None:
        """Learn what the strategy needs from the validation split: a value-level confidence's
        min_count when unset (strategies that use the index), else nothing."""
        if self.uses_index and self.confidence_options.level == "value" \
                and self.confidence_options.min_count is None:
            self.fit_min_count(model, valid)

    def fit_min_count(self, model: CTRModel, valid: EncodedSplit) -> None:
        """min_count from MIN_COUNT_GRID: the one whose pass that drops every value seen fewer
        times has the lowest valid logloss."""
        positions = self.index.field_positions()
        losses = {n: [] for n in MIN_COUNT_GRID}
        for batch in iterate_batches(valid, 65536):
            counts = self.index.frequencies(tokens_of(batch, fields=self.index.names))[1]
            for n in MIN_COUNT_GRID:
                drop = torch.zeros(len(batch), model.embedding.num_fields, dtype=torch.bool)
                drop[:, positions] = torch.from_numpy(counts < n)
                prob = torch.sigmoid(self.logits(model, batch, drop)).numpy()
                losses[n].append(logloss(batch.label.numpy(), prob) * len(batch))
        best = min(MIN_COUNT_GRID, key=lambda n: sum(losses[n]))
        self.confidence_options = self.confidence_options.model_copy(update={"min_count": float(best)})

    def warm_up(self, model: CTRModel, split: EncodedSplit) -> None:
        """Score the first WARM_UP_ROWS rows of a split once and forget it (a server, before its
        first request): the compiled loops load, or compile on a machine's first run (seconds),
        and lazily built tables are built then, not inside a request. The random generator is
        left where fitting left it."""
        if len(split) == 0:
            return
        state = self.generator.get_state()
        try:
            self.predict(model, batch_of(split, slice(0, min(len(split), WARM_UP_ROWS))))
        finally:
            self.generator.set_state(state)

    def logits(self, model: CTRModel, batch: Batch, drop: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """One forward pass on the model's device, logits back on the host (where the paths,
        confidences and aggregation live): of the batch's rows `rows` (int64 [P], repeats
        allowed: a batch's paths; None: each row once), fields in `drop` [P, F] neutral. The
        caller has put the model in eval mode (MC-dropout turns its dropout layers back on).
        With `forward` set, that runs the pass instead (the ONNX backend's onnxruntime session,
        which picks the rows itself; `model` still answers everything else)."""
        if self.forward is not None:
            return self.forward(batch, drop, rows)
        if rows is not None:
            batch = batch.take(rows)
        device = model_device(model)
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=self.bf16):
            logits = model(move_batch(batch, device), None if drop is None else drop.to(device))
            return logits.float().cpu()

    def path_logits(self, model: CTRModel, batch: Batch, drops: torch.Tensor) -> torch.Tensor:
        """logits [M, B] of the M paths `drops` [M, B, F], in one forward over the batch's rows
        M times (path-major)."""
        paths, rows, fields = drops.shape
        logits = self.logits(model, batch, drops.reshape(paths * rows, fields),
                             torch.arange(rows).repeat(paths))
        return logits.view(paths, rows)

    def confidence(self, batch: Batch) -> Confidence:
        if self._scale is None or self._scale[0] is not self.confidence_options:
            self._scale = self.confidence_options, confidence_scale(self.index, self.confidence_options)
        return confidence(self.index, tokens_of(batch, fields=self.index.names),
                          self.confidence_options, self._scale[1])

    def predict(self, model: CTRModel, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        prob = torch.sigmoid(self.logits(model, batch)).numpy()
        return prob, np.ones(len(batch))

    def passes_per_batch(self) -> int:
        """How many times a batch's rows the largest forward holds (to size batches)."""
        return 1


class Temperature(Inference):
    """Plain logits divided by a temperature fitted on valid: calibration without extra passes."""

    def fit(self, model: CTRModel, valid: EncodedSplit) -> None:
        from genctr.train import predict_split
        prob = np.clip(predict_split(model, valid, bf16=self.bf16), 1e-7, 1 - 1e-7)
        z = np.log(prob / (1 - prob))
        found = minimize_scalar(lambda log_t: logloss(valid.label, 1 / (1 + np.exp(-z / np.exp(log_t)))),
                                bounds=(-3, 3), method="bounded")
        self.temperature = float(np.exp(found.x))

    def predict(self, model, batch):
        prob = torch.sigmoid(self.logits(model, batch) / self.temperature).numpy()
        return prob, np.ones(len(batch))


class PathEnsemble(Inference):
    """M passes with drop masks from `sample`; path 0 is the plain pass."""

    def passes_per_batch(self) -> int:
        return self.options.paths

    def sample(self, batch: Batch, model: CTRModel) -> tuple[torch.Tensor, Confidence | None]:
        """drop [M-1, B, F] for the extra paths, and the confidences that weight the paths
        (None: uniform weights)."""
        raise NotImplementedError

    def predict(self, model, batch):
        rows, fields = len(batch), model.embedding.num_fields
        plain = torch.zeros(1, rows, fields, dtype=torch.bool)
        extra, conf = self.sample(batch, model) if self.options.paths > 1 else (plain[:0], None)
        drops = torch.cat([plain, extra])
        prob = torch.sigmoid(self.path_logits(model, batch, drops))  # [M, B]
        if conf is None or self.options.aggregate == "uniform":
            weights = torch.ones_like(prob)
        else:
            weights = path_weights(conf, drops)
        aggregate = (weights * prob).sum(0) / weights.sum(0)
        mixed = self.options.mix * aggregate + (1 - self.options.mix) * prob[0]
        return mixed.numpy(), np.full(rows, float(self.options.paths))


class MATT(PathEnsemble):
    """Confidence-guided paths (MATT): drop rare features and members of rare combinations."""

    uses_index = True

    def sample(self, batch, model):
        conf = self.confidence(batch)
        return sample_confidence_paths(conf, self.index, self.options.paths - 1, self.generator), conf


class RandomPaths(PathEnsemble):
    """Control: the same number of passes, indexed fields dropped at random."""

    uses_index = True

    def sample(self, batch, model):
        droppable = torch.zeros(model.embedding.num_fields, dtype=torch.bool)
        droppable[torch.from_numpy(self.index.field_positions())] = True
        drops = sample_random_paths(len(batch), model.embedding.num_fields, self.options.paths - 1,
                                    self.options.random_drop, droppable, self.generator)
        return drops, None


class MCDropout(Inference):
    """Control: the plain pass plus M-1 passes with the model's dropout layers on."""

    exported_forward = False  # dropout on at inference: the torch model only

    def passes_per_batch(self) -> int:
        return self.options.paths

    def predict(self, model, batch):
        plain = torch.sigmoid(self.logits(model, batch))
        dropouts = [m for m in model.modules() if isinstance(m, (Dropout, torch.nn.Dropout))]
        if not dropouts:
            raise ConfigError("inference mcdropout: this model has no dropout layer")
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=self.generator))
        with torch.random.fork_rng():  # dropout draws from the global RNG: leave it untouched
            torch.manual_seed(seed)
            try:
                for layer in dropouts:
                    layer.train()
                logits = self.logits(model, tile_batch(batch, self.options.paths - 1))
            finally:
                model.eval()
        sampled = torch.sigmoid(logits.view(self.options.paths - 1, len(batch)))
        prob = torch.cat([plain.unsqueeze(0), sampled]).mean(0)
        mixed = self.options.mix * prob + (1 - self.options.mix) * plain
        return mixed.numpy(), np.full(len(batch), float(self.options.paths))
