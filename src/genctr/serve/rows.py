"""Request rows -> a frame the run's encoder reads, or a RequestError naming the row and field.

A row is an object of raw values keyed by source column, as `genctr predict` reads a file's
columns: text or integers for categorical fields, numbers (or numeric text) for numeric ones,
a list (or, with the field's separator, one string) for multi and sequence fields, null for a
missing value. Nothing is coerced silently: a float for a categorical field, a boolean, an
object, a non-finite number, an unknown or a missing column is refused with the row and field.
Unseen categories are not an error: they map to OOV, as in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from genctr.data.encode import FeatureEncoder
from genctr.schema import FieldKind, FieldSpec


@dataclass
class RequestError(Exception):
    """A bad request: the HTTP status and a message naming what is wrong and where."""

    status: int
    message: str
    row: int | None = None
    field: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "row": self.row, "field": self.field}


class RowReader:
    """Validates request rows against the run's schema and builds the encoder's input frame."""

    def __init__(self, encoder: FeatureEncoder, max_rows: int) -> None:
        self.specs: dict[str, FieldSpec] = {spec.source_column: spec for spec in encoder.schema.fields}
        self.max_rows = max_rows

    @property
    def columns(self) -> list[str]:
        return list(self.specs)

    def frame(self, rows: Any) -> pl.DataFrame:
        if not isinstance(rows, list) or not rows:
            raise RequestError(422, "'rows' must be a non-empty list of objects", field="rows")
        if len(rows) > self.max_rows:
            raise RequestError(413, f"{len(rows)} rows in one request; at most {self.max_rows}",
                               field="rows")
        data: dict[str, list] = {column: [] for column in self.specs}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RequestError(422, f"row {i} is a {type(row).__name__}, not an object", row=i)
            unknown = sorted(set(row) - set(self.specs))
            if unknown:
                raise RequestError(422, f"row {i}: unknown field(s) {unknown}; the model reads "
                                   f"{self.columns}", row=i, field=unknown[0])
            missing = [c for c in self.specs if c not in row]
            if missing:
                raise RequestError(422, f"row {i}: missing field(s) {missing} (send null for a "
                                   "missing value)", row=i, field=missing[0])
            for column, spec in self.specs.items():
                data[column].append(_raw_value(row[column], spec, i, column))
        types = {c: pl.List(pl.String) if s.is_list else pl.String for c, s in self.specs.items()}
        return pl.DataFrame(data, schema=types)


def _raw_value(value: Any, spec: FieldSpec, row: int, column: str) -> str | list[str] | None:
    """The value as the encoder reads it from a CSV file (text), or a list of texts."""
    def refuse(expected: str) -> RequestError:
        return RequestError(422, f"row {row}, field '{column}': {value!r} is not {expected}",
                            row=row, field=column)

    if value is None:
        return [] if spec.is_list else None
    if isinstance(value, bool) or isinstance(value, dict):
        raise refuse("a valid value")
    if spec.kind is FieldKind.numeric:
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise refuse("a finite number")
            return repr(value) if isinstance(value, float) else str(value)
        if isinstance(value, str):
            try:
                if math.isfinite(float(value)):
                    return value
            except ValueError:
                pass
        raise refuse("a finite number (or null)")
    if spec.is_list:
        if isinstance(value, str):
            if spec.separator is None:
                raise refuse("a list")
            return [item for item in value.split(spec.separator) if item != ""]
        if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                           for v in value):
            return [str(v) for v in value]
        raise refuse("a list of strings or integers")
    if isinstance(value, (str, int)):
        return str(value)
    raise refuse("a string or an integer")
