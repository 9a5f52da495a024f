"""Request rows -> columns the run's encoder reads, or a RequestError naming the row and field.

A row is an object of raw values keyed by source column, as `genctr predict` reads a file's
columns: text or integers for categorical fields, numbers (or numeric text) for numeric ones,
a list (or, with the field's separator, one string) for multi and sequence fields, null for a
missing value. Nothing is coerced silently: a float for a categorical field, a boolean, an
object, a non-finite number, an unknown or a missing column is refused with the row and field.
Unseen categories are not an error: they map to OOV, as in training. Each column is checked
in one pass when all its values have the expected type (the common case) and value by value,
to name the first bad row, otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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


@dataclass
class RequestRows:
    """Validated request columns (source column -> one value per row), as
    `genctr.data.encode_fast.encode_rows` reads them."""

    columns: dict[str, list]
    height: int

    @staticmethod
    def concat(parts: list["RequestRows"]) -> "RequestRows":
        """The rows of several requests, in order (one micro-batch)."""
        if len(parts) == 1:
            return parts[0]
        return RequestRows({column: [v for part in parts for v in part.columns[column]]
                            for column in parts[0].columns}, sum(part.height for part in parts))


class RowReader:
    """Validates request rows against the run's schema and builds the encoder's input columns."""

    def __init__(self, encoder: FeatureEncoder, max_rows: int) -> None:
        self.specs: dict[str, FieldSpec] = {spec.source_column: spec for spec in encoder.schema.fields}
        self.max_rows = max_rows

    @property
    def columns(self) -> list[str]:
        return list(self.specs)

    def read(self, rows: Any) -> RequestRows:
        if not isinstance(rows, list) or not rows:
            raise RequestError(422, "'rows' must be a non-empty list of objects", field="rows")
        if len(rows) > self.max_rows:
            raise RequestError(413, f"{len(rows)} rows in one request; at most {self.max_rows}",
                               field="rows")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RequestError(422, f"row {i} is a {type(row).__name__}, not an object", row=i)
            if row.keys() != self.specs.keys():
                self._refuse_fields(row, i)
        return RequestRows({column: _column(rows, column, spec) for column, spec in self.specs.items()},
                           len(rows))

    def _refuse_fields(self, row: dict, i: int) -> None:
        unknown = sorted(set(row) - set(self.specs))
        if unknown:
            raise RequestError(422, f"row {i}: unknown field(s) {unknown}; the model reads "
                               f"{self.columns}", row=i, field=unknown[0])
        missing = [c for c in self.specs if c not in row]
        raise RequestError(422, f"row {i}: missing field(s) {missing} (send null for a "
                           "missing value)", row=i, field=missing[0])


def _column(rows: list[dict], column: str, spec: FieldSpec) -> list:
    """One column's values as the encoder reads them; checked at once when every value has the
    usual type (text; finite floats; lists of text), else one by one."""
    values = [row[column] for row in rows]
    if spec.is_list:
        if all(type(v) is list and all(type(item) is str for item in v) for v in values):
            return values
    elif spec.kind is FieldKind.numeric:
        if all(type(v) is float and math.isfinite(v) for v in values):
            return values
    elif all(type(v) is str for v in values):
        return values
    return [_raw_value(value, spec, i, column) for i, value in enumerate(values)]


def _raw_value(value: Any, spec: FieldSpec, row: int, column: str) -> str | float | list[str] | None:
    """The value as the encoder reads it: text, a finite number, a list of texts or None."""
    def refuse(expected: str) -> RequestError:
        return RequestError(422, f"row {row}, field '{column}': {value!r} is not {expected}",
                            row=row, field=column)

    if value is None:
        return [] if spec.is_list else None
    if isinstance(value, bool) or isinstance(value, dict):
        raise refuse("a valid value")
    if spec.kind is FieldKind.numeric:
        if isinstance(value, (int, float)):
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an integer beyond every float
                finite = False
            if not finite:
                raise refuse("a finite number")
            return value
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
