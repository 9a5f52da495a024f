"""Encoded-data cache: a source's splits and encoder state, keyed by schema + source files.

The key hashes the schema, the source's options and each input file's content, so a changed
schema or file never reuses a stale cache (a FuxiCTR pitfall: it silently reuses a prepared
dataset). Entries are written to a temporary folder and renamed into place, so an interrupted
run leaves no half-written entry. Columns are memory-mapped when loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from genctr.data.encode import FeatureEncoder
from genctr.data.encoded import EncodedSplit
from genctr.data.sources.base import Source

CACHE_VERSION = 1
ENCODER_FILE = "encoder.json"


@dataclass
class EncodedDataset:
    name: str
    encoder: FeatureEncoder
    splits: dict[str, EncodedSplit]
    folder: Path | None = None  # the cache entry it was loaded from, if any


def file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cache_key(source: Source) -> str:
    payload = {
        "version": CACHE_VERSION,
        "identity": source.cache_identity(),
        "schema": source.schema().model_dump(mode="json"),
        "files": [{"name": p.name, "sha256": file_digest(p)} for p in source.input_files()],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def encode_source(source: Source) -> EncodedDataset:
    """Load raw rows, fit the encoder on train, encode every split (no cache)."""
    raw = source.load()
    encoder = FeatureEncoder(raw.schema).fit(raw)
    return EncodedDataset(source.name, encoder, encoder.encode(raw))


def prepare(source: Source, cache_dir: str | Path | None = None, mmap: bool = True) -> EncodedDataset:
    """Encoded splits of `source`, from the cache when an entry with the same key exists."""
    if cache_dir is None:
        return encode_source(source)
    folder = Path(cache_dir) / f"{source.name}-{cache_key(source)}"
    if not (folder / ENCODER_FILE).is_file():
        dataset = encode_source(source)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
        try:
            for name, split in dataset.splits.items():
                split.save(staging / name)
            dataset.encoder.save(staging / ENCODER_FILE)  # written last: marks a complete entry
            os.replace(staging, folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (folder / ENCODER_FILE).is_file():  # not a concurrent writer's success
                raise
    return load_prepared(folder, source.name, mmap)


def load_prepared(folder: Path, name: str, mmap: bool = True) -> EncodedDataset:
    encoder = FeatureEncoder.load(folder / ENCODER_FILE)
    splits = {p.name: EncodedSplit.load(p, mmap=mmap) for p in sorted(folder.iterdir())
              if p.is_dir()}
    return EncodedDataset(name, encoder, splits, folder)
