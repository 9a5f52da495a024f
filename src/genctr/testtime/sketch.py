"""Frequency counting in bounded memory: 64-bit keys, a count-min sketch, exact heavy hitters.

Keys are 64-bit hashes of (combination id, token values), computed for whole columns at once
(`combine`). Counts go to a count-min sketch (every key) and a table of heavy hitters (the K
most frequent keys, counted exactly from the moment they enter the table). Together they give,
for any key, an upper bound that always holds (also the point estimate) and a count-mean-min
lower bound that holds with high probability; both are the exact count for a heavy hitter.
"""

from __future__ import annotations

import math

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective, well-mixed hash of uint64 values (vectorised)."""
    x = np.asarray(x, dtype=np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def combine(combination: int, columns: list[np.ndarray]) -> np.ndarray:
    """uint64 [N] keys of a combination's token columns (each int [N]); order matters."""
    n = len(columns[0])
    key = mix64(np.full(n, combination + 1, dtype=np.uint64) * _GOLDEN)
    for column in columns:
        key = mix64(key ^ (column.astype(np.int64).astype(np.uint64) + _GOLDEN))
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
        self._row_seeds = mix64(np.arange(1, depth + 1, dtype=np.uint64)
                                + np.full(depth, seed, dtype=np.uint64) * _GOLDEN)

    def _columns(self, keys: np.ndarray) -> np.ndarray:
        """int64 [depth, N]: the counter each key hits in each row."""
        hashed = mix64(keys[None, :] ^ self._row_seeds[:, None])
        return (hashed & np.uint64(self.width - 1)).astype(np.int64)

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add counts [N] to keys [N] (keys may repeat)."""
        columns = self._columns(keys)
        for row in range(self.depth):
            np.add.at(self.table[row], columns[row], counts)
        self.total += int(counts.sum())

    def bounds(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower, estimate, upper) int64 [N] from one lookup of the keys' counters.

        upper (also the point estimate): the smallest counter, never below the true count.
        lower: count-mean-min, each row's counter minus that row's expected collision noise
        (N - counter)/(width - 1), the median over rows, clipped to [0, upper]. It is a
        probabilistic bound: on skewed streams the mean noise overstates a typical counter's,
        so it rarely exceeds the true count (tests/test_testtime.py measures how rarely).
        """
        counters = self.table[np.arange(self.depth)[:, None], self._columns(keys)]
        upper = counters.min(axis=0)
        noise = (self.total - counters) / (self.width - 1)
        lower = np.rint(np.median(counters - noise, axis=0)).astype(np.int64)
        return np.clip(lower, 0, upper), upper, upper

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

    A key entering after the first chunk carries the sketch's bounds for what it had before
    (`prior_lower`, `prior_upper`), so its bounds stay valid; a key present from the first
    chunk on (the usual heavy hitter) has lower == upper == its exact count.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys = np.zeros(0, dtype=np.uint64)  # sorted
        self.counts = np.zeros(0, dtype=np.int64)
        self.prior_lower = np.zeros(0, dtype=np.int64)
        self.prior_upper = np.zeros(0, dtype=np.int64)
        self.evicted = False  # False: the table holds every key seen, so a missing key has count 0

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found bool [N], position int [N]) of keys in the table."""
        position = np.searchsorted(self.keys, keys)
        position = np.minimum(position, max(len(self.keys) - 1, 0))
        found = (self.keys[position] == keys) if len(self.keys) else np.zeros(len(keys), bool)
        return found, position

    def update(self, keys: np.ndarray, counts: np.ndarray, sketch: CountMinSketch) -> None:
        """Add a chunk's unique keys and counts; call before adding the chunk to `sketch`."""
        found, position = self.find(keys)
        self.counts[position[found]] += counts[found]
        new = ~found
        new_keys = keys[new]
        lower, _, upper = sketch.bounds(new_keys)
        all_keys = np.concatenate([self.keys, new_keys])
        all_counts = np.concatenate([self.counts, counts[new]])
        all_lower = np.concatenate([self.prior_lower, lower])
        all_upper = np.concatenate([self.prior_upper, upper])
        if len(all_keys) > self.capacity:
            keep = np.argpartition(-(all_counts + all_lower), self.capacity - 1)[: self.capacity]
            self.evicted = True
        else:
            keep = np.arange(len(all_keys))
        order = keep[np.argsort(all_keys[keep])]
        self.keys, self.counts = all_keys[order], all_counts[order]
        self.prior_lower, self.prior_upper = all_lower[order], all_upper[order]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.counts, self.prior_lower, self.prior_upper))


class FrequencyCounter:
    """One order's counter: sketch + heavy hitters, with bounds and a point estimate per key."""

    def __init__(self, depth: int, width: int, heavy_hitters: int, seed: int = 0) -> None:
        self.sketch = CountMinSketch(depth, width, seed)
        self.heavy = HeavyHitters(heavy_hitters)

    def add(self, keys: np.ndarray) -> None:
        """Count a chunk of keys (one per occurrence)."""
        unique, counts = np.unique(keys, return_counts=True)
        counts = counts.astype(np.int64)
        self.heavy.update(unique, counts, self.sketch)
        self.sketch.add(unique, counts)

    def bounds(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower, estimate, upper) int64 [N]."""
        lower, estimate, upper = self.sketch.bounds(keys)
        found, position = self.heavy.find(keys)
        if not self.heavy.evicted:  # the table holds every key seen: the rest were never seen
            lower[~found], estimate[~found], upper[~found] = 0, 0, 0
        if found.any():
            at = position[found]
            exact = self.heavy.counts[at]
            lower[found] = np.maximum(lower[found], exact + self.heavy.prior_lower[at])
            upper[found] = np.minimum(upper[found], exact + self.heavy.prior_upper[at])
            estimate[found] = upper[found]
        return np.minimum(lower, upper), estimate, upper

    def merge(self, other: "FrequencyCounter") -> None:
        """Sum another shard's counts: the sketch merges exactly; heavy-hitter tables merge into
        valid bounds (exact where both shards hold the key, or a shard never saw it)."""
        mine, theirs = self.heavy, other.heavy
        union = np.union1d(mine.keys, theirs.keys)
        parts = []
        for table, sketch in ((mine, self.sketch), (theirs, other.sketch)):
            found, position = table.find(union)
            at = position[found]
            count = np.zeros(len(union), np.int64)
            if table.evicted:  # a key the shard does not hold: what its sketch says
                lower, _, upper = sketch.bounds(union)
            else:  # the shard never saw it
                lower, upper = np.zeros(len(union), np.int64), np.zeros(len(union), np.int64)
            count[found] = table.counts[at]
            lower[found], upper[found] = table.prior_lower[at], table.prior_upper[at]
            parts.append((count, lower, upper))
        count = parts[0][0] + parts[1][0]
        lower, upper = parts[0][1] + parts[1][1], parts[0][2] + parts[1][2]
        self.sketch.merge(other.sketch)
        capacity = max(mine.capacity, theirs.capacity)
        keep = (np.argpartition(-(count + lower), capacity - 1)[:capacity]
                if len(union) > capacity else np.arange(len(union)))
        keep.sort()
        mine.evicted = mine.evicted or theirs.evicted or len(union) > capacity
        mine.capacity = capacity
        mine.keys, mine.counts = union[keep], count[keep]
        mine.prior_lower, mine.prior_upper = lower[keep], upper[keep]

    @property
    def nbytes(self) -> int:
        return self.sketch.nbytes + self.heavy.nbytes
