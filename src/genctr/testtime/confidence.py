"""Confidence in [0, 1] of each feature and feature combination, from training frequencies.

Default: c = min(1, log(1 + n) / log(1 + n_ref)), with n the estimated training count and
n_ref the median count of a training occurrence of that order (half of what the model saw at
that order was at least this frequent). A value never seen in training has confidence 0; one
at least as common as the reference has 1. The reference can be another quantile or an
absolute count, taken per order (pooled over its combinations) or per combination (`per:
combination`: a user id is compared with other user ids, not with genders), and the scale
linear instead of logarithmic.

`level: value` judges each feature value by its own training count instead: a value seen at least
`min_count` times has confidence 1, one seen n < min_count times log(1 + n) / log(1 + min_count);
so the filter and the paths touch only values below min_count, never a whole field (the pooled
reference puts most user and item ids below the median of order 1). min_count is fitted on the
validation split by the strategy when unset (`fit_min_count`). Pairs and triples keep the
reference above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from pydantic import Field

from genctr.errors import ConfigError
from genctr.schema import Strict
from genctr.testtime.index import QUANTILES, FrequencyIndex, Tokens
from genctr.testtime.kernels import lookup_confidence


class ConfidenceOptions(Strict):
    reference: Literal["quantile", "count"] = "quantile"
    per: Literal["order", "combination"] = Field(
        "order", description="quantile reference pooled over an order's combinations, or per combination")
    quantile: float = Field(0.5, ge=0, le=1, description="of training occurrences, per order")
    count: float = Field(100.0, gt=0, description="reference count when reference is 'count'")
    scale: Literal["log", "linear"] = "log"
    orders: list[int] = Field(default_factory=lambda: [1, 2],
                              description="orders whose combinations form the frequency prior")
    level: Literal["reference", "value"] = Field(
        "reference", description="order-1 confidence against the reference above, or per value "
        "against min_count")
    min_count: float | None = Field(None, gt=0, description="level value: training count from "
                                    "which a value is fully trusted; unset: fitted on valid")


@dataclass
class Confidence:
    """Per row: `fields` [N, F] over all model fields (1 where a field is not indexed), and per
    order the combinations' confidences [N, C]; `prior` [N] is the instance's frequency prior
    (the mean over the chosen orders of each order's mean confidence)."""

    fields: np.ndarray
    orders: dict[int, np.ndarray]
    prior: np.ndarray

    def take(self, rows: np.ndarray) -> "Confidence":
        return Confidence(self.fields[rows], {o: c[rows] for o, c in self.orders.items()},
                          self.prior[rows])


def reference_count(index: FrequencyIndex, order: int, options: ConfidenceOptions) -> np.ndarray:
    """The reference count n_ref of each of the order's combinations, float [C]."""
    combinations = len(index.combos[order])
    if options.reference == "count":
        return np.full(combinations, options.count)
    if options.per == "combination":
        table = index.combination_quantiles[order]  # [C, 101]
        return np.array([np.interp(options.quantile, QUANTILES, row) for row in table])
    return np.full(combinations, np.interp(options.quantile, QUANTILES, index.reference_quantiles[order]))


class ConfidenceScale(NamedTuple):
    """Per order, what each combination's count is divided by (log(1 + n_ref), or n_ref on the
    linear scale; 1 where n_ref <= 0), which have n_ref <= 0 (confidence 1) and whether counts
    are taken on the log scale; under `level: value`, order 1's is log(1 + min_count) for every
    field. Fixed for an index and options, so a strategy works it out once, not per served request."""

    denominators: dict[int, np.ndarray]  # [C] float64
    trusted: dict[int, np.ndarray]  # [C] bool
    logarithmic: dict[int, bool]


def confidence_scale(index: FrequencyIndex, options: ConfidenceOptions) -> ConfidenceScale:
    denominators, trusted, logarithmic = {}, {}, {}
    for order, combos in index.combos.items():
        if not combos:
            continue
        logarithmic[order] = options.scale == "log"
        if order == 1 and options.level == "value" and options.min_count is not None:
            trusted[order] = np.zeros(len(combos), dtype=bool)
            denominators[order] = np.full(len(combos), np.log1p(options.min_count))
            logarithmic[order] = True
            continue
        reference = np.maximum(reference_count(index, order, options), 0.0)
        trusted[order] = reference <= 0
        scaled = np.log1p(reference) if logarithmic[order] else reference
        denominators[order] = np.where(trusted[order], 1.0, scaled)
    return ConfidenceScale(denominators, trusted, logarithmic)


MIN_COUNT_GRID = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500)


def confidence(index: FrequencyIndex, tokens: Tokens, options: ConfidenceOptions,
               scale: ConfidenceScale | None = None) -> Confidence:
    """Each row's confidences (`scale`: confidence_scale(index, options), when kept)."""
    scale = scale or confidence_scale(index, options)
    if options.level == "value" and options.min_count is None:
        raise ConfigError("confidence.level value: min_count is unset and was not fitted "
                          "(set confidence.min_count, or fit the strategy on valid first)")
    values = np.ascontiguousarray(index.value_columns(tokens), dtype=np.int64)
    # per order, min(1, f(n) / denominator) of the combinations' counts n, looked up and scaled
    # in one compiled call
    per_order = {order: lookup_confidence(values, *index.lookup_tables(order), scale.denominators[order],
                                          scale.trusted[order], scale.logarithmic[order])
                 for order in index.combos if index.combos[order]}
    fields = np.ones((len(values), len(index.all_fields)), dtype=np.float32)
    fields[:, index.field_positions()] = per_order[1]
    used = [_row_means(per_order[o]) for o in options.orders if o in per_order]
    # the mean of the orders' means (float32, summed in order: np.mean(used, axis=0) without
    # stacking them first)
    prior = sum(used[1:], used[0]) / len(used) if used else np.ones(len(values), dtype=np.float32)
    return Confidence(fields, per_order, prior.astype(np.float32, copy=False))


def _row_means(confidences: np.ndarray) -> np.ndarray:
    """np.mean(confidences, axis=1) to the bit (its sum, then its division by the count as an
    intp), without the wrapper's checks (~7 µs of a served batch's confidence)."""
    total = np.add.reduce(confidences, axis=1)
    return np.true_divide(total, np.intp(confidences.shape[1]), out=total, casting="unsafe")
