"""Safe file handling shared by every writer and reader: tensor files loaded without
unpickling code, exclusive locks, atomic writes and locked appends.

Every failure here is a GenctrError naming the file, so the CLI prints one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterator

import filelock
import torch

from genctr.errors import DataError, GenctrError


class InUse(GenctrError):
    """Another genctr process holds the lock of a run folder, cache entry or results file."""


def load_tensors(path: str | Path, what: str = "file") -> Any:
    """`torch.load(..., weights_only=True)`: tensors and plain types only, never code.

    A truncated or damaged file, or one that carries a pickled callable, is a DataError naming
    the file instead of a traceback."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such {what}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: refused to load this {what}: it holds objects other than "
                        f"tensors and plain values ({first[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: damaged or truncated {what} ({first[:160]})") from None


def save_tensors_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: a killed process never leaves half a file."""
    target = Path(path)
    temporary = target.with_suffix(target.suffix + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, target)


@contextlib.contextmanager
def exclusive_lock(lock_path: str | Path, what: str, wait_s: float = 0) -> Iterator[None]:
    """Hold an exclusive lock, or fail (at once by default): a second writer gets one line,
    not a race."""
    lock = filelock.FileLock(str(lock_path), timeout=wait_s)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise InUse(f"{what} is in use by another genctr process (lock {lock_path}); "
                    "wait for it to finish") from None
    try:
        yield
    finally:
        lock.release()


def check_writable(path: str | Path, what: str) -> None:
    """Fail before any work is done when `path` (or the folder it would be created in) cannot
    be written."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: {what} is a directory, not a file")
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise DataError(f"{path}: {what} is not writable")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (results, history, trajectory); [] when it is absent."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def results_lock(path: str | Path) -> contextlib.AbstractContextManager[None]:
    """The lock of a results file; `genctr run` holds it for its whole run."""
    return exclusive_lock(f"{path}.lock", f"results file {path}")


def append_jsonl(path: str | Path, record: dict[str, Any], locked: bool = True) -> None:
    """Append one JSON line; unless the caller already holds the file's lock (`locked=False`),
    take it for the append (waiting up to 30 s), so concurrent writers never interleave."""
    path = Path(path)
    guard = (exclusive_lock(f"{path}.lock", f"results file {path}", wait_s=30) if locked
             else contextlib.nullcontext())
    with guard, path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
