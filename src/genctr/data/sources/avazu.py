"""`avazu`: the Kaggle Avazu CTR format (CSV; `hour` YYMMDDHH expanded to hour/weekday/weekend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from genctr.data.raw import RawDataset
from genctr.data.sources.base import (Source, SplitOptions, locate_file, make_splits,
                                      read_text_table)
from genctr.errors import DataError
from genctr.schema import FieldSpec, LabelSpec, Schema

CATEGORICAL = ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
               "app_domain", "app_category", "device_id", "device_ip", "device_model",
               "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19",
               "C20", "C21"]
CANDIDATES = ("train", "train.csv", "avazu_sample.txt")


class AvazuOptions(SplitOptions):
    file: str | None = None
    min_count: int = 1


class Avazu(Source):
    name = "avazu"
    summary = "Avazu Kaggle mobile ads: 21 categoricals + hour/weekday/weekend from YYMMDDHH"
    how_to_obtain = ("Kaggle 'Click-Through Rate Prediction' (Avazu) train file, or any CSV in its "
                     "format; point --data-dir at the file or its folder. Kaggle terms.")
    Options = AvazuOptions

    def input_files(self) -> list[Path]:
        return [locate_file(self.data_dir, self.options.file, CANDIDATES, self.name)]

    def schema(self) -> Schema:
        names = ["hour_of_day", "weekday", "weekend", *CATEGORICAL]
        return Schema(name=self.name, label=LabelSpec(column="click"),
                      fields=[FieldSpec(name=c, kind="categorical", min_count=self.options.min_count)
                              for c in names])

    def load(self) -> RawDataset:
        path = self.input_files()[0]
        frame = read_text_table(path)
        missing = [c for c in ["click", "hour", *CATEGORICAL] if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: column(s) {missing} not found")
        frame = frame.with_columns(expand_hour(frame["hour"], path, frame))
        return RawDataset(self.schema(), frame, make_splits(frame, self.options))


def expand_hour(hour: pl.Series, path: Path, frame: pl.DataFrame) -> list[pl.Series]:
    """YYMMDDHH -> hour of day, weekday (0 = Monday) and weekend flag."""
    text = hour.str.strip_chars()
    bad = np.flatnonzero(~text.str.contains(r"^\d{8}$").fill_null(False).to_numpy())
    if bad.size:
        lines = frame["__line"].gather(bad[:5]).to_list()
        raise DataError(f"{path}: column 'hour' must be YYMMDDHH, line(s) {lines}")
    day = pl.DataFrame({"d": text.str.slice(0, 6)}).select(
        pl.col("d").str.strptime(pl.Date, "%y%m%d", strict=False))["d"]
    if day.is_null().any():
        rows = np.flatnonzero(day.is_null().to_numpy())
        raise DataError(f"{path}: column 'hour' holds an impossible date, line(s) "
                        f"{frame['__line'].gather(rows[:5]).to_list()}")
    weekday = day.dt.weekday() - 1  # polars: Monday = 1
    return [text.str.slice(6, 2).alias("hour_of_day"), weekday.cast(pl.String).alias("weekday"),
            (weekday >= 5).cast(pl.Int8).cast(pl.String).alias("weekend")]
