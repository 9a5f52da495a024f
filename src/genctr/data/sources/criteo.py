"""`criteo`: the Kaggle display-advertising format (label, I1-I13 numerics, C1-C26 hashed).

Tab- or comma-separated, with or without a header (Kaggle's train.txt has none). Numerics are
bucketed by the usual floor(ln(x)^2) rule by default, or by train quantiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal


from genctr.data.raw import RawDataset
from genctr.data.sources.base import (Source, SplitOptions, locate_file, make_splits,
                                      read_text_table, sniff_separator)
from genctr.errors import DataError
from genctr.schema import FieldSpec, LabelSpec, Schema

NUMERIC = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
COLUMNS = ["label", *NUMERIC, *CATEGORICAL]
CANDIDATES = ("train.txt", "criteo_sample.txt", "criteo_sample.csv", "dac_sample.txt")


class CriteoOptions(SplitOptions):
    file: str | None = None
    numeric_binning: Literal["log_square", "quantile"] = "log_square"
    min_count: int = 1


class Criteo(Source):
    name = "criteo"
    summary = "Criteo Kaggle display ads: label, 13 numerics (log^2 buckets), 26 hashed categoricals"
    how_to_obtain = ("Kaggle 'Display Advertising Challenge' (Criteo) train.txt, or any file in "
                     "its format; point --data-dir at the file or its folder. Research terms.")
    Options = CriteoOptions

    def input_files(self) -> list[Path]:
        return [locate_file(self.data_dir, self.options.file, CANDIDATES, self.name)]

    def schema(self) -> Schema:
        opts = self.options
        return Schema(
            name=self.name, label=LabelSpec(column="label"),
            fields=[FieldSpec(name=c, kind="numeric", transform="log1p",
                              binning=opts.numeric_binning) for c in NUMERIC]
            + [FieldSpec(name=c, kind="categorical", min_count=opts.min_count) for c in CATEGORICAL],
        )

    def load(self) -> RawDataset:
        path = self.input_files()[0]
        separator = sniff_separator(path)
        with path.open() as handle:
            has_header = handle.readline().split(separator)[0].strip() == "label"
        frame = read_text_table(path, separator=separator, has_header=has_header,
                                columns=None if has_header else COLUMNS)
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: column(s) {missing} not found")
        return RawDataset(self.schema(), frame, make_splits(frame, self.options))
