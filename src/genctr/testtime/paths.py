"""Inference paths: which fields each of M passes over an instance drops, and running them.

A path is a bool drop mask [B, F] (True = the field gets its neutral embedding). All paths of
a batch run in one forward over the batch tiled M times.
"""

from __future__ import annotations

import numpy as np
import torch

from genctr.data.batches import Batch
from genctr.testtime.confidence import Confidence
from genctr.testtime.index import FrequencyIndex
from genctr.testtime.kernels import keep_confident, walk_combinations


def tile_batch(batch: Batch, times: int) -> Batch:
    """The batch repeated `times` times along rows, path-major: rows [k*B, (k+1)*B) = copy k."""
    return batch.take(torch.arange(len(batch)).repeat(times))


def sample_confidence_paths(conf: Confidence, index: FrequencyIndex, paths: int,
                            generator: torch.Generator, base_drop: torch.Tensor | None = None
                            ) -> torch.Tensor:
    """drop [paths, B, F]: MATT's sampling, walking the orders from low to high.

    Order 1: keep each field with probability its confidence. Order 2 and 3: where every member
    of a combination is still kept, with probability 1 - the combination's confidence drop its
    least confident member. Fields in `base_drop` [B, F] are dropped on every path.
    """
    base = None if base_drop is None else base_drop.numpy()
    return torch.from_numpy(~confidence_paths_kept(conf, index, paths, generator, base))


def confidence_paths_kept(conf: Confidence, index: FrequencyIndex, paths: int,
                          generator: torch.Generator, base_drop: np.ndarray | None = None,
                          rows: np.ndarray | None = None) -> np.ndarray:
    """kept bool [paths, n, F]: sample_confidence_paths' complement for the rows `rows` [n] of
    `conf` and `base_drop` (None: every row), the same draws as for conf.take(rows) (UTTSI's
    explored rows, picked inside the compiled loops instead of copied first)."""
    rows = np.arange(len(conf.fields)) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    base = np.zeros(conf.fields.shape, dtype=bool) if base_drop is None else base_drop
    draws = torch.rand(paths, len(rows), conf.fields.shape[1], generator=generator).numpy()
    kept = keep_confident(draws, conf.fields, base, rows)
    for order in (2, 3):
        if order not in conf.orders:
            continue
        members = index.member_positions(order)  # [C, order] model fields
        draws = torch.rand(paths, len(rows), len(members), generator=generator).numpy()
        walk_combinations(kept, draws, conf.orders[order], conf.fields, members, rows)
    return kept


def sample_random_paths(rows: int, num_fields: int, paths: int, rate: float,
                        droppable: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """drop [paths, B, F]: each droppable field ([F] bool) dropped independently with `rate`."""
    drop = torch.rand(paths, rows, num_fields, generator=generator) < rate
    return drop & droppable


def path_weights(conf: Confidence, drops: torch.Tensor) -> torch.Tensor:
    """[M, B]: a path's confidence, the mean confidence of the features it keeps."""
    fields = torch.from_numpy(conf.fields).unsqueeze(0)  # [1, B, F]
    kept = (~drops).float()
    return (fields * kept).sum(-1) / kept.sum(-1).clamp(min=1.0)
