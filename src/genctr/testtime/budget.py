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

import math

import numpy as np
import torch

from genctr.testtime.kernels import extra_paths as kernel_extra_paths
from genctr.testtime.kernels import fit_sorted, mean_cost

REFIT_ROWS = 64  # refit τ after at least this many new rows (single-row requests stay cheap)


def extra_paths(uncertainty: np.ndarray, threshold: float, max_extra: int,
                gain: float = 1.0) -> np.ndarray:
    """int [N]: 0 below the threshold, else 1..max_extra growing with the uncertainty (`gain` > 1
    steepens the growth, for budgets that τ = 0 alone cannot spend); compiled:
    kernels.extra_paths."""
    return _extra_paths(uncertainty, threshold, max_extra, gain)[0]


def _extra_paths(uncertainty: np.ndarray, threshold: float, max_extra: int,
                 gain: float = 1.0) -> tuple[np.ndarray, int]:
    """(extra_paths, their sum)."""
    if math.isinf(threshold):
        return np.zeros(len(uncertainty), dtype=np.int64), 0
    window, single = _window(uncertainty)
    return kernel_extra_paths(window, float(threshold), int(max_extra), float(gain), single)


BOUNDARY_SLACK = 1e-5  # far above the float32 error of a K boundary, far below a real gap


def _mean_cost(ascending: np.ndarray, threshold: float, max_extra: int, gain: float = 1.0) -> float:
    """1 + mean K(u; τ) over uncertainties sorted ascending, by counting instead of computing
    K per row: Σ K = Σ_k #{K ≥ k}, where K ≥ 1 exactly for u ≥ τ and K ≥ k (k ≥ 2) exactly
    where g·M·(u − τ)/(1 − τ) > k − 1, each a suffix of the sorted rows found by binary
    search. Rows within BOUNDARY_SLACK of a boundary are decided by extra_paths' own
    expression in the array's dtype, so the sum is its to the last row. A refit's ~40
    bisection steps then cost microseconds each instead of a pass over the window (compiled:
    kernels.mean_cost; a served refit took ~0.7 ms in Python, ~2 ms before the counting)."""
    ascending, single = _window(ascending)
    return mean_cost(ascending, threshold, max_extra, gain, BOUNDARY_SLACK, single)


def _window(uncertainty: np.ndarray) -> tuple[np.ndarray, bool]:
    """The uncertainties as the kernels take them: float32 (UTTSI's) stay, so that the costs
    are extra_paths' in float32; any other dtype is float64."""
    single = uncertainty.dtype == np.float32
    return np.ascontiguousarray(uncertainty, dtype=np.float32 if single else np.float64), single


def fit_threshold(uncertainty: np.ndarray, budget: float, max_extra: int) -> float:
    """The lowest τ whose average cost 1 + mean K(u; τ) stays within the budget (inf: none)."""
    return fit_allocation(uncertainty, budget, max_extra)[0]


def fit_allocation(uncertainty: np.ndarray, budget: float, max_extra: int) -> tuple[float, float]:
    """(τ, gain): τ from fit_threshold; where even τ = 0 leaves budget unspent (everyone explored,
    most with few extra passes), the largest gain whose cost stays within the budget."""
    ascending, single = _window(np.sort(uncertainty))
    threshold, gain = fit_sorted(ascending, budget, max_extra, BOUNDARY_SLACK, single)
    return float(threshold), float(gain)


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
        self.recent = np.zeros(0)  # the window's uncertainties (see _remember)
        self.filled = self.head = 0
        self.since_refit = 0
        self.scored, self.spent = 0, 0.0

    def fit(self, uncertainty: np.ndarray) -> None:
        """τ from the validation split's uncertainties; they also seed the window."""
        self.threshold, self.gain = fit_allocation(uncertainty, self.budget, self.max_extra)
        self.valid_cost = float(1 + self.extra(uncertainty).mean())
        self.recent = np.zeros(self.window, dtype=uncertainty.dtype)
        self.filled = self.head = 0
        self._remember(uncertainty)
        self.since_refit = 0
        self.scored, self.spent = 0, 0.0

    def allocate(self, uncertainty: np.ndarray) -> np.ndarray:
        """int [N]: extra passes for these rows (τ refitted first, when the window is on)."""
        if self.window:
            latest = self._remember(uncertainty)
            self.since_refit += len(uncertainty)
            if self.since_refit >= min(REFIT_ROWS, len(latest)):
                overspent = self.spent - self.budget * self.scored
                horizon = max(self.window, len(uncertainty))  # a big batch repays at once
                aim = min(max(self.budget - overspent / horizon, 1.0), 1.0 + self.max_extra)
                self.threshold, self.gain = fit_allocation(latest, aim, self.max_extra)
                self.since_refit = 0
        extra, granted = _extra_paths(uncertainty, self.threshold, self.max_extra, self.gain)
        if self.shuffle is not None:
            extra = extra[torch.randperm(len(extra), generator=self.shuffle).numpy()]
        self.scored += len(extra)
        self.spent += float(len(extra) + granted)
        return extra

    def _remember(self, uncertainty: np.ndarray) -> np.ndarray:
        """Add rows to the window and return what a refit now sees: the last max(window, N)
        uncertainties, these included. The window is a ring (`recent`: its first `filled`
        entries, the next write at `head`), in no particular order, as a refit sorts it: a
        served row no longer copies the whole window (~4,096 values) to append itself."""
        if uncertainty.dtype != self.recent.dtype:  # as a concatenation would promote
            self.recent = self.recent.astype(np.result_type(self.recent, uncertainty))
        rows = len(uncertainty)
        if rows >= self.window:
            self.recent[:] = uncertainty[rows - self.window:]
            self.filled, self.head = self.window, 0
            return uncertainty
        stop = self.head + rows
        if stop <= self.window:
            self.recent[self.head:stop] = uncertainty
        else:
            wrap = self.window - self.head
            self.recent[self.head:] = uncertainty[:wrap]
            self.recent[:rows - wrap] = uncertainty[wrap:]
        self.head = stop % self.window
        self.filled = min(self.filled + rows, self.window)
        return self.recent[:self.filled]

    def extra(self, uncertainty: np.ndarray) -> np.ndarray:
        return extra_paths(uncertainty, self.threshold, self.max_extra, self.gain)
