"""A few rows encoded in plain Python: the served request's path.

`FeatureEncoder.encode_frame` is vectorised with polars, and each polars call costs about
0.1-0.2 ms whatever the size of its input: a one-row request paid ~28 of them (5 ms on ml1m-ctr)
for less than a microsecond of work each. Here the same tokens, values and lengths are computed
with dict lookups and numpy on a frame of at most FAST_ROWS text rows. Only the ordinary case is
handled: anything the full encoder would refuse or treat specially (a non-text column, text that
is not a plain decimal number, a malformed list, a missing column, a label) goes to
`encode_frame`, which raises its usual error naming the field and row. tests/test_encode.py
checks that both paths give the same columns.
"""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl

from genctr.data.encode import (FeatureEncoder, bin_tokens, log_square_codes, numeric_columns,
                                segment_mask, vocab_index)
from genctr.data.encoded import EncodedSplit
from genctr.schema import OOV, PAD, FieldKind, FieldSpec

FAST_ROWS = 256  # above this, polars' fixed cost per call is spread over enough rows
# the numbers Python's float() and polars' cast read alike; anything else takes the full path
PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class _Unusual(Exception):
    """A value the fast path leaves to the full encoder."""


def encode_rows(encoder: FeatureEncoder, frame: pl.DataFrame) -> EncodedSplit:
    """`encoder.encode_frame(frame, with_label=False)`, in plain Python for small text frames,
    without group ids: they serve gAUC only, and rows without labels have no metrics."""
    if frame.height <= FAST_ROWS:
        try:
            return _encode_small(encoder, frame)
        except _Unusual:
            pass
    return encoder.encode_frame(frame, with_label=False)


def _encode_small(encoder: FeatureEncoder, frame: pl.DataFrame) -> EncodedSplit:
    tokens: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    for spec in encoder.schema.fields:
        state = encoder.states[spec.name]
        column = _column(frame, spec)
        if spec.kind is FieldKind.numeric:
            x = np.array([_number(v) for v in column], dtype=np.float64)
            if spec.binning == "log_square":
                index = vocab_index(state)
                codes = np.nan_to_num(log_square_codes(x)).astype(np.int64)
                ids = np.array([index.get(str(c), OOV) for c in codes.tolist()], dtype=np.int32)
            else:
                ids = bin_tokens(x, state)
            values[spec.name], tokens[spec.name] = numeric_columns(x, ids, spec, state)
        elif spec.is_list:
            tokens[spec.name], lengths[spec.name] = _list_tokens(column, spec, vocab_index(state))
        else:
            index = vocab_index(state)
            tokens[spec.name] = np.array([index.get("" if v is None else v, OOV) for v in column],
                                         dtype=np.int32)
    label = np.full(frame.height, np.nan, dtype=np.float32)
    segments = {seg.name: segment_mask(tokens[seg.field], encoder.states[seg.field], seg)
                for seg in encoder.schema.segments}
    return EncodedSplit(tokens, values, lengths, label, None, segments)


def _column(frame: pl.DataFrame, spec: FieldSpec) -> list:
    if spec.source_column not in frame.columns:
        raise _Unusual
    series = frame.get_column(spec.source_column)
    expected = pl.List(pl.String) if spec.is_list and series.dtype != pl.String else pl.String
    if series.dtype != expected:
        raise _Unusual
    return series.to_list()


def _number(text: str | None) -> float:
    """NaN for a missing value; the number of plain decimal text."""
    if text is None:
        return math.nan
    text = text.strip()
    if text == "":
        return math.nan
    if not PLAIN_NUMBER.fullmatch(text):
        raise _Unusual
    x = float(text)
    if math.isinf(x):
        raise _Unusual
    return x


def _list_tokens(column: list, spec: FieldSpec, index: dict) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned [N, max_len] ids and lengths; multi keeps the first items, sequence the last."""
    out = np.full((len(column), spec.max_len), PAD, dtype=np.int32)
    lengths = np.zeros(len(column), dtype=np.int32)
    for row, items in enumerate(column):
        if items is None:
            items = []
        elif isinstance(items, str):  # text split by the field's separator, as from a CSV
            sep = spec.separator
            if sep is None or items.startswith(sep) or items.endswith(sep) or sep + sep in items:
                raise _Unusual
            items = items.split(sep) if items else []
        if any(item is None for item in items):
            raise _Unusual
        kept = items[-spec.max_len:] if spec.kind is FieldKind.sequence else items[:spec.max_len]
        out[row, :len(kept)] = [index.get(item, OOV) for item in kept]
        lengths[row] = len(kept)
    return out, lengths
