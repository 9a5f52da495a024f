"""Small hand-written datasets for the tests."""

import numpy as np
import polars as pl

from genctr.data.raw import RawDataset
from genctr.schema import Schema


def raw_from_rows(schema: dict, train: dict, test: dict | None = None) -> RawDataset:
    """A RawDataset whose train split is `train` and test split is `test` (column dicts)."""
    frames = [pl.DataFrame(train)] + ([pl.DataFrame(test)] if test else [])
    frame = pl.concat(frames, how="diagonal_relaxed")
    n_train = frames[0].height
    splits = {"train": np.arange(n_train), "test": np.arange(n_train, frame.height)}
    return RawDataset(Schema.model_validate(schema), frame, splits)
