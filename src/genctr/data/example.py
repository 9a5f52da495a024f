"""`genctr datasets example DIR`: a click log as a user brings one, to try the `tabular` path.

The rows come from the synthetic click model (genctr.data.sources.synthetic), written the way
event logs usually are: a CSV with an ISO-8601 `timestamp`, string ids, a numeric price and a
'|'-separated tag list. configs/example-schema.yaml describes it and
configs/example-tabular.yaml trains on it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

from genctr.data.sources.synthetic import SyntheticOptions, generate
from genctr.errors import DataError

EXAMPLE_FILE = "clicks.csv"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAYS = 30


def write_example(folder: str | Path, rows: int = 20_000, seed: int = 0) -> Path:
    """Write DIR/clicks.csv (never over an existing file) and return its path."""
    path = Path(folder) / EXAMPLE_FILE
    if path.exists():
        raise DataError(f"{path}: already exists; genctr does not overwrite files it did not "
                        "create: choose another folder")
    frame, _ = generate(SyntheticOptions(rows=rows, users=max(rows // 40, 10),
                                         items=max(rows // 100, 10), seed=seed))
    seconds = np.round(frame["time"].to_numpy() * DAYS * 86400).astype(np.int64)
    stamps = [(START + timedelta(seconds=int(s))).strftime("%Y-%m-%dT%H:%M:%SZ") for s in seconds]
    out = frame.drop("time", "true_ctr", "hour").with_columns(pl.Series("timestamp", stamps))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.write_csv(path)
    return path
