"""Compiled loops (numba) of the test-time strategies' per-row work.

A served micro-batch holds a few rows; numpy's cost there is its call overhead (a microsecond
or more per operation, a few hundred operations per UTTSI batch), not the work. These loops do
the same arithmetic row by row, compiled once (cached beside this file), and are as fast as
the vectorised numpy on large batches, so each has one implementation for both.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@njit(cache=True, nogil=True, inline="always")
def _mix64(x: np.uint64) -> np.uint64:
    """genctr.testtime.sketch.mix64 of one value (every operand uint64: wraps modulo 2^64)."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(cache=True, nogil=True)
def key_slots(keys, bits):
    """int64 [2^bits, 2]: an open-addressing table of unique uint64 `keys`, slot = (key, its
    position in keys), position -1 where empty; a key probes linearly from its low bits (keys
    are mixed hashes already). A served lookup then reads one or two cache lines where a binary
    search over 100,000 heavy hitters read ~17 in a row (~35 µs of a served batch, cold)."""
    size = 1 << bits
    slots = np.full((size, 2), -1, dtype=np.int64)
    for position in range(len(keys)):
        slot = np.int64(keys[position] & np.uint64(size - 1))
        while slots[slot, 1] != -1:
            slot = (slot + 1) & (size - 1)
        slots[slot, 0] = np.int64(keys[position])
        slots[slot, 1] = position
    return slots


@njit(cache=True, nogil=True, inline="always")
def _slot_position(slots, key):
    """The position of `key` in the keys of key_slots' table, -1 if absent."""
    last = len(slots) - 1
    slot = np.int64(key & np.uint64(last))
    while slots[slot, 1] != -1:
        if np.uint64(slots[slot, 0]) == key:
            return slots[slot, 1]
        slot = (slot + 1) & last
    return -1


@njit(cache=True, nogil=True)
def lookup_counts(values, tabled, tabled_columns, tabled_strides, offsets, estimates,
                  hashed, hashed_seeds, hashed_columns, heavy_slots, heavy_counts,
                  heavy_prior_upper, overflowed, sketch, row_seeds, mask):
    """float64 [N, C]: FrequencyIndex._tabled_counts, row by row. values int64 [N, C1];
    per tabulated combination t (its column tabled[t]) the members' value columns
    tabled_columns[t] and strides, entry offsets[t] + Σ value·stride of `estimates`; per hashed
    combination h (column hashed[h]) its key seed and members' columns, the key looked up as
    FrequencyCounter.estimate does (exact heavy hitters over the count-min sketch), the heavy
    hitters found through their `heavy_slots` (key_slots)."""
    rows = values.shape[0]
    counts = np.empty((rows, len(tabled) + len(hashed)), dtype=np.float64)
    depth = sketch.shape[0]
    for row in range(rows):
        for t in range(len(tabled)):
            entry = offsets[t]
            for member in range(tabled_columns.shape[1]):
                entry += values[row, tabled_columns[t, member]] * tabled_strides[t, member]
            counts[row, tabled[t]] = estimates[entry]
        for h in range(len(hashed)):
            key = hashed_seeds[h]
            for member in range(hashed_columns.shape[1]):
                key = _mix64(key ^ (np.uint64(values[row, hashed_columns[h, member]]) + _GOLDEN))
            position = _slot_position(heavy_slots, key)
            found = position >= 0
            if not overflowed:  # the table holds every key seen; the sketch is empty
                counts[row, hashed[h]] = heavy_counts[position] if found else 0
                continue
            upper = sketch[0, np.int64(_mix64(key ^ row_seeds[0]) & mask)]
            for level in range(1, depth):
                upper = min(upper, sketch[level, np.int64(_mix64(key ^ row_seeds[level]) & mask)])
            if found:
                upper = heavy_counts[position] + min(heavy_prior_upper[position], upper)
            counts[row, hashed[h]] = upper
    return counts


@njit(cache=True, nogil=True)
def scaled_confidence(counts, denominators, trusted, logarithmic):
    """float32 [N, C]: the confidences of counts [N, C] (genctr.testtime.confidence), entry by
    entry: min(1, log(1 + n) / denominator) (n / denominator when not `logarithmic`) in float64,
    then float32; 1 for a `trusted` combination."""
    rows, columns = counts.shape
    out = np.empty((rows, columns), dtype=np.float32)
    for row in range(rows):
        for column in range(columns):
            if trusted[column]:
                out[row, column] = 1.0
                continue
            count = counts[row, column]
            value = (np.log1p(count) if logarithmic else count) / denominators[column]
            out[row, column] = min(value, 1.0)
    return out


@njit(cache=True, nogil=True)
def lookup_confidence(values, tabled, tabled_columns, tabled_strides, offsets, estimates,
                      hashed, hashed_seeds, hashed_columns, heavy_slots, heavy_counts,
                      heavy_prior_upper, overflowed, sketch, row_seeds, mask, denominators,
                      trusted, logarithmic):
    """float32 [N, C]: scaled_confidence of lookup_counts, in one call (a served batch's
    orders: one dispatch and no float64 array handed back in between)."""
    counts = lookup_counts(values, tabled, tabled_columns, tabled_strides, offsets, estimates,
                           hashed, hashed_seeds, hashed_columns, heavy_slots, heavy_counts,
                           heavy_prior_upper, overflowed, sketch, row_seeds, mask)
    return scaled_confidence(counts, denominators, trusted, logarithmic)


@njit(cache=True, nogil=True)
def keep_confident(draws, fields, base, rows):
    """bool [P, n, F], MATT's first step for the rows `rows` [n] of `fields` [B, F]: field f of
    path p of row i kept where draws[p, i, f] < fields[rows[i], f] and base[rows[i], f] (the
    fields dropped on every path) is false."""
    paths, picked, num_fields = draws.shape
    kept = np.empty((paths, picked, num_fields), dtype=np.bool_)
    for path in range(paths):
        for i in range(picked):
            row = rows[i]
            for f in range(num_fields):
                kept[path, i, f] = draws[path, i, f] < fields[row, f] and not base[row, f]
    return kept


@njit(cache=True, nogil=True)
def walk_combinations(kept, draws, combo_conf, fields, members, rows):
    """MATT's walk at one order, in place on kept bool [P, n, F] of the rows `rows` [n] of
    combo_conf and fields: path by path, row by row, combination by combination, a combination
    whose draw [P, n, C] is at least its confidence combo_conf[rows[i], c] and whose members
    (`members` [C, order], model fields) are all still kept drops its least confident member
    (by `fields` [B, F]; the first of equals)."""
    paths, picked, combinations = draws.shape
    order = members.shape[1]
    for path in range(paths):
        for i in range(picked):
            row = rows[i]
            for c in range(combinations):
                if draws[path, i, c] < combo_conf[row, c]:
                    continue
                weakest = members[c, 0]
                every = kept[path, i, weakest]
                for j in range(1, order):
                    field = members[c, j]
                    every = every and kept[path, i, field]
                    if fields[row, field] < fields[row, weakest]:
                        weakest = field
                if every:
                    kept[path, i, weakest] = False


@njit(cache=True, nogil=True)
def aggregate_paths(first, sampled, path_of, member, paths, temperature, mix):
    """float32 [n]: UTTSI's consistency aggregation (see UTTSI._aggregate), instance by
    instance, in float64: its filtered probability first[i] and its paths' probabilities
    (sampled[e] is path path_of[e] of instance member[e]), each weighted by
    exp(-|p - median| / temperature), the median the lower middle one of its 1 + K values."""
    rows = len(first)
    table = np.zeros((rows, paths.max() + 1), dtype=np.float64)
    for row in range(rows):
        table[row, 0] = first[row]
    for e in range(len(sampled)):
        table[member[e], path_of[e] + 1] = sampled[e]
    out = np.empty(rows, dtype=np.float32)
    for row in range(rows):
        values = table[row, :paths[row] + 1]
        median = np.sort(values)[paths[row] // 2]
        weighted, total = 0.0, 0.0
        for value in values:
            weight = np.exp(-abs(value - median) / temperature)
            weighted += weight * value
            total += weight
        out[row] = mix * weighted / total + (1 - mix) * first[row]
    return out


@njit(cache=True, nogil=True, inline="always")
def _past_level(value, threshold, level, slope, span, single):
    """Whether an uncertainty gets more than `level` extra paths: budget.extra_paths' own
    expression, in float32 for a float32 window (numpy casts the Python scalars to it)."""
    if single:
        v, t = np.float32(value), np.float32(threshold)
        if level == 0:
            return v >= t
        return np.float32(slope) * (v - t) / np.float32(span) > level
    if level == 0:
        return value >= threshold
    return slope * (value - threshold) / span > level


@njit(cache=True, nogil=True)
def extra_paths(uncertainty, threshold, max_extra, gain, single):
    """int64 [N]: budget.extra_paths row by row, K = ceil(g·M·(u − τ)/(1 − τ)) clipped to
    1..M where u ≥ τ, else 0, in float32 for a float32 `uncertainty` (as numpy computes the
    expression with Python scalars), and its sum."""
    rows = len(uncertainty)
    out = np.zeros(rows, dtype=np.int64)
    span = max(1.0 - threshold, 1e-9)
    slope = gain * max_extra
    total = 0
    for row in range(rows):
        if single:
            v, t = np.float32(uncertainty[row]), np.float32(threshold)
            if not v >= t:
                continue
            paths = np.ceil(np.float32(slope) * (v - t) / np.float32(span))
        else:
            v, t = uncertainty[row], threshold
            if not v >= t:
                continue
            paths = np.ceil(slope * (v - t) / span)
        out[row] = np.int64(min(max(paths, 1.0), max_extra))
        total += out[row]
    return out, total


@njit(cache=True, nogil=True)
def mean_cost(ascending, threshold, max_extra, gain, slack, single):
    """1 + mean K(u; τ) over uncertainties sorted ascending (see budget._mean_cost): per level
    a suffix found by binary search, rows within `slack` of its boundary decided one by one."""
    rows = len(ascending)
    if rows == 0:
        return 1.0
    span = max(1.0 - threshold, 1e-9)
    slope = gain * max_extra
    total = 0
    for level in range(max_extra):
        boundary = threshold + level * span / slope  # level 0: the threshold itself
        first = np.searchsorted(ascending, boundary - slack)
        if first == rows:
            break  # past every row: so are the higher levels' boundaries
        last = np.searchsorted(ascending, boundary + slack, side="right")
        total += rows - last
        for position in range(first, last):
            if _past_level(ascending[position], threshold, level, slope, span, single):
                total += 1
    return 1 + total / rows


@njit(cache=True, nogil=True)
def fit_sorted(ascending, budget, max_extra, slack, single):
    """(τ, gain) of budget.fit_allocation over uncertainties sorted ascending: the lowest τ
    whose cost stays within the budget, by 40 bisection steps (inf: none); where τ = 0 leaves
    budget unspent, the largest gain whose cost at τ = 0 stays within it."""
    rows = len(ascending)
    if budget < 1 + 1 / max(rows, 1):
        return np.inf, 1.0
    spent_at_zero = mean_cost(ascending, 0.0, max_extra, 1.0, slack, single)
    if spent_at_zero > budget:
        low, high = 0.0, ascending[-1] + 1e-6  # cost(high) == 1
        for _ in range(40):
            middle = (low + high) / 2
            if mean_cost(ascending, middle, max_extra, 1.0, slack, single) <= budget:
                high = middle
            else:
                low = middle
        return high, 1.0
    if rows == 0 or spent_at_zero >= budget:
        return 0.0, 1.0
    first_positive = np.searchsorted(ascending, 0.0, side="right")
    low, high = 1.0, 1.0
    if first_positive < rows:
        high = 1.0 / max(ascending[first_positive] * 1.0, 1e-9)
    for _ in range(40):
        middle = (low + high) / 2
        if mean_cost(ascending, 0.0, max_extra, middle, slack, single) <= budget:
            low = middle
        else:
            high = middle
    return 0.0, low
