"""Run an inference strategy over a model's splits: metrics, average cost, latency.

It needs a model and its data, never a run folder: where the FrequencyIndex is kept is the
caller's choice (genctr.runs keeps it in the run folder)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from genctr.data.batches import batch_of
from genctr.data.encoded import EncodedSplit
from genctr.data.store import EncodedDataset
from genctr.metrics import evaluate_predictions
from genctr.models.base import CTRModel
from genctr.nn.embedding import field_infos, set_neutral_mode
from genctr.testtime.ensemble import Ensemble, SelectiveEnsemble
from genctr.testtime.index import INDEX_FILE, FrequencyIndex, IndexOptions
from genctr.distributed import Distributed
from genctr.testtime.inference import (MATT, Imputer, Inference, InferenceOptions, MCDropout,
                                       RandomPaths, Temperature)
from genctr.testtime.uttsi import UTTSI

STRATEGIES: dict[str, type[Inference]] = {
    "plain": Inference, "temperature": Temperature, "matt": MATT, "random": RandomPaths,
    "mcdropout": MCDropout, "uttsi": UTTSI, "ensemble": Ensemble,
    "selective_ensemble": SelectiveEnsemble}
FORWARD_ROWS = 65536  # rows per forward pass, all paths together


def frequency_index(dataset: EncodedDataset, options: IndexOptions,
                    folder: Path | None = None, ranks: Distributed = Distributed()) -> FrequencyIndex:
    """The FrequencyIndex of the dataset's train split: loaded from `folder`, or built and saved
    there (a separate file per index configuration); without a folder, built and not kept.
    Across processes (`ranks`, torchrun) each builds the index of its contiguous shard of the
    rows, rank 0 merges the shards' indexes (sketches add exactly) and saves the result, which
    the others then load."""
    fields = field_infos(dataset.encoder)
    default = options == IndexOptions()
    digest = hashlib.sha256(options.model_dump_json().encode()).hexdigest()[:10]
    path = None if folder is None else folder / (INDEX_FILE if default else f"frequency_index-{digest}.npz")
    if path is not None and path.is_file() and FrequencyIndex.saved_with(path, options):
        return FrequencyIndex.load(path, fields)
    train = dataset.splits["train"]
    if not ranks.active:
        index = FrequencyIndex.build(train, fields, options)
        if path is not None:
            index.save(path)
        return index
    if path is None:
        raise ValueError("an index built across processes needs a folder to share it through")
    shard = np.array_split(np.arange(len(train)), ranks.world)[ranks.rank]
    mine = FrequencyIndex.build(train.take(shard), fields, options)
    parts = ranks.gather_bytes(mine.to_bytes())
    if ranks.is_main:
        index = FrequencyIndex.from_bytes(parts[0], fields)
        for part in parts[1:]:
            index.merge(FrequencyIndex.from_bytes(part, fields))
        index.save(path)
    ranks.barrier()
    return FrequencyIndex.load(path, fields)


def make_inference(options: InferenceOptions, bf16: bool = False,
                   index: FrequencyIndex | None = None, members: list[CTRModel] | tuple = (),
                   imputer: Imputer | None = None) -> Inference:
    return STRATEGIES[options.strategy](options, bf16, index, members, imputer)


def eval_mode(model: CTRModel) -> None:
    """`model.eval()` unless the model is in eval mode already: eval() re-sets the flag on every
    submodule (~0.1 ms for a DCNv2), which a served 1-row request would pay each time. The root's
    flag is enough: eval() sets every module's, and what turns a submodule back to training mode
    (MC dropout) ends with eval()."""
    if model.training:
        model.eval()


def predict_with(strategy: Inference, model: CTRModel, split: EncodedSplit
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N], cost [N]) of every row, in batches sized so that one forward over
    all of a batch's paths holds about FORWARD_ROWS rows."""
    eval_mode(model)
    step = max(1, FORWARD_ROWS // strategy.passes_per_batch())
    probs, costs = [], []
    for start in range(0, len(split), step):
        batch = batch_of(split, slice(start, min(start + step, len(split))))
        prob, cost = strategy.predict(model, batch)
        probs.append(prob)
        costs.append(cost)
    return np.concatenate(probs), np.concatenate(costs)


def latency(strategy: Inference, model: CTRModel, split: EncodedSplit, requests: int = 200,
            batch_rows: int = 4096, batches: int = 5, seed: int = 0) -> dict[str, float]:
    """Wall-clock milliseconds, p50 and p99: one row per request, and batches of 4096 rows
    (everything a request needs: confidence lookup, paths, aggregation)."""
    rng = np.random.default_rng(seed)
    single = []
    for row in rng.integers(0, len(split), requests):
        batch = batch_of(split, np.array([row]))
        started = time.perf_counter()
        strategy.predict(model, batch)
        single.append((time.perf_counter() - started) * 1e3)
    batched = []
    for _ in range(batches):
        start = int(rng.integers(0, max(len(split) - batch_rows, 1)))
        batch = batch_of(split, slice(start, start + batch_rows))
        started = time.perf_counter()
        strategy.predict(model, batch)
        batched.append((time.perf_counter() - started) * 1e3)
    return {"single_p50_ms": float(np.percentile(single, 50)),
            "single_p99_ms": float(np.percentile(single, 99)),
            f"batch{batch_rows}_p50_ms": float(np.percentile(batched, 50)),
            f"batch{batch_rows}_p99_ms": float(np.percentile(batched, 99))}


def evaluate_inference(model: CTRModel, dataset: EncodedDataset, options: InferenceOptions,
                       splits: tuple[str, ...] = ("valid", "test"), measure_latency: bool = True,
                       index_folder: Path | None = None, bf16: bool = False,
                       members: list[CTRModel] | tuple = (),
                       imputer: Imputer | None = None) -> dict[str, Any]:
    """Fit the strategy on valid, then score the splits: metrics + avg_cost (+ latency).
    `index_folder` keeps the FrequencyIndex between calls; `members` are the other models of
    an ensemble (same encoder); `imputer` the pre-trained denoiser (uttsi impute: denoiser)."""
    model.eval()
    for member in members:
        member.eval()
    own_neutral = model.embedding.neutral_mode
    set_neutral_mode(model, options.neutral or own_neutral)
    uses_index = STRATEGIES[options.strategy].uses_index
    index = frequency_index(dataset, options.index, index_folder) if uses_index else None
    strategy = make_inference(options, bf16, index, members, imputer)
    started = time.perf_counter()
    strategy.fit(model, dataset.splits["valid"])
    result: dict[str, Any] = {"inference": options.label(), "strategy": options.describe(),
                              "fit_seconds": time.perf_counter() - started}
    for name in splits:
        split = dataset.splits[name]
        started = time.perf_counter()
        prob, cost = predict_with(strategy, model, split)
        result[name] = evaluate_predictions(split.label, prob, split.group, split.segments)
        result[name] |= {"avg_cost": float(cost.mean()), "max_cost": float(cost.max()),
                         "seconds": time.perf_counter() - started}
    if isinstance(strategy, (UTTSI, SelectiveEnsemble)):  # threshold: the last one refitted
        result["uttsi"] = {"threshold": strategy.budget.threshold, "gain": strategy.budget.gain,
                           "valid_cost": strategy.budget.valid_cost}
    if isinstance(strategy, Temperature):
        result["temperature"] = strategy.temperature
    if index is not None:
        result["index"] = {"bytes": index.nbytes, "build_seconds": index.build_seconds}
    if measure_latency:
        result["latency"] = latency(strategy, model, dataset.splits["test"])
    set_neutral_mode(model, own_neutral)
    return result
