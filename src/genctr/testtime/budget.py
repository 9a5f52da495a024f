"""Selective test-time compute within a budget: who gets extra passes, and how many.

An instance with uncertainty u at or above the trigger threshold τ gets
K = ceil(max_extra·(u − τ)/(1 − τ)) extra passes (1..max_extra, growing with u); the others get
none. τ is the lowest threshold whose average cost, 1 + mean K, stays within the budget; a
budget that even τ = 0 leaves unspent steepens K's growth instead (gain > 1).

Fitting τ once on valid does not hold the budget on test when the two differ (ml1m-ctr's test
split has more cold users, so more uncertain rows: UTTSI@2.0 cost 2.09 there). The controller
therefore refits τ on the most recent `window` uncertainties, the rows being scored included (a
large batch is held at the budget by itself, a stream of single-row requests by its recent past),
and aims the refit at the budget minus what it has overspent so far, spread over the next
`window` rows or the current batch if larger (so the lag of the window after a shift is paid
back, without oscillating). Only uncertainties are
used, never labels.
"""

from __future__ import annotations

import bisect
import math
import numpy as np
import torch

REFIT_ROWS = 64  # refit τ after at least this many new rows (single-row requests stay cheap)


def extra_paths(uncertainty: np.ndarray, threshold: float, max_extra: int,
                gain: float = 1.0) -> np.ndarray:
    """int [N]: 0 below the threshold, else 1..max_extra growing with the uncertainty (`gain` > 1
    steepens the growth, for budgets that τ = 0 alone cannot spend)."""
    if math.isinf(threshold):
        return np.zeros(len(uncertainty), dtype=np.int64)
    span = max(1.0 - threshold, 1e-9)
    paths = np.clip(np.ceil(gain * max_extra * (uncertainty - threshold) / span), 1, max_extra)
    return np.where(uncertainty >= threshold, paths, 0).astype(np.int64)


BOUNDARY_SLACK = 1e-5  # far above the float32 error of a K boundary, far below a real gap


def _mean_cost(ascending: np.ndarray, threshold: float, max_extra: int, gain: float = 1.0,
               values: list[float] | None = None) -> float:
    """1 + mean K(u; τ) over uncertainties sorted ascending (`values`: the same as a list), by
    counting instead of computing K per row: Σ K = Σ_k #{K ≥ k}, where K ≥ 1 exactly for
    u ≥ τ and K ≥ k (k ≥ 2) exactly where g·M·(u − τ)/(1 − τ) > k − 1, each a suffix of the
    sorted rows found by binary search. Rows within BOUNDARY_SLACK of a boundary are decided by
    extra_paths' own expression in the array's dtype, so the sum is its to the last row. A
    refit's ~40 bisection steps then cost microseconds each instead of a pass over the window
    (a 1-row request's batch used to pay ~2 ms for a refit). Plain Python per level: the
    bisection's late steps probe next to a row, and numpy's call overhead on that one row
    was most of a served refit."""
    rows = len(ascending)
    if rows == 0:
        return 1.0
    values = ascending.tolist() if values is None else values
    span = max(1.0 - threshold, 1e-9)
    slope = gain * max_extra
    total = 0
    for level in range(max_extra):
        boundary = threshold + level * span / slope  # level 0: the threshold itself
        first = bisect.bisect_left(values, boundary - BOUNDARY_SLACK)
        if first == rows:
            break  # past every row: so are the higher levels' boundaries
        last = bisect.bisect_right(values, boundary + BOUNDARY_SLACK, lo=first)
        total += rows - last
        if last > first:
            total += _near_rows_past(ascending[first:last] if last - first > NEAR_SCALARS
                                     else [ascending[row] for row in range(first, last)],
                                     threshold, level, slope, span)
    return 1 + total / rows


NEAR_SCALARS = 8  # up to this many rows next to a boundary are decided one numpy scalar each


def _near_rows_past(near, threshold: float, level: int, slope: float, span: float) -> int:
    """How many of the rows next to a level's boundary (numpy values of the window's dtype:
    an array, or a list of its scalars, which compute alike) get more than `level` paths:
    extra_paths' own expression."""
    if level == 0:
        return int(sum(value >= threshold for value in near)) if isinstance(near, list) \
            else int((near >= threshold).sum())
    if isinstance(near, list):
        return int(sum(slope * (value - threshold) / span > level for value in near))
    return int((slope * (near - threshold) / span > level).sum())


def fit_threshold(uncertainty: np.ndarray, budget: float, max_extra: int) -> float:
    """The lowest τ whose average cost 1 + mean K(u; τ) stays within the budget (inf: none)."""
    ascending = np.sort(uncertainty)
    return _fit_threshold(ascending, ascending.tolist(), budget, max_extra)


def _fit_threshold(ascending: np.ndarray, values: list[float], budget: float, max_extra: int) -> float:
    """fit_threshold over the uncertainties sorted ascending (`values`: the same as a list)."""
    cost = lambda t: _mean_cost(ascending, t, max_extra, values=values)  # noqa: E731
    if budget < 1 + 1 / max(len(ascending), 1):
        return math.inf
    if cost(0.0) <= budget:
        return 0.0
    low, high = 0.0, float(ascending[-1]) + 1e-6  # cost(high) == 1
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (low, middle) if cost(middle) <= budget else (middle, high)
    return high


def fit_allocation(uncertainty: np.ndarray, budget: float, max_extra: int) -> tuple[float, float]:
    """(τ, gain): τ from fit_threshold; where even τ = 0 leaves budget unspent (everyone explored,
    most with few extra passes), the largest gain whose cost stays within the budget."""
    ascending = np.sort(uncertainty)
    values = ascending.tolist()
    threshold = _fit_threshold(ascending, values, budget, max_extra)
    cost = lambda g: _mean_cost(ascending, 0.0, max_extra, g, values)  # noqa: E731
    if threshold != 0.0 or len(uncertainty) == 0 or cost(1.0) >= budget:
        return threshold, 1.0
    positive = uncertainty[uncertainty > 0]
    low, high = 1.0, 1.0 / max(float(positive.min()), 1e-9) if len(positive) else 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if cost(middle) <= budget else (low, middle)
    return 0.0, low


class BudgetController:
    """Extra passes per instance from its uncertainty, the average held at `budget`.

    window 0: τ fitted on valid is kept for every later row (the cost follows the data).
    shuffle: the random-trigger control; the same grants go to random instances (a permutation
    drawn from this generator), so rate and cost stay those of the uncertainty trigger."""

    def __init__(self, budget: float, max_extra: int, window: int,
                 shuffle: torch.Generator | None = None) -> None:
        self.budget, self.max_extra, self.window = budget, max_extra, window
        self.shuffle = shuffle
        self.threshold, self.gain = math.inf, 1.0
        self.valid_cost = 1.0
        self.recent = np.zeros(0)
        self.since_refit = 0
        self.scored, self.spent = 0, 0.0

    def fit(self, uncertainty: np.ndarray) -> None:
        """τ from the validation split's uncertainties; they also seed the window."""
        self.threshold, self.gain = fit_allocation(uncertainty, self.budget, self.max_extra)
        self.valid_cost = float(1 + self.extra(uncertainty).mean())
        self.recent = uncertainty[-self.window:] if self.window else np.zeros(0)
        self.since_refit = 0
        self.scored, self.spent = 0, 0.0

    def allocate(self, uncertainty: np.ndarray) -> np.ndarray:
        """int [N]: extra passes for these rows (τ refitted first, when the window is on)."""
        if self.window:
            self.recent = np.concatenate([self.recent, uncertainty])[-max(self.window, len(uncertainty)):]
            self.since_refit += len(uncertainty)
            if self.since_refit >= min(REFIT_ROWS, len(self.recent)):
                overspent = self.spent - self.budget * self.scored
                horizon = max(self.window, len(uncertainty))  # a big batch repays at once
                aim = min(max(self.budget - overspent / horizon, 1.0), 1.0 + self.max_extra)
                self.threshold, self.gain = fit_allocation(self.recent, aim, self.max_extra)
                self.since_refit = 0
            self.recent = self.recent[-self.window:]
        extra = self.extra(uncertainty)
        if self.shuffle is not None:
            extra = extra[torch.randperm(len(extra), generator=self.shuffle).numpy()]
        self.scored += len(extra)
        self.spent += float(len(extra) + extra.sum())
        return extra

    def extra(self, uncertainty: np.ndarray) -> np.ndarray:
        return extra_paths(uncertainty, self.threshold, self.max_extra, self.gain)
