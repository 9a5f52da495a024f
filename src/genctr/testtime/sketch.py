"""Frequency counting in bounded memory: 64-bit keys, a count-min sketch, exact heavy hitters.

Keys are 64-bit hashes of (combination id, token values), computed for whole columns at once
(`combine`). Two levels: a table of heavy hitters (the K most frequent keys, counted exactly
from the moment they enter it) above a count-min sketch that counts everything else. Together
they give, for any key, an upper bound that always holds (also the point estimate) and a lower
bound that holds with probability at least 1 − e^−depth; both are the exact count for a heavy
hitter held from its first occurrence.
"""

from __future__ import annotations

import math

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# the shifts as numpy scalars made once: built per call they cost half of a served request's hash
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective, well-mixed hash of uint64 values (vectorised)."""
    x = np.asarray(x, dtype=np.uint64)
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def combination_seed(combination: int | np.ndarray) -> np.ndarray:
    """uint64 [C]: the start of the keys of combination ids [C] (or of one id), before any
    token is mixed in (`combine_seeded`; an index keeps its combinations' seeds)."""
    ids = np.atleast_1d(np.asarray(combination, dtype=np.int64))
    return mix64((ids + 1).astype(np.uint64) * _GOLDEN)


def combine(combination: int | np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
    """uint64 keys of token columns; order matters. One combination id and columns int [N]
    give keys [N]; ids [C] and columns int [N, C] (member j of every combination in column
    j) give [N, C], the same keys as one call per combination in a few vectorised steps."""
    return combine_seeded(combination_seed(combination), columns)


def combine_seeded(seed: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
    """combine() from the combinations' seeds [C] (combination_seed)."""
    if not columns:
        return np.broadcast_to(seed, seed.shape).copy()
    key = seed
    for column in columns:
        key = mix64(key ^ (column.astype(np.uint64) + _GOLDEN))  # int -> uint64: modulo 2^64
    return key


class CountMinSketch:
    """depth x width counters; width is a power of two (hash -> column by masking).

    Linear: two sketches with the same shape and seed add up to the sketch of both streams.
    """

    def __init__(self, depth: int = 4, width: int = 2 ** 18, seed: int = 0) -> None:
        if width & (width - 1) or width < 2:
            raise ValueError(f"count-min width must be a power of two >= 2, got {width}")
        self.depth, self.width, self.seed = depth, width, seed
        self.table = np.zeros((depth, width), dtype=np.int64)
        self.total = 0
        self.mask = np.uint64(width - 1)
        self.row_seeds = mix64(np.arange(1, depth + 1, dtype=np.uint64)
                               + np.full(depth, seed, dtype=np.uint64) * _GOLDEN)

    def _columns(self, keys: np.ndarray) -> np.ndarray:
        """int64 [depth, N]: the counter each key hits in each row."""
        hashed = mix64(keys[None, :] ^ self.row_seeds[:, None])
        return (hashed & self.mask).astype(np.int64)

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add counts [N] to keys [N] (keys may repeat)."""
        columns = self._columns(keys)
        for row in range(self.depth):
            np.add.at(self.table[row], columns[row], counts)
        self.total += int(counts.sum())

    def bounds(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower, estimate, upper) int64 [N] from one lookup of the keys' counters.

        upper (also the estimate): the smallest counter, never below the true count. lower:
        upper − ⌈e·N/width⌉, below the true count with probability at least 1 − e^−depth.
        """
        upper = self.upper(keys)
        lower = np.maximum(upper - self.error_bound(), 0)
        return lower, upper.copy(), upper

    def upper(self, keys: np.ndarray) -> np.ndarray:
        """int64 [N]: the smallest of each key's counters (bounds()' upper bound and estimate)."""
        return self.table[np.arange(self.depth)[:, None], self._columns(keys)].min(axis=0)

    def count_mean_min(self, keys: np.ndarray) -> np.ndarray:
        """Count-mean-min: each row's counter minus that row's expected collision noise
        (N − counter)/(width − 1), the median over rows, clipped at 0. Measured, not used as a
        bound: with the heavy hitters outside the sketch it exceeds the true count for about a
        third of the keys of a narrow sketch (benchmarks/SKETCH.md)."""
        counters = self.table[np.arange(self.depth)[:, None], self._columns(keys)]
        noise = (self.total - counters) / (self.width - 1)
        return np.maximum(np.rint(np.median(counters - noise, axis=0)), 0).astype(np.int64)

    def error_bound(self) -> int:
        """ε·N with ε = e/width: the overcount exceeds it with probability <= e^-depth."""
        return math.ceil(math.e * self.total / self.width)

    def merge(self, other: "CountMinSketch") -> None:
        if (other.depth, other.width, other.seed) != (self.depth, self.width, self.seed):
            raise ValueError("only sketches with the same depth, width and seed merge")
        self.table += other.table
        self.total += other.total

    @property
    def nbytes(self) -> int:
        return self.table.nbytes


class HeavyHitters:
    """The K keys with the largest counts, counted exactly from the moment they entered.

    A key counted here is not counted in the sketch, so the sketch only carries the tail's mass
    (and with it far less collision noise). A key entering after the first chunk keeps the
    sketch's bounds for what it had before (`prior_lower`, `prior_upper`: those occurrences stay
    in the sketch); a key held from its first occurrence on has lower == upper == its exact
    count. A key that leaves the table hands its exact count to the sketch.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys = np.zeros(0, dtype=np.uint64)  # sorted
        self.counts = np.zeros(0, dtype=np.int64)
        self.prior_lower = np.zeros(0, dtype=np.int64)
        self.prior_upper = np.zeros(0, dtype=np.int64)
        self.overflowed = False  # False: the table holds every key seen, the sketch is empty

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found bool [N], position int [N]) of keys in the table."""
        position = np.searchsorted(self.keys, keys)
        position = np.minimum(position, max(len(self.keys) - 1, 0))
        found = (self.keys[position] == keys) if len(self.keys) else np.zeros(len(keys), bool)
        return found, position

    def update(self, keys: np.ndarray, counts: np.ndarray, sketch: CountMinSketch
               ) -> tuple[np.ndarray, np.ndarray]:
        """Count a chunk's unique keys; returns the (keys, counts) that go to the sketch: the
        chunk's keys left out of the table and the exact counts of keys it evicted."""
        found, position = self.find(keys)
        self.counts[position[found]] += counts[found]
        new = ~found
        lower, _, upper = sketch.bounds(keys[new])
        return self.keep_top(np.concatenate([self.keys, keys[new]]),
                              np.concatenate([self.counts, counts[new]]),
                              np.concatenate([self.prior_lower, lower]),
                              np.concatenate([self.prior_upper, upper]))

    def keep_top(self, keys: np.ndarray, counts: np.ndarray, lower: np.ndarray,
                  upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hold the `capacity` keys with the largest lower-bound totals; return the rest's
        (keys, exact counts) for the sketch."""
        if len(keys) > self.capacity:
            keep = np.argpartition(-(counts + lower), self.capacity - 1)[: self.capacity]
            dropped = np.ones(len(keys), dtype=bool)
            dropped[keep] = False
            self.overflowed = True
        else:
            keep, dropped = np.arange(len(keys)), np.zeros(len(keys), dtype=bool)
        order = keep[np.argsort(keys[keep])]
        self.keys, self.counts = keys[order], counts[order]
        self.prior_lower, self.prior_upper = lower[order], upper[order]
        return keys[dropped], counts[dropped]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.counts, self.prior_lower, self.prior_upper))


class FrequencyCounter:
    """One order's counter: exact heavy hitters over a count-min sketch of the tail."""

    def __init__(self, depth: int, width: int, heavy_hitters: int, seed: int = 0) -> None:
        self.sketch = CountMinSketch(depth, width, seed)
        self.heavy = HeavyHitters(heavy_hitters)

    def add(self, keys: np.ndarray) -> None:
        """Count a chunk of keys (one per occurrence)."""
        unique, counts = np.unique(keys, return_counts=True)
        self.sketch.add(*self.heavy.update(unique, counts.astype(np.int64), self.sketch))

    def estimate(self, keys: np.ndarray) -> np.ndarray:
        """int64 [N]: bounds()' estimate alone, in fewer steps (a served request's lookups):
        a counter that never overflowed holds every key seen and nothing in its sketch."""
        found, position = self.heavy.find(keys)
        if not self.heavy.overflowed:
            return np.where(found, self.heavy.counts[position], 0) if len(self.heavy.keys) \
                else np.zeros(len(keys), dtype=np.int64)
        upper = self.sketch.upper(keys)
        at = position[found]
        upper[found] = self.heavy.counts[at] + np.minimum(self.heavy.prior_upper[at], upper[found])
        return upper

    def bounds(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower, estimate, upper) int64 [N]."""
        lower, estimate, upper = self.sketch.bounds(keys)
        found, position = self.heavy.find(keys)
        if not self.heavy.overflowed:  # the table holds every key seen: the rest were never seen
            lower[~found], estimate[~found], upper[~found] = 0, 0, 0
        if found.any():  # exact since admission + what the sketch holds of the time before
            at = position[found]
            exact = self.heavy.counts[at]
            prior_upper = np.minimum(self.heavy.prior_upper[at], upper[found])
            prior_lower = np.minimum(self.heavy.prior_lower[at], prior_upper)
            lower[found], upper[found] = exact + prior_lower, exact + prior_upper
            estimate[found] = upper[found]
        return lower, estimate, upper

    def merge(self, other: "FrequencyCounter") -> None:
        """Sum another shard's counts: the sketches add up exactly; the heavy-hitter tables merge
        into one (exact where each shard held the key or never saw it), and the keys that do
        not fit hand their exact counts to the merged sketch."""
        union = np.union1d(self.heavy.keys, other.heavy.keys)
        count = np.zeros(len(union), np.int64)
        lower, upper = np.zeros(len(union), np.int64), np.zeros(len(union), np.int64)
        for table, sketch in ((self.heavy, self.sketch), (other.heavy, other.sketch)):
            found, position = table.find(union)
            at = position[found]
            if table.overflowed:  # a key the shard does not hold: all of it is in its sketch
                shard_lower, _, shard_upper = sketch.bounds(union)
            else:
                shard_lower, shard_upper = np.zeros(len(union), np.int64), np.zeros(len(union), np.int64)
            shard_lower[found], shard_upper[found] = table.prior_lower[at], table.prior_upper[at]
            count[found] += table.counts[at]
            lower += shard_lower
            upper += shard_upper
        self.sketch.merge(other.sketch)
        self.heavy.capacity = max(self.heavy.capacity, other.heavy.capacity)
        self.heavy.overflowed = self.heavy.overflowed or other.heavy.overflowed
        self.sketch.add(*self.heavy.keep_top(union, count, lower, upper))

    @property
    def nbytes(self) -> int:
        return self.sketch.nbytes + self.heavy.nbytes
