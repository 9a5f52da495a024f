"""FeatureEncoder: fit vocabularies and bins on train only, then encode any rows.

Follows scikit-learn's contract: `fit` learns state from the training rows alone, `encode`
applies it, and the state round-trips through files: encoder.json (schema, bins, scaling) and
encoder.vocab.parquet beside it (every vocabulary with its train counts). Vocabularies stay
Arrow columns (polars Series), not Python lists: 2M eight-character values take about 8-16
bytes each as a polars string column and about 72 as Python strings in a list (issue 15).
Everything is vectorised with polars and numpy: there is no Python loop over rows. Token ids:
0 is padding, 1 is out-of-vocabulary (or a missing numeric), real values start at 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from genctr.data.encoded import EncodedSplit
from genctr.data.raw import RawDataset
from genctr.errors import DataError, notice
from genctr.schema import FIRST_VALUE, OOV, PAD, FieldKind, FieldSpec, Schema

STATE_VERSION = 2  # 2: vocabularies in encoder.vocab.parquet; 1 (JSON lists) is still read


@dataclass
class FieldState:
    """What `fit` learned for one field."""

    vocab: pl.Series | None = None  # String: the value of token id FIRST_VALUE + i
    counts: np.ndarray | None = None  # int64 train occurrences per token id (PAD, OOV, values...)
    edges: list[float] | None = None  # inner quantile edges of a numeric field
    mean: float = 0.0
    std: float = 1.0

    def same_as(self, other: "FieldState") -> bool:
        return (self.edges == other.edges and self.mean == other.mean and self.std == other.std
                and (self.vocab is None) == (other.vocab is None)
                and (self.vocab is None or self.vocab.equals(other.vocab))
                and np.array_equal(_or_empty(self.counts), _or_empty(other.counts)))

    @property
    def vocab_size(self) -> int:
        """Number of token ids, padding and OOV included."""
        if self.vocab is not None:
            return FIRST_VALUE + len(self.vocab)
        return FIRST_VALUE + len(self.edges or []) + 1


class FeatureEncoder:
    """Fits on the train split of a RawDataset and encodes any frame with the same columns."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.states: dict[str, FieldState] = {}

    # ----------------------------------------------------------------------------- fit
    def fit(self, raw: RawDataset, split: str = "train") -> "FeatureEncoder":
        rows = raw.splits[split]
        if len(rows) == 0:
            raise DataError(f"{raw.schema.name}: the '{split}' split is empty")
        frame = raw.frame[rows]
        self.states = {}
        for spec in self.schema.fields:
            if spec.share_vocab is not None:
                continue  # filled from the owner below
            column = field_column(frame, spec, raw, rows)
            if spec.kind is FieldKind.numeric:
                self.states[spec.name] = _fit_numeric(column, spec, raw, rows)
            else:
                self.states[spec.name] = _fit_vocab(field_values(column, spec, raw, rows), spec)
        for spec in self.schema.fields:
            if spec.share_vocab is not None:
                self.states[spec.name] = self.states[spec.share_vocab]
        return self

    # -------------------------------------------------------------------------- encode
    def encode(self, raw: RawDataset) -> dict[str, EncodedSplit]:
        """Encode every split; the frame is encoded once and each split is an index slice."""
        whole = self.encode_frame(raw.frame, raw, raw.sequence_refs)
        return {name: whole.take(rows) for name, rows in raw.splits.items()}

    def encode_frame(
        self,
        frame: pl.DataFrame,
        raw: RawDataset | None = None,
        sequence_refs: dict[str, np.ndarray] | None = None,
        with_label: bool = True,
    ) -> EncodedSplit:
        """Encode rows of a frame. `raw` only serves to name files and lines in errors."""
        if not self.states:
            raise RuntimeError("FeatureEncoder.encode_frame called before fit")
        raw = raw or RawDataset(self.schema, frame, {})
        rows = np.arange(frame.height)
        tokens: dict[str, np.ndarray] = {}
        values: dict[str, np.ndarray] = {}
        lengths: dict[str, np.ndarray] = {}
        for spec in self.schema.fields:
            state = self.states[spec.name]
            if spec.kind is FieldKind.numeric:
                value, token = _encode_numeric(field_column(frame, spec, raw, rows), spec, state, raw)
                values[spec.name], tokens[spec.name] = value, token
            elif sequence_refs and spec.name in sequence_refs:
                owner = tokens[spec.share_vocab] if spec.share_vocab in tokens else None
                if owner is None:
                    raise DataError(
                        f"field '{spec.name}': its shared field '{spec.share_vocab}' must come "
                        "earlier in the schema"
                    )
                tokens[spec.name], lengths[spec.name] = _gather_refs(owner, sequence_refs[spec.name])
            elif spec.is_list:
                lists = field_values(field_column(frame, spec, raw, rows), spec, raw, rows)
                tokens[spec.name], lengths[spec.name] = _encode_lists(lists, spec, state)
            else:
                tokens[spec.name] = _lookup(field_values(field_column(frame, spec, raw, rows), spec, raw, rows),
                                            state)
        label = (_encode_label(frame, raw) if with_label
                 else np.full(frame.height, np.nan, dtype=np.float32))
        segments = {
            seg.name: segment_mask(tokens[seg.field], self.states[seg.field], seg)
            for seg in self.schema.segments
        }
        group = _group_ids(frame, self.schema, raw) if self.schema.group else None
        return EncodedSplit(tokens, values, lengths, label, group, segments)

    # ----------------------------------------------------------------------- save/load
    def vocab_size(self, field: str) -> int:
        return self.states[field].vocab_size

    def train_counts(self, field: str) -> np.ndarray:
        """Train occurrences per token id (for frequency-weighted neutral embeddings)."""
        return _or_empty(self.states[field].counts)

    def same_state(self, other: "FeatureEncoder") -> bool:
        """Whether both encode every value to the same token (same schema, vocabularies, bins)."""
        return (self.schema == other.schema and self.states.keys() == other.states.keys()
                and all(state.same_as(other.states[name]) for name, state in self.states.items()))

    def save(self, path: str | Path) -> None:
        """encoder.json at `path` and the vocabularies beside it (written first: the JSON file
        marks a complete state)."""
        path = Path(path)
        owned = {name: state for name, state in self.states.items()
                 if self.schema.field(name).share_vocab is None and state.vocab is not None}
        parts = [pl.DataFrame({"field": pl.repeat(name, len(state.vocab), dtype=pl.String, eager=True),
                               "value": state.vocab,
                               "count": pl.Series(state.counts[FIRST_VALUE:], dtype=pl.Int64)})
                 for name, state in owned.items()]
        empty = pl.DataFrame(schema={"field": pl.String, "value": pl.String, "count": pl.Int64})
        pl.concat([empty, *parts]).write_parquet(vocab_file(path))
        path.write_text(json.dumps({"version": STATE_VERSION,
                                    "schema": self.schema.model_dump(mode="json", exclude_unset=True),
                                    "fields": _fields_meta(self)}))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureEncoder":
        path = Path(path)
        state = json.loads(path.read_text())
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise DataError(f"{path}: encoder state version {version} is not {STATE_VERSION}; "
                            "re-encode the data")
        encoder = cls(Schema.model_validate(state["schema"]))
        vocabularies = _read_vocabularies(path) if version == STATE_VERSION else {}
        for name, meta in state["fields"].items():
            encoder.states[name] = _field_state(path, name, meta, vocabularies)
        for spec in encoder.schema.fields:
            if spec.share_vocab is not None:
                encoder.states[spec.name] = encoder.states[spec.share_vocab]
        return encoder


def vocab_file(path: Path) -> Path:
    """encoder.vocab.parquet beside encoder.json."""
    return path.with_name(f"{path.stem}.vocab.parquet")


def _or_empty(counts: np.ndarray | list | None) -> np.ndarray:
    return np.asarray(counts if counts is not None else [], dtype=np.int64)


def _fields_meta(encoder: "FeatureEncoder") -> dict[str, dict[str, Any]]:
    """encoder.json's part of each owned field's state (the vocabulary's size, not its values)."""
    fields = {}
    for name, state in encoder.states.items():
        if encoder.schema.field(name).share_vocab is not None:
            continue
        meta: dict[str, Any] = {"edges": state.edges, "mean": state.mean, "std": state.std}
        if state.vocab is None:
            meta["counts"] = None if state.counts is None else _or_empty(state.counts).tolist()
        else:
            meta["vocab_size"] = len(state.vocab)
            meta["special_counts"] = _or_empty(state.counts)[:FIRST_VALUE].tolist()
        fields[name] = meta
    return fields


def _read_vocabularies(path: Path) -> dict[str, pl.DataFrame]:
    table_path = vocab_file(path)
    if not table_path.is_file():
        raise DataError(f"{table_path}: missing (the vocabularies of {path}); re-encode the data "
                        "or copy the file back beside it")
    table = pl.read_parquet(table_path)
    return {key[0]: part for key, part in table.partition_by("field", maintain_order=True,
                                                              as_dict=True).items()}


def _field_state(path: Path, name: str, meta: dict[str, Any],
                 vocabularies: dict[str, pl.DataFrame]) -> FieldState:
    """One field's state from encoder.json (version 2, vocabularies from the Parquet file;
    version 1 held them as JSON lists)."""
    state = FieldState(edges=meta.get("edges"), mean=meta.get("mean", 0.0), std=meta.get("std", 1.0))
    if "vocab_size" in meta:  # version 2
        part = vocabularies.get(name, pl.DataFrame({"value": [], "count": []},
                                                   schema={"value": pl.String, "count": pl.Int64}))
        if part.height != meta["vocab_size"]:
            raise DataError(f"{vocab_file(path)}: field '{name}' has {part.height} values, "
                            f"{path} says {meta['vocab_size']}; re-encode the data")
        state.vocab = part["value"]
        state.counts = np.concatenate([_or_empty(meta["special_counts"]), part["count"].to_numpy()])
    elif meta.get("vocab") is not None:  # version 1
        state.vocab = pl.Series("value", meta["vocab"], dtype=pl.String)
        state.counts = _or_empty(meta.get("counts"))
    elif meta.get("counts") is not None:
        state.counts = _or_empty(meta["counts"])
    return state


# --------------------------------------------------------------------------- helpers
def field_column(frame: pl.DataFrame, spec: FieldSpec, raw: RawDataset, rows: np.ndarray) -> pl.Series:
    name = spec.source_column
    if name not in frame.columns:
        visible = [c for c in frame.columns if not c.startswith("__")]
        where = raw.file_of(int(rows[0])) if len(rows) else raw.schema.name
        raise DataError(f"{where}: column '{name}' (field '{spec.name}') not found; "
                        f"columns are {visible}")
    return frame[name]


def field_values(column: pl.Series, spec: FieldSpec, raw: RawDataset, rows: np.ndarray) -> pl.Series:
    """Categorical values as strings; list fields as List[str]. A missing value becomes ''."""
    if spec.is_list:
        if column.dtype == pl.String:
            if spec.separator is None:
                raise DataError(f"field '{spec.name}': column '{spec.source_column}' holds text; "
                                "set 'separator' to split it into a list")
            column = column.fill_null("")
            sep = spec.separator
            malformed = (column.str.starts_with(sep) | column.str.ends_with(sep)
                         | column.str.contains(sep + sep, literal=True))
            if malformed.any():
                bad = np.flatnonzero(malformed.to_numpy())
                examples = column.gather(bad[:3]).to_list()
                raise DataError(
                    f"column '{spec.source_column}' (field '{spec.name}'): malformed list with an "
                    f"empty item (separator {sep!r}) at {raw.describe_rows(rows[bad])}; "
                    f"values {examples}"
                )
            # '' splits into [''], the only empty item left: it stands for the empty list
            return column.str.split(sep).list.eval(pl.element().filter(pl.element() != ""))
        if isinstance(column.dtype, pl.List):
            return column.cast(pl.List(pl.String)).fill_null([])
        raise DataError(f"column '{spec.source_column}' (field '{spec.name}'): expected text or a "
                        f"list, got {column.dtype}")
    return column.cast(pl.String).fill_null("")


def _fit_vocab(values: pl.Series, spec: FieldSpec) -> FieldState:
    return vocab_state(count_values(values), spec)


def count_values(values: pl.Series) -> pl.DataFrame:
    """Occurrences of each value (list fields: of each item) as a frame (value, n); frames of
    several chunks merge by summing n per value (genctr.data.stream)."""
    flat = values.explode().drop_nulls() if isinstance(values.dtype, pl.List) else values
    return flat.rename("value").value_counts(name="n").with_columns(pl.col("n").cast(pl.Int64))


def vocab_state(counted: pl.DataFrame, spec: FieldSpec) -> FieldState:
    """The vocabulary from value counts: most frequent first (ties by value), at least
    `min_count` occurrences, at most `max_vocab` values; the rest count as OOV."""
    counted = counted.sort(["n", "value"], descending=[True, False])
    kept = counted.filter(pl.col("n") >= spec.min_count)
    if spec.max_vocab is not None:
        kept = kept.head(spec.max_vocab)
    oov_count = int(counted["n"].sum() - kept["n"].sum())
    counts = np.concatenate([[0, oov_count], kept["n"].to_numpy()]).astype(np.int64)
    return FieldState(vocab=kept["value"].cast(pl.String).rename("value"), counts=counts)


SMALL_LOOKUP = 1024  # rows up to which a Python dict beats the hashed search (serving)
# vocabulary id -> (that vocabulary, what was built from it); beside the states, never saved
# with them. Indexes: value -> token id (a request's few rows). Hashes: the values' hashes
# sorted and the position of each, or None when two values share a hash; polars' replace_strict
# would rebuild its map over millions of values on every chunk of a streamed encode (0.7 s per
# chunk and field at 3M values; a sorted-hash search takes 0.15 s)
_VOCAB_INDEXES: dict[int, tuple[pl.Series, dict]] = {}
_VOCAB_HASHES: dict[int, tuple[pl.Series, tuple[np.ndarray, np.ndarray] | None]] = {}


def _vocab(state: FieldState) -> pl.Series:
    return state.vocab if state.vocab is not None else pl.Series("value", [], dtype=pl.String)


def _built_once(cache: dict, vocab: pl.Series, build: Callable[[pl.Series], Any]) -> Any:
    """build(vocab), kept in `cache` while this very vocabulary object is the one asked for."""
    cached = cache.get(id(vocab))
    if cached is None or cached[0] is not vocab:
        cached = cache[id(vocab)] = (vocab, build(vocab))
    return cached[1]


def vocab_index(state: FieldState) -> dict:
    """value -> token id, built once per vocabulary (a request's few rows look values up here)."""
    return _built_once(_VOCAB_INDEXES, _vocab(state),
                       lambda vocab: {v: FIRST_VALUE + i for i, v in enumerate(vocab.to_list())})


def _lookup(values: pl.Series, state: FieldState) -> np.ndarray:
    """Token ids of the values (OOV for unseen ones). A few rows (a served request) go through
    a cached dict; many through a search in the vocabulary's sorted hashes, each hit confirmed
    by comparing the strings (exact: a value whose hash matches another's stays OOV)."""
    if len(values) <= SMALL_LOOKUP:
        index = vocab_index(state)
        return np.fromiter((index.get(v, OOV) for v in values.to_list()), dtype=np.int32, count=len(values))
    vocab = _vocab(state)
    hashed = _built_once(_VOCAB_HASHES, vocab, _hash_index) if len(vocab) else None
    if hashed is None:
        ids = pl.Series(np.arange(FIRST_VALUE, FIRST_VALUE + len(vocab), dtype=np.int32))
        return values.replace_strict(vocab, ids, default=OOV, return_dtype=pl.Int32).to_numpy()
    sorted_hashes, positions = hashed
    hashes = hash_strings(values)
    at = np.minimum(np.searchsorted(sorted_hashes, hashes), len(sorted_hashes) - 1)
    position = positions[at]
    found = sorted_hashes[at] == hashes
    found &= (vocab.gather(position) == values.cast(pl.String)).fill_null(False).to_numpy()
    return np.where(found, position + FIRST_VALUE, OOV).astype(np.int32)


def hash_strings(values: pl.Series) -> np.ndarray:
    """uint64 hashes, the same for the same string within this process (never stored)."""
    return values.cast(pl.String).hash().to_numpy()


def forget_hash_indexes() -> None:
    """Free the cached hash indexes (12 bytes per vocabulary value) once a dataset is encoded."""
    _VOCAB_HASHES.clear()


def _hash_index(vocab: pl.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(the vocabulary's hashes sorted, the position of each), None if two values share one."""
    hashes = hash_strings(vocab)
    order = np.argsort(hashes).astype(np.int32)
    ordered = hashes[order]
    return None if np.any(ordered[1:] == ordered[:-1]) else (ordered, order)


def _encode_lists(lists: pl.Series, spec: FieldSpec, state: FieldState) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned [N, max_len] ids and lengths; multi keeps the first items, sequence the last."""
    cut = lists.list.tail(spec.max_len) if spec.kind is FieldKind.sequence else lists.list.head(spec.max_len)
    lengths = cut.list.len().to_numpy().astype(np.int32)
    flat_ids = _lookup(cut.explode(empty_as_null=False).drop_nulls(), state)
    out = np.full((len(lists), spec.max_len), PAD, dtype=np.int32)
    row = np.repeat(np.arange(len(lists)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    col = np.arange(len(row)) - np.repeat(starts, lengths)
    out[row, col] = flat_ids
    return out, lengths


def _gather_refs(owner_tokens: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    valid = refs >= 0
    out = np.where(valid, owner_tokens[np.where(valid, refs, 0)], PAD).astype(np.int32)
    return out, valid.sum(axis=1).astype(np.int32)


def parse_numeric(column: pl.Series, spec: FieldSpec, raw: RawDataset, rows: np.ndarray) -> np.ndarray:
    """Float64 values with NaN for missing; text that is not a number follows `on_invalid`."""
    if column.dtype == pl.String:
        text = column.str.strip_chars()
        parsed = text.cast(pl.Float64, strict=False)
        invalid = (parsed.is_null() & text.is_not_null() & (text != "")).to_numpy()
    elif column.dtype.is_numeric():
        text, parsed = column.cast(pl.String), column.cast(pl.Float64)
        invalid = np.zeros(len(column), dtype=bool)
    else:
        raise DataError(f"column '{spec.source_column}' (numeric field '{spec.name}'): expected "
                        f"numbers, got {column.dtype}")
    x = parsed.fill_null(np.nan).to_numpy().astype(np.float64)
    invalid |= np.isinf(x)  # 'inf' parses, but no bin, scale or embedding can use it
    if invalid.any():
        bad = np.flatnonzero(invalid)
        what = (f"column '{spec.source_column}' (numeric field '{spec.name}'): {invalid.sum()} "
                f"value(s) are not finite numbers, e.g. {text.gather(bad[:3]).to_list()} at "
                f"{raw.describe_rows(rows[bad])}")
        if spec.on_invalid == "error":
            raise DataError(f"{what}; fix them or set 'on_invalid: fill' to use fill_value")
        notice(f"{what}; treated as missing (on_invalid: fill, fill_value {spec.fill_value})")
        x[bad] = np.nan
    return x


def log_square_codes(x: np.ndarray) -> np.ndarray:
    """Criteo's winning-solution bucketing: floor(ln(x)^2) for x > 2, else the integer itself."""
    safe = np.where(x > 2, x, 3.0)
    return np.where(x > 2, np.floor(np.log(safe) ** 2), np.floor(x))


def transformed(x: np.ndarray, spec: FieldSpec) -> np.ndarray:
    if spec.transform == "log1p":  # signed, so negative counts stay finite
        return np.sign(x) * np.log1p(np.abs(x))
    return x


def _fit_numeric(column: pl.Series, spec: FieldSpec, raw: RawDataset, rows: np.ndarray) -> FieldState:
    x = parse_numeric(column, spec, raw, rows)
    present = x[~np.isnan(x)]
    if spec.binning == "log_square":
        state = _fit_vocab(code_strings(log_square_codes(present)), spec)
    else:
        qs = np.linspace(0, 1, spec.bins + 1)[1:-1]
        edges = np.unique(np.quantile(present, qs)) if present.size else np.array([])
        state = FieldState(edges=edges.tolist())
    t = transformed(np.where(np.isnan(x), spec.fill_value, x), spec)
    if spec.transform == "standard":
        state.mean, state.std = float(t.mean()), float(t.std() or 1.0)
    if state.vocab is None:
        tokens = bin_tokens(x, state)
        state.counts = np.bincount(tokens, minlength=state.vocab_size).astype(np.int64)
    return state


def code_strings(codes: np.ndarray) -> pl.Series:
    return pl.Series("code", codes.astype(np.int64)).cast(pl.String)


def bin_tokens(x: np.ndarray, state: FieldState) -> np.ndarray:
    bins = np.searchsorted(np.asarray(state.edges), x, side="right") + FIRST_VALUE
    return np.where(np.isnan(x), OOV, bins).astype(np.int32)


def _encode_numeric(column: pl.Series, spec: FieldSpec, state: FieldState,
                    raw: RawDataset) -> tuple[np.ndarray, np.ndarray]:
    x = parse_numeric(column, spec, raw, np.arange(len(column)))
    if spec.binning == "log_square":
        codes = code_strings(np.nan_to_num(log_square_codes(x)))
        return numeric_columns(x, _lookup(codes, state), spec, state)
    return numeric_columns(x, bin_tokens(x, state), spec, state)


def numeric_columns(x: np.ndarray, tokens: np.ndarray, spec: FieldSpec,
                    state: FieldState) -> tuple[np.ndarray, np.ndarray]:
    """(scaled values, tokens) of parsed numbers x (NaN: missing, its token OOV); `tokens` are
    the bins or the log-square codes' ids."""
    tokens = np.where(np.isnan(x), OOV, tokens).astype(np.int32)
    value = transformed(np.where(np.isnan(x), spec.fill_value, x), spec)
    if spec.transform == "standard":
        value = (value - state.mean) / state.std
    return value.astype(np.float32), tokens


def _encode_label(frame: pl.DataFrame, raw: RawDataset) -> np.ndarray:
    spec = raw.schema.label
    if spec.column not in frame.columns:
        raise DataError(f"{raw.schema.name}: label column '{spec.column}' not found; columns are "
                        f"{[c for c in frame.columns if not c.startswith('__')]}")
    column = frame[spec.column]
    text = column.cast(pl.String).str.strip_chars()
    x = text.cast(pl.Float64, strict=False).to_numpy()
    rows = np.arange(frame.height)
    bad = np.flatnonzero(np.isnan(x))
    if bad.size:
        raise DataError(f"label column '{spec.column}': {bad.size} value(s) missing or not numbers, "
                        f"e.g. {text.gather(bad[:3]).to_list()} at {raw.describe_rows(rows[bad])}")
    comparison = spec.comparison()
    if comparison is not None:
        op, threshold = comparison
        return op(x, threshold).astype(np.float32)
    bad = np.flatnonzero((x != 0) & (x != 1))
    if bad.size:
        raise DataError(f"label column '{spec.column}': {bad.size} value(s) outside {{0, 1}}, e.g. "
                        f"{text.gather(bad[:3]).to_list()} at {raw.describe_rows(rows[bad])}; "
                        "give the label a 'rule' such as '>= 4' to derive 0/1")
    return x.astype(np.float32)


def _group_ids(frame: pl.DataFrame, schema: Schema, raw: RawDataset) -> np.ndarray:
    """int64 [N]: a hash of each row's raw group value (the user). Not its token: every user
    unseen in train shares the OOV token, and gAUC would pool them all into one group."""
    spec = schema.field(schema.group)  # type: ignore[arg-type]
    column = field_column(frame, spec, raw, np.arange(frame.height))
    text = column.cast(pl.String) if not isinstance(column.dtype, pl.List) else column.list.join(" ")
    return text.fill_null("").hash(seed=0).to_numpy().view(np.int64)


def segment_mask(tokens: np.ndarray, state: FieldState, seg) -> np.ndarray:
    """Rows whose value occurred in train between the segment's bounds (OOV counts as 0)."""
    counts = np.asarray(state.counts, dtype=np.int64).copy()
    counts[:FIRST_VALUE] = 0
    n = counts[tokens]
    upper = seg.max_train_rows if seg.max_train_rows is not None else np.iinfo(np.int64).max
    return (n >= seg.min_train_rows) & (n <= upper)
