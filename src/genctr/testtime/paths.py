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

SMALL_WALK = 4096  # paths x rows x fields up to which the walk runs in Python lists


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
    fields = conf.fields  # [B, F]; the walk runs in numpy: a small op costs a tenth of torch's
    rows, num_fields = fields.shape
    kept = torch.rand(paths, rows, num_fields, generator=generator).numpy() < fields
    if base_drop is not None:
        kept &= ~base_drop.numpy()
    for order in (2, 3):
        if order not in conf.orders:
            continue
        members = index.member_positions(order)  # [C, order] model fields
        least = fields[:, members].argmin(axis=-1)  # [B, C]: the least confident member
        weakest = members[np.arange(len(members)), least]  # [B, C] its model field
        combo_conf = conf.orders[order]  # [B, C]
        draws = torch.rand(paths, rows, len(members), generator=generator).numpy()
        dropping = draws >= combo_conf  # [paths, B, C]: would drop, if every member is still kept
        walk = _walk_entries if kept.size <= SMALL_WALK else _walk_combinations
        walk(kept, dropping, members, weakest)
    return torch.from_numpy(~kept)


def _walk_combinations(kept: np.ndarray, dropping: np.ndarray, members: np.ndarray,
                       weakest: np.ndarray) -> None:
    """The walk, combination by combination over all paths and rows at once (large batches);
    `kept` [paths, B, F] is updated in place. A combination that drops nowhere is skipped."""
    instance = np.arange(kept.shape[1])
    for c in np.flatnonzero(dropping.any(axis=(0, 1))):
        drop_one = dropping[:, :, c]
        for field in members[c].tolist():
            drop_one = drop_one & kept[:, :, field]
        kept[:, instance, weakest[:, c]] &= ~drop_one


def _walk_entries(kept: np.ndarray, dropping: np.ndarray, members: np.ndarray,
                  weakest: np.ndarray) -> None:
    """The same walk entry by entry in Python lists, for a served request's few rows, where
    each numpy call of the walk above costs more than the work. The result is identical:
    entries come in (path, row, combination) order, and paths and rows never interact."""
    rows = kept.tolist()
    entries = zip(*(axis.tolist() for axis in np.nonzero(dropping)))
    weakest = weakest.tolist()
    if members.shape[1] == 2:  # pairs, the common order: two lookups instead of a generator
        pairs = members.tolist()
        for path, row, c in entries:
            fields = rows[path][row]
            first, second = pairs[c]
            if fields[first] and fields[second]:
                fields[weakest[row][c]] = False
    else:
        members = members.tolist()
        for path, row, c in entries:
            fields = rows[path][row]
            if all(fields[field] for field in members[c]):
                fields[weakest[row][c]] = False
    kept[...] = rows


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
