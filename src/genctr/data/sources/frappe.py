"""`frappe-x1`: Frappe with the BARS/NFM protocol rebuilt (BENCHMARKS.md).

Valid and test are NFM's libFM files as given. Train = every row of `original/frappe.csv`
encoded like the libFM files, minus (as a multiset) the positives of valid and test, plus two
sampled negatives per train positive (same user and context, another item drawn uniformly,
numpy `default_rng(2018)`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from genctr.data.raw import FILE_COLUMN, LINE_COLUMN, RawDataset
from genctr.data.sources.base import Source, read_text_table, require_file
from genctr.errors import DataError
from genctr.schema import FieldSpec, LabelSpec, Schema, Strict

FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
          "country", "city")
# first libFM index of each field's block (NFM's frappe files; see shared/data/frappe/README.md)
OFFSETS = (0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149, 5382)
N_ITEMS = OFFSETS[2] - OFFSETS[1]
VALID_FILE = "nfm_libfm/frappe.validation.libfm"
TEST_FILE = "nfm_libfm/frappe.test.libfm"
LOG_FILE = "original/frappe.csv"


class FrappeOptions(Strict):
    negatives_per_positive: int = 2
    negative_seed: int = 2018


class FrappeX1(Source):
    name = "frappe-x1"
    summary = ("Frappe (BARS Frappe_x1 rebuilt): 10 categorical fields, NFM valid/test, "
               "train positives exact and train negatives re-sampled with seed 2018")
    how_to_obtain = ("Point --data-dir at a folder with original/frappe.csv (the Frappe zip in "
                     "GitHub irecsys/CARSKit, context-aware_data_sets/Mobile_Frappe.zip) and "
                     "nfm_libfm/frappe.{validation,test}.libfm (GitHub "
                     "hexiangnan/neural_factorization_machine, data/frappe). Research use only.")
    Options = FrappeOptions

    def expected_files(self) -> tuple[str, ...]:
        return (LOG_FILE, VALID_FILE, TEST_FILE)

    def input_files(self) -> list[Path]:
        folder = self.require_dir("frappe")
        return [folder / f for f in self.expected_files()]

    def schema(self) -> Schema:
        return Schema(name=self.name, label=LabelSpec(column="label"),
                      fields=[FieldSpec(name=f, kind="categorical") for f in FIELDS],
                      group="user")

    def load(self) -> RawDataset:
        log_path, valid_path, test_path = self.input_files()
        valid, test = read_libfm(valid_path), read_libfm(test_path)
        positives = encode_log(log_path)
        held_out = pl.concat([valid.filter(pl.col("label") == 1), test.filter(pl.col("label") == 1)])
        train_pos = subtract_multiset(positives, held_out.select(FIELDS))
        train_neg = sample_negatives(train_pos, self.options.negatives_per_positive,
                                     self.options.negative_seed)
        train = pl.concat([
            train_pos.with_columns(pl.lit(1, pl.Int64).alias("label"),
                                   pl.lit(log_path.name).alias(FILE_COLUMN)),
            train_neg.with_columns(pl.lit(0, pl.Int64).alias("label"),
                                   pl.lit("sampled negative").alias(FILE_COLUMN),
                                   pl.lit(None, pl.Int64).alias(LINE_COLUMN)),
        ], how="diagonal_relaxed")
        frame = pl.concat([train, valid, test], how="diagonal_relaxed")
        bounds = np.cumsum([0, train.height, valid.height, test.height])
        splits = {name: np.arange(bounds[i], bounds[i + 1])
                  for i, name in enumerate(("train", "valid", "test"))}
        frame = frame.with_columns(pl.col(f).cast(pl.String) for f in FIELDS)
        return RawDataset(self.schema(), frame, splits)


def read_libfm(path: Path) -> pl.DataFrame:
    """NFM's libFM rows `label idx:1 ...` -> one integer code per field, label in {0, 1}."""
    require_file(path)
    table = pl.read_csv(path, separator=" ", has_header=False, infer_schema=False,
                        new_columns=["label", *FIELDS])
    if table.width != len(FIELDS) + 1:
        raise DataError(f"{path}: expected a label and {len(FIELDS)} features per line")
    columns = {}
    for i, name in enumerate(FIELDS):
        index = table[name].str.split(":").list.first().cast(pl.Int64, strict=False).to_numpy()
        code = index - OFFSETS[i]
        bad = np.flatnonzero(np.isnan(index.astype(float)) | (code < 0) | (index >= OFFSETS[i + 1]))
        if bad.size:
            raise DataError(f"{path}: feature {i + 1} ({name}) outside its index block "
                            f"[{OFFSETS[i]}, {OFFSETS[i + 1]}) at line(s) {(bad[:5] + 1).tolist()}")
        columns[name] = code
    label = table["label"].to_numpy()
    bad = np.flatnonzero((label != "1") & (label != "-1"))
    if bad.size:
        raise DataError(f"{path}: label must be 1 or -1, line(s) {(bad[:5] + 1).tolist()}")
    return pl.DataFrame({"label": (label == "1").astype(np.int64), **columns}).with_columns(
        pl.lit(path.name).alias(FILE_COLUMN),
        (pl.int_range(pl.len(), dtype=pl.Int64) + 1).alias(LINE_COLUMN),
    )


def encode_log(path: Path) -> pl.DataFrame:
    """frappe.csv rows as libFM codes: context code k is the k-th value in first-appearance order."""
    log = read_text_table(path, separator="\t")
    missing = [f for f in FIELDS if f not in log.columns]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found")
    codes = {}
    for name in FIELDS:
        if name in ("user", "item"):
            codes[name] = log[name].cast(pl.Int64)
        else:
            first_seen = log[name].unique(maintain_order=True)
            codes[name] = log[name].replace_strict(first_seen, np.arange(len(first_seen)),
                                                   return_dtype=pl.Int64)
    return pl.DataFrame(codes).with_columns(log[LINE_COLUMN])


def subtract_multiset(rows: pl.DataFrame, remove: pl.DataFrame) -> pl.DataFrame:
    """`rows` minus `remove` as multisets of field tuples: the first occurrences go."""
    occurrence = pl.int_range(pl.len()).over(list(FIELDS)).alias("_occurrence")
    removed = remove.group_by(list(FIELDS)).len("_removed")
    kept = (rows.with_columns(occurrence)
            .join(removed, on=list(FIELDS), how="left", maintain_order="left")
            .filter(pl.col("_occurrence") >= pl.col("_removed").fill_null(0)))
    return kept.drop("_occurrence", "_removed")


def sample_negatives(positives: pl.DataFrame, per_positive: int, seed: int) -> pl.DataFrame:
    """Per positive, `per_positive` rows with its user and context and another item (uniform)."""
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, N_ITEMS - 1, size=(positives.height, per_positive))
    item = positives["item"].to_numpy()[:, None]
    other = draw + (draw >= item)  # skip the positive's own item: uniform over the others
    base = positives.select(FIELDS).with_row_index("_row")
    repeated = base.gather(np.repeat(np.arange(positives.height), per_positive))
    return repeated.with_columns(pl.Series("item", other.reshape(-1))).drop("_row")
