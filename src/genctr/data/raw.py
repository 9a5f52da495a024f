"""RawDataset: what every source produces, before any vocabulary is fitted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from genctr.schema import Schema

FILE_COLUMN = "__file"  # optional: which file a row came from, for error messages
LINE_COLUMN = "__line"  # optional: the row's 1-based line number in that file


@dataclass
class RawDataset:
    """All rows of all splits in one frame, plus each split's row indices.

    `sequence_refs` lets a source give a sequence field as row indices into `frame` (the rows
    whose shared-vocabulary column forms the sequence, -1 for padding, newest last) instead
    of a list of raw values: ML-1M histories reuse the item column without copying 20M strings.
    """

    schema: Schema
    frame: pl.DataFrame
    splits: dict[str, np.ndarray]
    sequence_refs: dict[str, np.ndarray] = field(default_factory=dict)

    def split_frame(self, split: str) -> pl.DataFrame:
        return self.frame[self.splits[split]]

    def file_of(self, row: int) -> str:
        """The file a row came from, or the dataset's name when the source did not record it."""
        if FILE_COLUMN in self.frame.columns and self.frame[FILE_COLUMN][row] is not None:
            return str(self.frame[FILE_COLUMN][row])
        return self.schema.name

    def describe_rows(self, rows: np.ndarray, limit: int = 5) -> str:
        return describe_rows(self.frame, rows, limit)


def describe_rows(frame: pl.DataFrame, rows: np.ndarray, limit: int = 5) -> str:
    """Name the first `limit` rows as 'file line N' when the source recorded it."""
    shown = [int(r) for r in rows[:limit]]
    if FILE_COLUMN in frame.columns and LINE_COLUMN in frame.columns:
        files = frame[FILE_COLUMN].gather(shown).to_list()
        lines = frame[LINE_COLUMN].gather(shown).to_list()
        parts = [f"{f} line {n}" for f, n in zip(files, lines)]
    else:
        parts = [f"row {r}" for r in shown]
    more = f" (and {len(rows) - limit} more)" if len(rows) > limit else ""
    return ", ".join(parts) + more


def with_origin(frame: pl.DataFrame, path: Path, header_lines: int = 1) -> pl.DataFrame:
    """Add the file name and line number of each row (line 1 is the header, if any)."""
    return frame.with_columns(
        pl.lit(path.name).alias(FILE_COLUMN),
        (pl.int_range(pl.len(), dtype=pl.Int64) + 1 + header_lines).alias(LINE_COLUMN),
    )
