"""Small hand-written datasets for the tests."""

import sys

import numpy as np
import polars as pl
import pytest

from genctr.cli import main
from genctr.data.raw import RawDataset
from genctr.schema import Schema


def raw_from_rows(schema: dict, train: dict, test: dict | None = None) -> RawDataset:
    """A RawDataset whose train split is `train` and test split is `test` (column dicts)."""
    frames = [pl.DataFrame(train)] + ([pl.DataFrame(test)] if test else [])
    frame = pl.concat(frames, how="diagonal_relaxed")
    n_train = frames[0].height
    splits = {"train": np.arange(n_train), "test": np.arange(n_train, frame.height)}
    return RawDataset(Schema.model_validate(schema), frame, splits)


def genctr(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in this process: (exit code, everything it printed)."""
    saved = sys.argv
    sys.argv = ["genctr", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as stopped:
            main()
    finally:
        sys.argv = saved
    printed = capsys.readouterr()
    return stopped.value.code or 0, printed.out + printed.err


def one_line_error(code: int, output: str, *names: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert error, output
    for name in names:
        assert name in output, (name, output)
