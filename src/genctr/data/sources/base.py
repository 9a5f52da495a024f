"""The Source contract and the helpers sources share (reading files, splitting rows)."""

from __future__ import annotations

import csv
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Sequence

import numpy as np
import polars as pl

from genctr.data.raw import RawDataset, describe_rows, with_origin
from genctr.errors import DataError
from genctr.schema import Schema, Strict, parse_model


class Source(ABC):
    """Produces a RawDataset (all rows, a schema, named splits) from files or a generator.

    `input_files` is known before loading so that the encoded cache can be looked up without
    parsing anything.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    how_to_obtain: ClassVar[str]
    Options: ClassVar[type[Strict]]

    def __init__(self, data_dir: str | Path | None = None, **options: Any) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.options = parse_model(self.Options, options, f"options of source '{self.name}'")

    def require_dir(self, *candidates: str) -> Path:
        """The dataset folder: data_dir itself, or one of its subfolders named in `candidates`."""
        if self.data_dir is None:
            raise DataError(f"source '{self.name}' needs --data-dir. {self.how_to_obtain}")
        for sub in ("", *candidates):
            folder = self.data_dir / sub
            if folder.is_dir() and self.looks_complete(folder):
                return folder
        raise DataError(f"source '{self.name}': no dataset files under {self.data_dir} "
                        f"(looked in {['.', *candidates]}). {self.how_to_obtain}")

    def looks_complete(self, folder: Path) -> bool:
        return all((folder / f).is_file() for f in self.expected_files())

    def expected_files(self) -> Sequence[str]:
        return ()

    @abstractmethod
    def input_files(self) -> list[Path]: ...

    @abstractmethod
    def schema(self) -> Schema: ...

    @abstractmethod
    def load(self) -> RawDataset: ...

    @property
    def streams(self) -> bool:
        """Whether `stream_splits` gives chunks (without opening any file to say so)."""
        return False

    def stream_splits(self) -> "dict[str, tuple[Callable[[], Iterator[pl.DataFrame]], int]] | None":
        """Per split, a fresh pass over its rows in chunks and its row count, when the source
        is to be encoded out of core (genctr.data.stream); None: `load` reads it whole."""
        return None

    def cache_identity(self) -> dict[str, Any]:
        """What besides the files and schema determines the rows (options, source name)."""
        return {"source": self.name, "options": self.options.model_dump(mode="json")}


def locate_file(data_dir: Path | None, file: str | None, candidates: Sequence[str],
                source: str) -> Path:
    """`file` (absolute, or under data_dir), else data_dir itself if it is a file, else the
    first of `candidates` found in data_dir."""
    if file is not None:
        path = Path(file) if data_dir is None or Path(file).is_absolute() else data_dir / file
        return require_file(path)
    if data_dir is None:
        raise DataError(f"source '{source}' needs --data-dir (a file, or a folder holding one of "
                        f"{list(candidates)}) or the option 'file'")
    if data_dir.is_file():
        return require_file(data_dir)
    for name in candidates:
        if (data_dir / name).is_file():
            return require_file(data_dir / name)
    raise DataError(f"source '{source}': none of {list(candidates)} in {data_dir}; "
                    "name the file with the option 'file'")


def require_file(path: Path) -> Path:
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path


def read_text_table(path: Path, separator: str = ",", has_header: bool = True,
                    columns: Sequence[str] | None = None, **kwargs: Any) -> pl.DataFrame:
    """Read a delimited file with every column as text (types are the encoder's business).

    Adds the file name and line number of each row for error messages; an empty file, or a
    header with no rows, is an error naming the file.
    """
    require_file(path)
    if has_header and not columns:
        check_header(path, separator)
    try:
        frame = pl.read_csv(path, separator=separator, has_header=has_header,
                            new_columns=list(columns) if columns else None,
                            infer_schema=False, quote_char='"', **kwargs)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as err:
        raise DataError(f"{path}: cannot be read as a {separator!r}-separated table: "
                        f"{str(err).splitlines()[0]}") from None
    if frame.height == 0:
        raise DataError(f"{path}: the file has no data rows")
    return with_origin(frame, path, header_lines=1 if has_header else 0)


def check_header(path: Path, separator: str) -> None:
    """Duplicate column names are an error: polars would silently rename the second one."""
    with path.open("r", newline="", errors="replace") as handle:
        header = next(csv.reader(handle, delimiter=separator), [])
    names = [name.strip() for name in header]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate column name(s) {duplicates} in the header line")


def read_table_file(path: Path, separator: str = ",") -> pl.DataFrame:
    """A CSV (all columns as text) or Parquet file (typed), with file and line of each row."""
    if path.suffix not in (".parquet", ".pq"):
        return read_text_table(path, separator=separator)
    require_file(path)
    try:
        frame = pl.read_parquet(path)
    except Exception as err:  # polars raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if frame.height == 0:
        raise DataError(f"{path}: the file has no data rows")
    return with_origin(frame, path, header_lines=0)


def sniff_separator(path: Path) -> str:
    """Tab if the first line has tabs, else comma (Criteo comes both ways)."""
    with require_file(path).open("r", errors="replace") as handle:
        first = handle.readline()
    return "\t" if "\t" in first else ","


def random_split(n: int, fractions: Sequence[float], seed: int,
                 names: Sequence[str] = ("train", "valid", "test")) -> dict[str, np.ndarray]:
    """Shuffle row indices with a seeded generator and cut them by fractions (summing to 1)."""
    order = np.random.default_rng(seed).permutation(n)
    return cut_by_position(order, fractions, names)


def cut_by_position(order: np.ndarray, fractions: Sequence[float],
                    names: Sequence[str] = ("train", "valid", "test")) -> dict[str, np.ndarray]:
    """Cut an ordering of rows into consecutive parts: first floor(f0*n) rows, and so on."""
    if len(fractions) != len(names) or abs(sum(fractions) - 1) > 1e-9:
        raise DataError(f"split fractions {list(fractions)} must be {len(names)} numbers summing to 1")
    n = len(order)
    bounds = np.floor(np.cumsum(fractions) * n + 1e-9).astype(np.int64)
    bounds[-1] = n
    starts = np.concatenate([[0], bounds[:-1]])
    return {name: order[a:b] for name, a, b in zip(names, starts, bounds)}


class SplitOptions(Strict):
    """How a source without fixed splits divides its rows."""

    split: Literal["random", "temporal"] = "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2024
    time_column: str | None = None


def make_splits(frame: pl.DataFrame, options: SplitOptions) -> dict[str, np.ndarray]:
    if options.split == "random":
        return random_split(frame.height, options.fractions, options.seed)
    if options.time_column is None or options.time_column not in frame.columns:
        raise DataError(f"temporal split needs 'time_column' naming a column; got "
                        f"{options.time_column!r}")
    time = parse_times(frame[options.time_column], frame)
    order = np.argsort(time, kind="stable")
    return cut_by_position(order, options.fractions)


# ISO-8601 layouts after 'T' -> ' ' and 'Z' -> '+00:00'; the ones with an offset first
_ISO_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%:z", "%Y-%m-%d %H:%M%:z",
                "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def parse_times(column: pl.Series, frame: pl.DataFrame) -> np.ndarray:
    """Seconds since the epoch of a time column: numbers (e.g. Unix seconds), ISO-8601 text
    (a date, a date-time, with or without a UTC offset; without one it is read as UTC) or a
    Date/Datetime column. A missing value, or one that is none of these, is an error naming
    the column and its lines: a silent fallback to file order would mislabel the splits."""
    if column.dtype == pl.Date:
        seconds = column.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6
    elif isinstance(column.dtype, pl.Datetime):
        seconds = column.dt.epoch("us").cast(pl.Float64) / 1e6
    elif column.dtype.is_numeric():
        seconds = column.cast(pl.Float64)
    else:
        text = column.cast(pl.String).str.strip_chars()
        seconds = text.cast(pl.Float64, strict=False)
        iso = text.str.replace("T", " ", literal=True).str.replace(r"Z$", "+00:00")
        for layout in _ISO_FORMATS:
            parsed = iso.str.to_datetime(layout, strict=False, time_unit="us")
            if parsed.dtype.time_zone is not None:  # type: ignore[union-attr]
                parsed = parsed.dt.convert_time_zone("UTC")
            seconds = seconds.fill_null(parsed.dt.epoch("us").cast(pl.Float64) / 1e6)
    values = seconds.to_numpy().astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        examples = column.cast(pl.String).gather(bad[:3]).to_list()
        raise DataError(f"time column '{column.name}': {bad.size} value(s) are missing or not a "
                        f"time (a number, ISO-8601 text, a Date or Datetime), e.g. {examples} at "
                        f"{describe_rows(frame, bad)}")
    return values
