"""Encoded-data cache: a source's splits and encoder state, keyed by schema + source files.

The key hashes the schema, the source's options and each input file's content (a file over
HASH_FILES_BELOW: its path, size and modification time, unless `verify_content`), so a changed schema or file never
reuses a stale cache (a FuxiCTR pitfall: it silently reuses a prepared dataset). Entries are written to a temporary folder and renamed into place under the entry's
lock, so an interrupted or concurrent run leaves no half-written entry; an entry that does not
load (damaged by hand or by a full disk) is rebuilt. Columns are memory-mapped when loaded.
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
from genctr.data.sources.base import Source, require_file
from genctr.data.stream import encode_streaming
from genctr.errors import DataError, GenctrError
from genctr.files import exclusive_lock

CACHE_VERSION = 2  # 2: `group` holds a hash of the raw group value, not its token
ENCODER_FILE = "encoder.json"
HASH_FILES_BELOW = 64 << 20  # bytes: smaller input files are keyed by content (under 0.2 s)


@dataclass
class EncodedDataset:
    name: str
    encoder: FeatureEncoder
    splits: dict[str, EncodedSplit]
    folder: Path | None = None  # the cache entry it was loaded from, if any
    from_cache: bool = False  # True when the entry existed: nothing was encoded


def file_digest(path: Path) -> str:
    with require_file(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_identity(path: Path, verify_content: bool) -> dict[str, object]:
    """What identifies an input file's content: its SHA-256 when it is small or `verify_content`
    is set (reads every byte; catches a file rewritten with the same size and time), else its
    path, size and modification time (a stat: instant at any size)."""
    stat = require_file(path).stat()
    if verify_content or stat.st_size < HASH_FILES_BELOW:
        return {"name": path.name, "sha256": file_digest(path)}
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_key(source: Source, verify_content: bool = False) -> str:
    payload = {
        "version": CACHE_VERSION,
        "identity": source.cache_identity(),
        "schema": source.schema().model_dump(mode="json"),
        "files": [file_identity(p, verify_content) for p in source.input_files()],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def encode_source(source: Source) -> EncodedDataset:
    """Load raw rows, fit the encoder on train, encode every split (no cache)."""
    raw = source.load()
    encoder = FeatureEncoder(raw.schema).fit(raw)
    return EncodedDataset(source.name, encoder, encoder.encode(raw))


def prepare(source: Source, cache_dir: str | Path | None = None, mmap: bool = True,
            verify_content: bool = False) -> EncodedDataset:
    """Encoded splits of `source`, from the cache when an entry with the same key exists.
    A streaming source (`stream_splits`) is encoded chunk by chunk into the entry's files."""
    if cache_dir is None:
        if source.streams:
            raise DataError(f"source '{source.name}': streaming encodes into the cache; set "
                            "data.cache_dir (or --cache-dir)")
        return encode_source(source)
    folder = Path(cache_dir) / f"{source.name}-{cache_key(source, verify_content)}"
    cached = _load_if_sound(folder, source.name, mmap)
    if cached is not None:
        return cached
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder.parent / f".{folder.name}.lock", f"cache entry {folder}", wait_s=3600):
        cached = _load_if_sound(folder, source.name, mmap)  # a concurrent writer may have won
        if cached is not None:
            return cached
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
        try:
            streams = source.stream_splits()
            if streams is not None:
                encoder = encode_streaming(source.schema(), streams, staging)
            else:
                dataset = encode_source(source)
                for name, split in dataset.splits.items():
                    split.save(staging / name)
                encoder = dataset.encoder
            encoder.save(staging / ENCODER_FILE)  # written last: marks a complete entry
            if folder.exists():  # damaged: it is genctr's own entry, named by its key
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return load_prepared(folder, source.name, mmap)


def _load_if_sound(folder: Path, name: str, mmap: bool) -> EncodedDataset | None:
    """The cache entry, or None when it is missing or does not load whole."""
    if not (folder / ENCODER_FILE).is_file():
        return None
    try:
        dataset = load_prepared(folder, name, mmap)
    except (OSError, ValueError, KeyError, TypeError, GenctrError):
        return None
    if not dataset.splits or not all(
            len(column) == len(s) for s in dataset.splits.values()
            for column in (*s.tokens.values(), *s.values.values())):
        return None
    dataset.from_cache = True
    return dataset


def load_prepared(folder: Path, name: str, mmap: bool = True) -> EncodedDataset:
    encoder = FeatureEncoder.load(folder / ENCODER_FILE)
    splits = {p.name: EncodedSplit.load(p, mmap=mmap) for p in sorted(folder.iterdir())
              if p.is_dir()}
    return EncodedDataset(name, encoder, splits, folder)
