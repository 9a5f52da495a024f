"""Field kinds and the dataset Schema, loaded from YAML with strict validation.

Every field becomes one discrete token per row (numerics also keep their float value), so the
same schema serves the discriminative backbones and the generative model. Unknown keys are
rejected with the key's name and the file it came from.
"""

from __future__ import annotations

import operator
import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genctr.errors import ConfigError

PAD = 0
OOV = 1
FIRST_VALUE = 2  # ids 0 and 1 are reserved for padding and out-of-vocabulary


class Strict(BaseModel):
    """Base of every config model: unknown keys are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldKind(str, Enum):
    id = "id"
    categorical = "categorical"
    multi = "multi"
    numeric = "numeric"
    sequence = "sequence"


class FieldSpec(Strict):
    """One input field. Options that do not apply to a kind are rejected by `_check_kind`."""

    name: str
    kind: FieldKind
    column: str | None = Field(None, description="source column; defaults to the field name")
    # categorical-like kinds (id, categorical, multi, sequence)
    min_count: int = Field(1, ge=1, description="values seen fewer times in train map to OOV")
    max_vocab: int | None = Field(None, ge=1, description="keep only the most frequent values")
    # numeric
    on_invalid: Literal["error", "fill"] = "error"
    fill_value: float = 0.0
    transform: Literal["none", "log1p", "standard"] = "none"
    binning: Literal["quantile", "log_square"] = "quantile"
    bins: int = Field(10, ge=2, description="number of quantile bins of a numeric field")
    # multi and sequence
    separator: str | None = None
    max_len: int | None = Field(None, ge=1)
    share_vocab: str | None = Field(None, description="field whose vocabulary this one uses")

    @property
    def source_column(self) -> str:
        return self.column or self.name

    @property
    def is_list(self) -> bool:
        return self.kind in (FieldKind.multi, FieldKind.sequence)

    @model_validator(mode="after")
    def _check_kind(self) -> "FieldSpec":
        numeric_only = {"on_invalid", "fill_value", "transform", "binning", "bins"}
        list_only = {"separator", "max_len"}
        vocab_only = {"min_count", "max_vocab", "share_vocab"}
        given = self.model_fields_set
        misplaced: set[str] = set()
        if self.kind is FieldKind.numeric:
            misplaced = given & (list_only | vocab_only)
        else:
            misplaced = given & numeric_only
            if not self.is_list:
                misplaced |= given & (list_only | {"share_vocab"})
        if misplaced:
            raise ValueError(
                f"field '{self.name}' of kind '{self.kind.value}' does not take option(s) "
                f"{sorted(misplaced)}"
            )
        if self.is_list and self.max_len is None:
            raise ValueError(f"field '{self.name}' of kind '{self.kind.value}' needs 'max_len'")
        return self


_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
_OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
              ">": operator.gt, "<": operator.lt}


class LabelSpec(Strict):
    """The label column and, when it is not already 0/1, a comparison such as `>= 4`."""

    column: str
    rule: str | None = Field(None, description="e.g. '>= 4'; None: the column must hold 0/1")

    @model_validator(mode="after")
    def _check_rule(self) -> "LabelSpec":
        if self.rule is not None and not _RULE.match(self.rule):
            raise ValueError(
                f"label rule {self.rule!r} is not '<op> <number>' with op in {sorted(_OPERATORS)}"
            )
        return self

    def comparison(self) -> tuple[Any, float] | None:
        """The rule as (operator function, threshold), parsed without eval."""
        if self.rule is None:
            return None
        op, number = _RULE.match(self.rule).groups()  # type: ignore[union-attr]
        return _OPERATORS[op], float(number)


class SegmentSpec(Strict):
    """Rows whose value of `field` occurred between min and max times in train (inclusive)."""

    name: str
    field: str
    min_train_rows: int = Field(0, ge=0)
    max_train_rows: int | None = Field(None, ge=0)


def user_activity_segments(field: str) -> list[SegmentSpec]:
    """cold (no train rows), tail (1-10) and warm (more than 10) users, as BENCHMARKS.md defines."""
    return [SegmentSpec(name="cold", field=field, min_train_rows=0, max_train_rows=0),
            SegmentSpec(name="tail", field=field, min_train_rows=1, max_train_rows=10),
            SegmentSpec(name="warm", field=field, min_train_rows=11)]


class Schema(Strict):
    name: str
    label: LabelSpec
    fields: list[FieldSpec]
    group: str | None = Field(None, description="field holding the user, for gAUC and segments")
    segments: list[SegmentSpec] = []

    @model_validator(mode="after")
    def _check_references(self) -> "Schema":
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate field name(s) {duplicates}")
        known = set(names)
        for f in self.fields:
            if f.share_vocab is not None:
                target = self.field(f.share_vocab) if f.share_vocab in known else None
                if target is None:
                    raise ValueError(f"field '{f.name}': share_vocab '{f.share_vocab}' is not a field")
                if target.kind is FieldKind.numeric or target.share_vocab is not None:
                    raise ValueError(
                        f"field '{f.name}': share_vocab must name a categorical-like field "
                        f"that owns its vocabulary, not '{target.name}'"
                    )
        if self.group is not None and self.group not in known:
            raise ValueError(f"group '{self.group}' is not a field")
        for seg in self.segments:
            if seg.field not in known:
                raise ValueError(f"segment '{seg.name}': field '{seg.field}' is not a field")
        return self

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line per problem, naming the key path, e.g. `fields.3.bins: ...`."""
    lines = []
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key '{path}'")
        else:
            lines.append(f"{where}: {path}: {item['msg']}")
    return "\n".join(lines)


def parse_model(model: type[BaseModel], data: Any, where: str) -> Any:
    """Validate `data` into `model`, turning pydantic's error into a ConfigError naming `where`."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def load_schema(path: str | Path) -> Schema:
    """Read a schema YAML file; every problem names the file and the key."""
    return parse_model(Schema, read_yaml(path), str(path))
