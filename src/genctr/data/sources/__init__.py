"""Dataset sources, chosen by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genctr.data.sources.avazu import Avazu
from genctr.data.sources.base import Source
from genctr.data.sources.criteo import Criteo
from genctr.data.sources.frappe import FrappeX1
from genctr.data.sources.movielens import MovieLensCTR
from genctr.data.sources.synthetic import Synthetic
from genctr.data.sources.tabular import Tabular
from genctr.errors import ConfigError

SOURCES: dict[str, type[Source]] = {
    cls.name: cls for cls in (Synthetic, MovieLensCTR, FrappeX1, Criteo, Avazu, Tabular)
}


def make_source(name: str, data_dir: str | Path | None = None, **options: Any) -> Source:
    """The source registered under `name`, with its options validated."""
    if name not in SOURCES:
        raise ConfigError(f"unknown source '{name}'; choose one of {sorted(SOURCES)}")
    return SOURCES[name](data_dir, **options)


__all__ = ["SOURCES", "Source", "make_source"]
