"""Out-of-core encoding: fit the encoder and encode every split chunk by chunk, writing the
columns straight into .npy files (memory-mapped when loaded), so that peak memory follows the chunk size
and the vocabularies, not the row count.

The result is the same cache entry layout as an in-memory encode (EncodedSplit.save), and the
same tokens: vocabularies come from exact value counts merged over chunks, numeric mean and
standard deviation from exact running sums. Quantile bin edges come from a seeded uniform sample
of at most `NUMERIC_SAMPLE` values per field (all values, so exactly the in-memory edges, when
the train split is smaller).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import polars as pl

from genctr.data.encode import (FeatureEncoder, FieldState, code_strings, count_values, field_column,
                                field_values, forget_hash_indexes, log_square_codes, parse_numeric,
                                transformed, vocab_state)
from genctr.data.raw import RawDataset
from genctr.errors import DataError
from genctr.schema import FieldKind, FieldSpec, Schema

NUMERIC_SAMPLE = 2_000_000  # values per numeric field kept to place quantile bin edges
PENDING_ROWS = 8_000_000  # unmerged count rows over all fields that trigger merging the largest

Chunks = Callable[[], Iterator[pl.DataFrame]]  # a fresh pass over one split's rows


@dataclass
class _ValueCounter:
    """Exact occurrences per value over chunks: the merged counts so far, and the chunks'
    counts not merged into them yet."""

    merged: pl.DataFrame | None = None
    pending: list[pl.DataFrame] = field(default_factory=list)
    pending_rows: int = 0

    def add(self, values: pl.Series) -> None:
        counted = count_values(values)
        self.pending.append(counted)
        self.pending_rows += counted.height

    def merge(self) -> None:
        self.merged = self.total()
        self.pending, self.pending_rows = [], 0

    def total(self) -> pl.DataFrame:
        parts = ([] if self.merged is None else [self.merged]) + self.pending
        if not parts:
            return pl.DataFrame({"value": [], "n": []}, schema={"value": pl.String, "n": pl.Int64})
        merged = pl.concat(parts, how="vertical_relaxed")
        return merged.group_by("value").agg(pl.col("n").sum())


def _bound_pending(counters: dict[str, _ValueCounter]) -> None:
    """Merge the fields with the most unmerged rows until all fields together hold at most
    PENDING_ROWS: memory stays near the vocabularies' size, whatever the number of fields."""
    while counters and sum(c.pending_rows for c in counters.values()) > PENDING_ROWS:
        max(counters.values(), key=lambda c: c.pending_rows).merge()


@dataclass
class _NumericStats:
    """Running count, mean and sum of squared deviations (Chan et al.'s merge) of the
    transformed values, and a seeded Bernoulli sample of the present raw values."""

    keep: float
    rng: np.random.Generator
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    sample: list[np.ndarray] = field(default_factory=list)

    def add(self, x: np.ndarray, spec: FieldSpec) -> None:
        t = transformed(np.where(np.isnan(x), spec.fill_value, x), spec)
        if t.size:
            n, mean = t.size, float(t.mean())
            m2 = float(((t - mean) ** 2).sum())
            delta, total = mean - self.mean, self.n + n
            self.mean += delta * n / total
            self.m2 += m2 + delta * delta * self.n * n / total
            self.n = total
        present = x[~np.isnan(x)]
        self.sample.append(present if self.keep >= 1 else present[self.rng.random(present.size) < self.keep])

    def state(self, spec: FieldSpec) -> FieldState:
        present = np.concatenate(self.sample) if self.sample else np.array([])
        qs = np.linspace(0, 1, spec.bins + 1)[1:-1]
        edges = np.unique(np.quantile(present, qs)) if present.size else np.array([])
        state = FieldState(edges=edges.tolist())
        if spec.transform == "standard" and self.n:
            state.mean, state.std = self.mean, float(np.sqrt(self.m2 / self.n)) or 1.0
        return state


def fit_streaming(schema: Schema, train: Chunks, train_rows: int) -> FeatureEncoder:
    """The encoder `FeatureEncoder.fit` would learn from the train rows, in one pass over chunks.
    Counts of quantile-binned numeric fields are left empty: `encode_streaming` fills them."""
    owners = [spec for spec in schema.fields if spec.share_vocab is None]
    counters = {spec.name: _ValueCounter() for spec in owners
                if spec.kind is not FieldKind.numeric or spec.binning == "log_square"}
    keep = min(1.0, NUMERIC_SAMPLE / max(train_rows, 1))
    stats = {spec.name: _NumericStats(keep, np.random.default_rng(0)) for spec in owners
             if spec.kind is FieldKind.numeric}
    seen = 0
    for chunk in train():
        raw, rows = RawDataset(schema, chunk, {}), np.arange(chunk.height)
        seen += chunk.height
        for spec in owners:
            column = field_column(chunk, spec, raw, rows)
            if spec.kind is FieldKind.numeric:
                x = parse_numeric(column, spec, raw, rows)
                stats[spec.name].add(x, spec)
                if spec.binning == "log_square":
                    counters[spec.name].add(code_strings(log_square_codes(x[~np.isnan(x)])))
            else:
                counters[spec.name].add(field_values(column, spec, raw, rows))
        _bound_pending(counters)
    if seen == 0:
        raise DataError(f"{schema.name}: the 'train' split is empty")
    encoder = FeatureEncoder(schema)
    for spec in owners:
        if spec.kind is FieldKind.numeric:
            state = stats[spec.name].state(spec)
            if spec.binning == "log_square":
                vocab = vocab_state(counters[spec.name].total(), spec)
                state.vocab, state.counts, state.edges = vocab.vocab, vocab.counts, None
        else:
            state = vocab_state(counters[spec.name].total(), spec)
        encoder.states[spec.name] = state
    for spec in schema.fields:
        if spec.share_vocab is not None:
            encoder.states[spec.name] = encoder.states[spec.share_vocab]
    return encoder


def encode_streaming(schema: Schema, splits: dict[str, tuple[Chunks, int]], folder: Path) -> FeatureEncoder:
    """Fit on the train split's chunks, then encode every split chunk by chunk into
    `folder/<split>/` (the EncodedSplit layout). `splits` maps a split name to (a pass over its
    chunks, its row count). Returns the encoder; the caller saves it (last, it marks the entry)."""
    if "train" not in splits:
        raise DataError(f"{schema.name}: streaming needs a 'train' split")
    binned = [s.name for s in schema.fields if s.kind is FieldKind.numeric
              and s.binning != "log_square" and s.share_vocab is None]
    segment_on_bins = [seg.name for seg in schema.segments if seg.field in binned]
    if segment_on_bins:
        raise DataError(f"{schema.name}: segments {segment_on_bins} are defined on quantile-binned "
                        "numeric fields, whose train counts are known only after encoding; "
                        "stream: false encodes them in memory")
    encoder = fit_streaming(schema, *splits["train"])
    try:
        for name, (chunks, rows) in splits.items():  # binned fields' counts: from the train rows
            bin_counts = _write_split(encoder, chunks, rows, folder / name, binned if name == "train" else [])
            for field_name, counts in bin_counts.items():
                encoder.states[field_name].counts = counts.astype(np.int64)
    finally:  # training, in the same process next, never looks up strings
        forget_hash_indexes()
    return encoder


def _write_split(encoder: FeatureEncoder, chunks: Chunks, rows: int, folder: Path,
                 count_fields: list[str]) -> dict[str, np.ndarray]:
    """Append a split's encoded chunks to pre-sized .npy column files (plain writes, not a
    memory map: written pages do not stay in the process); train occurrences per token of
    `count_fields`."""
    if rows == 0:
        raise DataError(f"{encoder.schema.name}: the '{folder.name}' split has no rows")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, BinaryIO] = {}
    counts = {name: np.zeros(encoder.vocab_size(name), dtype=np.int64) for name in count_fields}
    written = 0
    try:
        for chunk in chunks():
            encoded = encoder.encode_frame(chunk, RawDataset(encoder.schema, chunk, {}))
            parts = encoded.columns()
            if not files:
                files = {name: _open_npy(folder / f"{i}.npy", a.dtype, (rows, *a.shape[1:]))
                         for i, (name, a) in enumerate(parts.items())}
            written += len(encoded)
            if written > rows:
                raise DataError(f"{chunk['__file'][0]}: more rows than counted ({rows:,}); was "
                                "the file changed while it was encoded?")
            for name, array in parts.items():
                files[name].write(np.ascontiguousarray(array).tobytes())
            for name in count_fields:
                counts[name] += np.bincount(encoded.tokens[name], minlength=counts[name].size)
    finally:
        for handle in files.values():
            handle.close()
    if written != rows:
        raise DataError(f"{encoder.schema.name}: {written:,} rows of the '{folder.name}' split "
                        f"encoded but {rows:,} counted; was a file changed while it was encoded?")
    (folder / "columns.json").write_text(json.dumps(list(files)))
    return counts


def _open_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> BinaryIO:
    """A .npy file whose header announces `shape`; the caller appends the rows' bytes."""
    handle = path.open("wb")
    np.lib.format.write_array_header_1_0(
        handle, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    return handle
