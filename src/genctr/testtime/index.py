"""FrequencyIndex: how often each feature (order 1), field pair (order 2) and chosen triple
(order 3) occurred in training, estimated in one streaming pass with bounded memory.

A field's "value" is its token (the quantile-bin token for numerics); a multi field's value is
its set of tokens (e.g. the genre combination). Sequence fields are not indexed by default:
a whole behaviour sequence is almost always unique, so its count says nothing.
"""

from __future__ import annotations

import io
import json
import math
import time
from itertools import combinations
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from pydantic import Field

from genctr.data.batches import Batch
from genctr.data.encoded import EncodedSplit
from genctr.errors import ConfigError
from genctr.nn.embedding import FieldInfo
from genctr.schema import FieldKind, Strict
from genctr.testtime.kernels import key_slots, lookup_counts
from genctr.testtime.sketch import FrequencyCounter, combination_seed, combine_seeded

INDEX_FILE = "frequency_index.npz"
INDEX_FORMAT = 2  # 2: heavy hitters kept out of the sketch; files of another format are rebuilt
QUANTILES = np.linspace(0, 1, 101)
# estimates tabulated per token (order 1) and per token pair (order 2), smallest first, at most
# this many entries per order (8 MB of float64 each)
TOKEN_TABLE_TOKENS = 1 << 20


class TokenTable(NamedTuple):
    """One order's estimates, tabulated per token combination where the combination is small
    enough (FrequencyIndex._token_table), and where to find each row's entries."""

    tabled: np.ndarray  # combinations tabulated [T]
    tabled_columns: np.ndarray  # [T, order]: the value column of each one's member j
    strides: np.ndarray  # [T, order]: entry = offset + Σ token_j · stride_j
    offsets: np.ndarray  # [T]
    estimates: np.ndarray  # float64, every tabulated combination's entries, concatenated
    hashed: np.ndarray  # the other combinations [H]: hashed and counted per request
    hashed_seeds: np.ndarray  # their keys' seeds [H] (combination_seed)
    hashed_columns: np.ndarray  # [H, order]


class IndexOptions(Strict):
    """What is counted and how much memory the counters may take."""

    fields: list[str] | None = Field(None, description="indexed fields; default: all but sequences")
    order3: list[list[str]] | Literal["all"] = Field(
        default_factory=list, description="field triples counted at order 3 ('all': every one)")
    heavy_hitters: int = Field(100_000, ge=1, description="exactly counted keys per order")
    depth: int = Field(4, ge=1, le=16, description="count-min rows")
    width: int = Field(2 ** 18, ge=2, description="count-min columns (a power of two)")
    chunk_rows: int = Field(131_072, ge=1)
    sample_rows: int = Field(50_000, ge=1, description="training rows whose counts give the quantiles")
    seed: int = 0


Tokens = dict[str, np.ndarray]  # field -> int [N] or [N, L]: an EncodedSplit's or a Batch's


def tokens_of(source: EncodedSplit | Batch, rows: slice | np.ndarray | None = None,
              fields: list[str] | None = None) -> Tokens:
    """Token columns (all, or the named fields) of a split's rows or of a batch, as numpy."""
    names = fields if fields is not None else list(source.tokens)
    if isinstance(source, Batch):
        return {k: source.tokens[k].numpy() for k in names}
    rows = slice(0, len(source)) if rows is None else rows
    return {k: np.asarray(source.tokens[k][rows]) for k in names}


def field_value_column(tokens: np.ndarray) -> np.ndarray:
    """int64-like [N]: a field's value; a multi field's token set [N, L] hashed order-free.
    A served request's few sets are looked up in a memo of sets already hashed (a list field's
    sets are mostly a catalogue's: an item's genres), as hashing them takes L + 1 numpy passes."""
    if tokens.ndim == 1:
        return tokens
    if len(tokens) > MEMO_ROWS:
        return _hash_sets(tokens)
    sets = [tuple(row) for row in tokens.tolist()]
    known = [_SET_VALUES.get(one) for one in sets]
    if None not in known:
        return np.array(known, dtype=np.int64)
    hashed = _hash_sets(tokens)
    if len(_SET_VALUES) + len(sets) > MEMO_SETS:
        _SET_VALUES.clear()
    _SET_VALUES.update(zip(sets, hashed.tolist()))
    return hashed


def _hash_sets(tokens: np.ndarray) -> np.ndarray:
    ordered = np.sort(tokens, axis=1)  # a set: the same tokens in any order give one value
    return combine_seeded(_SET_SEED, [ordered[:, i] for i in range(ordered.shape[1])]).view(np.int64)


_SET_SEED = combination_seed(-1)  # a list field's token sets
MEMO_ROWS = 64  # batches up to this many rows look their sets up in the memo
MEMO_SETS = 1 << 16  # the memo starts over when it would hold more sets (~10 MB)
_SET_VALUES: dict[tuple[int, ...], int] = {}  # a token row (padding included) -> its set's value


class FrequencyIndex:
    """Counters per order; `frequencies(tokens)` gives each row's estimated counts."""

    def __init__(self, fields: list[FieldInfo], options: IndexOptions) -> None:
        self.options = options
        by_name = {f.name: f for f in fields}
        names = options.fields if options.fields is not None else [
            f.name for f in fields if f.kind is not FieldKind.sequence]
        for name in names:
            if name not in by_name:
                raise ConfigError(f"index.fields: unknown field '{name}' (fields: {', '.join(by_name)})")
        self.fields = [by_name[n] for n in names]
        self.names = list(names)
        self.all_fields = [f.name for f in fields]
        triples = (list(combinations(names, 3)) if options.order3 == "all"
                   else [tuple(t) for t in options.order3])
        for triple in triples:
            if len(triple) != 3 or any(n not in names for n in triple):
                raise ConfigError(f"index.order3: {list(triple)} is not three indexed fields ({names})")
        self.combos: dict[int, list[tuple[str, ...]]] = {
            1: [(n,) for n in names], 2: list(combinations(names, 2)), 3: triples}
        self.counters = {order: FrequencyCounter(options.depth, options.width, options.heavy_hitters,
                                                 options.seed + order)
                         for order, combos in self.combos.items() if combos}
        self.rows = 0
        self.sample_keys: dict[int, np.ndarray] = {}  # order -> uint64 [S, C] of sampled rows
        self.sample_weights = np.zeros(0)  # training rows each sampled row stands for
        self.reference_quantiles: dict[int, np.ndarray] = {}  # order -> [101] over all its combinations
        self.combination_quantiles: dict[int, np.ndarray] = {}  # order -> [C, 101], one per combination
        self.build_seconds = 0.0

    # ------------------------------------------------------------------ building
    def keys_of(self, tokens: Tokens) -> dict[int, np.ndarray]:
        """order -> uint64 [N, C] keys of every combination of that order."""
        values = self.value_columns(tokens)
        keys = {}
        for order, (seeds, columns) in self._combination_layout().items():
            # all combinations of an order at once: member j of each in column j
            keys[order] = combine_seeded(seeds, [values[:, column] for column in columns])
        return keys

    def value_columns(self, tokens: Tokens) -> np.ndarray:
        """int64 [N, C1]: each indexed field's value (token, or a list field's hashed set)."""
        return np.stack([field_value_column(tokens[name]) for name in self.names], axis=1)

    def _combination_layout(self) -> dict[int, tuple[np.ndarray, list[np.ndarray]]]:
        """order -> (its combinations' key seeds [C] (combination_seed of their ids), for each
        member j the indexed-field column of every combination's j-th member [C]); kept, as
        every scored batch asks."""
        if "_layout" not in self.__dict__:
            self._layout = {order: (combination_seed([self._combo_id(order, i) for i in range(len(combos))]),
                                    list(self.pair_members(order).T))
                            for order, combos in self.combos.items() if combos}
        return self._layout

    @staticmethod
    def _combo_id(order: int, i: int) -> int:
        return order * 1_000_000 + i

    @classmethod
    def build(cls, train: EncodedSplit, fields: list[FieldInfo],
              options: IndexOptions | None = None) -> "FrequencyIndex":
        """Count every row of a training split (or shard) in chunks of `chunk_rows`."""
        index = cls(fields, options or IndexOptions())
        started = time.perf_counter()
        step = index.options.chunk_rows
        for start in range(0, len(train), step):
            rows = slice(start, min(start + step, len(train)))
            for order, keys in index.keys_of(tokens_of(train, rows, index.names)).items():
                index.counters[order].add(keys.ravel())
        index.rows = len(train)
        rng = np.random.default_rng(index.options.seed)
        sample = np.sort(rng.choice(len(train), min(len(train), index.options.sample_rows),
                                    replace=False))
        index.sample_keys = index.keys_of(tokens_of(train, sample, index.names))
        index.sample_weights = np.full(len(sample), len(train) / max(len(sample), 1))
        index._fit_reference()
        index.build_seconds = time.perf_counter() - started
        return index

    def _fit_reference(self) -> None:
        """Per order, quantiles of the estimated count of a random training occurrence: pooled
        over the order's combinations, and per combination (e.g. per field at order 1)."""
        for order, keys in self.sample_keys.items():
            _, estimate, _ = self.count(order, keys.ravel())
            estimate = estimate.reshape(keys.shape).astype(np.float64)
            weights = np.repeat(self.sample_weights, keys.shape[1])
            self.reference_quantiles[order] = np.quantile(
                estimate.ravel(), QUANTILES, weights=weights, method="inverted_cdf")
            self.combination_quantiles[order] = np.stack([
                np.quantile(estimate[:, c], QUANTILES, weights=self.sample_weights, method="inverted_cdf")
                for c in range(keys.shape[1])])

    def merge(self, other: "FrequencyIndex") -> "FrequencyIndex":
        """Add another shard's index (same fields and options): counters sum, and the
        occurrence quantiles are re-estimated on both shards' samples."""
        if other.combos != self.combos or other.options != self.options:
            raise ConfigError("only indexes with the same fields and options merge")
        for order, counter in self.counters.items():
            counter.merge(other.counters[order])
        self.rows += other.rows
        self.__dict__.pop("_tables", None)  # the counts changed
        self.__dict__.pop("_slots", None)
        self.sample_keys = {order: np.concatenate([keys, other.sample_keys[order]])
                            for order, keys in self.sample_keys.items()}
        self.sample_weights = np.concatenate([self.sample_weights, other.sample_weights])
        self._fit_reference()
        self.build_seconds += other.build_seconds
        return self

    # ------------------------------------------------------------------ queries
    def count(self, order: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower, estimate, upper) counts of uint64 keys of the given order."""
        return self.counters[order].bounds(keys)

    def frequencies(self, tokens: Tokens) -> dict[int, np.ndarray]:
        """order -> float64 [N, C]: estimated training count of each row's combinations
        (C = indexed fields at order 1, their pairs at order 2, the chosen triples at 3)."""
        values = self.value_columns(tokens)
        return {order: self.order_frequencies(order, values) for order in self._combination_layout()}

    def order_frequencies(self, order: int, values: np.ndarray) -> np.ndarray:
        """float64 [N, C]: one order's estimated counts from the rows' value_columns. Orders 1
        and 2 read combinations of single-valued fields from per-token tables (`_token_table`):
        the same estimates, without a hash and eight scattered sketch reads per key; the
        others are hashed and looked up in the counter (compiled: kernels.lookup_counts)."""
        return lookup_counts(np.ascontiguousarray(values, dtype=np.int64), *self.lookup_tables(order))

    def lookup_tables(self, order: int) -> tuple:
        """kernels.lookup_counts' arguments after the values: the order's TokenTable and its
        counter's heavy-hitter table and sketch."""
        table, counter = self._token_table(order), self.counters[order]
        return (*table, self._heavy_slots(order), counter.heavy.counts, counter.heavy.prior_upper,
                counter.heavy.overflowed, counter.sketch.table, counter.sketch.row_seeds,
                counter.sketch.mask)

    def _heavy_slots(self, order: int) -> np.ndarray:
        """The order's heavy hitters as a hash table (kernels.key_slots, at most half full),
        built once from the final counters (a merge drops it, as the token tables)."""
        cache = self.__dict__.setdefault("_slots", {})
        if order in cache:
            return cache[order]
        keys = self.counters[order].heavy.keys
        slots = key_slots(keys, max(1, (2 * len(keys)).bit_length()))
        if self.rows:
            cache[order] = slots
        return slots

    def _token_table(self, order: int) -> TokenTable:
        """The order's TokenTable: combinations of single-valued fields, smallest first, up to
        TOKEN_TABLE_TOKENS entries, estimated once from the final counters (a merge drops
        them; orders above 2, and an index not counted yet, table none); a combination's entry
        is offset + Σ token_j · stride_j (row-major over its members' vocabularies)."""
        tables = self.__dict__.setdefault("_tables", {})
        if order in tables:
            return tables[order]
        seeds, members = self._combination_layout()[order][0], self.pair_members(order)
        sizes = [[self.fields[m].vocab_size for m in row] for row in members.tolist()]
        tabled, total = [], 0
        for c in sorted(range(len(seeds)), key=lambda c: math.prod(sizes[c])) if order <= 2 and self.rows else []:
            entries = math.prod(sizes[c])
            single_valued = not any(self.fields[m].is_list for m in members[c].tolist())
            if single_valued and total + entries <= TOKEN_TABLE_TOKENS:
                tabled.append(c)
                total += entries
        grids = [list(np.indices(sizes[c]).reshape(order, -1)) for c in tabled]  # every token tuple
        parts = [self.counters[order].estimate(combine_seeded(seeds[c:c + 1], grid))
                 for c, grid in zip(tabled, grids)]
        hashed = np.setdiff1d(np.arange(len(seeds)), tabled)
        table = TokenTable(
            np.array(tabled, dtype=np.int64), members[tabled],
            np.array([[math.prod(sizes[c][j + 1:]) for j in range(order)] for c in tabled],
                     dtype=np.int64).reshape(len(tabled), order),
            np.cumsum([0, *(math.prod(sizes[c]) for c in tabled)])[:-1].astype(np.int64),
            np.concatenate(parts).astype(np.float64) if parts else np.zeros(0),
            hashed, seeds[hashed], members[hashed])
        if self.rows:  # final counts (a merge drops the tables)
            tables[order] = table
        return table

    def field_positions(self) -> np.ndarray:
        """int [C1]: the position of each indexed field among all the model's fields (kept)."""
        if "_field_positions" not in self.__dict__:
            self._field_positions = np.array([self.all_fields.index(f.name) for f in self.fields])
        return self._field_positions

    def pair_members(self, order: int) -> np.ndarray:
        """int [C, order]: positions (among indexed fields) of each combination's members
        (kept: every served request that samples paths asks)."""
        cache = self.__dict__.setdefault("_pair_members", {})
        if order not in cache:
            combos = self.combos[order]
            cache[order] = np.array([[self.names.index(n) for n in c] for c in combos],
                                    dtype=np.int64).reshape(len(combos), order)
        return cache[order]

    def member_positions(self, order: int) -> np.ndarray:
        """int [C, order]: pair_members as positions among all the model's fields (kept)."""
        cache = self.__dict__.setdefault("_member_positions", {})
        if order not in cache:
            cache[order] = self.field_positions()[self.pair_members(order)]
        return cache[order]

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.counters.values())

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        tmp = Path(path).with_suffix(".tmp.npz")
        np.savez(tmp, **self._arrays())
        tmp.replace(path)

    def to_bytes(self) -> bytes:
        """The saved form in memory (to send an index between processes)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self._arrays())
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, fields: list[FieldInfo]) -> "FrequencyIndex":
        return cls._from_arrays(np.load(io.BytesIO(data), allow_pickle=False), fields)

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"meta": np.frombuffer(json.dumps({
            "format": INDEX_FORMAT, "options": self.options.model_dump(), "fields": [f.name for f in self.fields],
            "all_fields": self.all_fields, "rows": self.rows,
            "build_seconds": self.build_seconds}).encode(), dtype=np.uint8)}
        for order, counter in self.counters.items():
            arrays[f"o{order}_table"] = counter.sketch.table
            arrays[f"o{order}_total"] = np.array([counter.sketch.total])
            for name in ("keys", "counts", "prior_lower", "prior_upper"):
                arrays[f"o{order}_{name}"] = getattr(counter.heavy, name)
            arrays[f"o{order}_overflowed"] = np.array([counter.heavy.overflowed])
            arrays[f"o{order}_reference"] = self.reference_quantiles[order]
            arrays[f"o{order}_combination_reference"] = self.combination_quantiles[order]
            arrays[f"o{order}_sample"] = self.sample_keys[order]
        arrays["sample_weights"] = self.sample_weights
        return arrays

    @staticmethod
    def saved_with(path: str | Path, options: IndexOptions) -> bool:
        """Whether the file holds an index of this format built with these options."""
        meta = json.loads(bytes(np.load(path)["meta"]).decode())
        return meta.get("format") == INDEX_FORMAT and IndexOptions.model_validate(meta["options"]) == options

    @classmethod
    def load(cls, path: str | Path, fields: list[FieldInfo]) -> "FrequencyIndex":
        return cls._from_arrays(np.load(path, allow_pickle=False), fields)

    @classmethod
    def _from_arrays(cls, data, fields: list[FieldInfo]) -> "FrequencyIndex":
        meta = json.loads(bytes(data["meta"]).decode())
        index = cls(fields, IndexOptions.model_validate(meta["options"]))
        index.rows, index.build_seconds = meta["rows"], meta["build_seconds"]
        for order, counter in index.counters.items():
            counter.sketch.table = data[f"o{order}_table"].copy()
            counter.sketch.total = int(data[f"o{order}_total"][0])
            for name in ("keys", "counts", "prior_lower", "prior_upper"):
                setattr(counter.heavy, name, data[f"o{order}_{name}"].copy())
            counter.heavy.overflowed = bool(data[f"o{order}_overflowed"][0])
            index.reference_quantiles[order] = data[f"o{order}_reference"].copy()
            index.combination_quantiles[order] = data[f"o{order}_combination_reference"].copy()
            index.sample_keys[order] = data[f"o{order}_sample"].copy()
        index.sample_weights = data["sample_weights"].copy()
        return index


