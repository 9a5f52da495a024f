"""Reading a CSV or Parquet file in chunks of rows, so that no step holds the whole file.

Chunks carry the same file and line columns as a whole-file read (genctr.data.raw), so an
error in row 31,000,417 names that line. CSV columns are read as text, as `read_text_table`
does; Parquet columns keep their types.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genctr.data.raw import with_origin
from genctr.data.sources.base import check_header, require_file
from genctr.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(path: Path) -> bool:
    return path.suffix in PARQUET_SUFFIXES


def count_rows(path: Path, separator: str = ",") -> int:
    """Data rows in the file (Parquet: from its footer; CSV: one streaming pass)."""
    require_file(path)
    try:
        if is_parquet(path):
            return pq.ParquetFile(path).metadata.num_rows
        return int(pl.scan_csv(path, separator=separator, infer_schema=False, quote_char='"')
                   .select(pl.len()).collect(engine="streaming").item())
    except (pa.ArrowException, pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{path}: cannot be read ({str(err).splitlines()[0]})") from None


def iter_chunks(path: Path, chunk_rows: int, separator: str = ",") -> Iterator[pl.DataFrame]:
    """The file's rows as frames of about `chunk_rows` rows each (CSV blocks vary a little)."""
    require_file(path)
    first_line = 0 if is_parquet(path) else 1  # a CSV's line 1 is its header
    try:
        for batch in _arrow_batches(path, chunk_rows, separator):
            if batch.num_rows == 0:
                continue
            chunk = pl.from_arrow(batch)
            assert isinstance(chunk, pl.DataFrame)
            yield with_origin(chunk, path, header_lines=first_line)
            first_line += batch.num_rows
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot be read near line {first_line + 1} "
                        f"({str(err).splitlines()[0]})") from None


def _arrow_batches(path: Path, chunk_rows: int, separator: str) -> Iterator[pa.RecordBatch]:
    if is_parquet(path):
        # pre_buffer (pyarrow's default) keeps every column chunk read so far until the reader
        # closes: 1 GB after 20M rows. Without it memory follows the chunk, and reading is faster.
        with pq.ParquetFile(path, pre_buffer=False) as reader:
            yield from reader.iter_batches(batch_size=chunk_rows)
        return
    check_header(path, separator)
    with path.open("r", newline="", errors="replace") as handle:
        names = next(csv.reader(handle, delimiter=separator), [])
        sample = [len(line) for _, line in zip(range(1000), handle)]
    # bytes per block: about chunk_rows lines of the length of the first thousand, and room for
    # a line 8x the longest of them (a row may not straddle two blocks)
    line_bytes = sum(sample) / max(len(sample), 1) or 1
    block = int(min(max(line_bytes * chunk_rows, 8 * max(sample, default=1), 1 << 12), 1 << 30))
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=block),
        parse_options=pacsv.ParseOptions(delimiter=separator, quote_char='"'),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                             strings_can_be_null=True, quoted_strings_can_be_null=False),
    )
    yield from reader
