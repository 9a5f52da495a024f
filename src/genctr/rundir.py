"""Run folders that never cost a user a file: genctr writes only into folders it created.

A folder made by `genctr train` or `genctr pretrain` holds a marker file. An existing folder is
- used in place to continue it (`--resume`), under an exclusive lock;
- replaced (`--overwrite`) only if it carries the marker, and only once the new run has
  succeeded: the new run is built in a staging folder beside it and swapped in at the end, so
  a failed attempt leaves the finished run as it was;
- otherwise refused with one line. A folder without the marker is never written to unless it
  is empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator, Literal

from pydantic import BaseModel, ValidationError

from genctr.distributed import Distributed
from genctr.errors import ConfigError, DataError
from genctr.files import exclusive_lock
from genctr.provenance import now_iso

MARKER = ".genctr-run"
LOCK = ".genctr.lock"
Kind = Literal["train", "pretrain"]


def validate_run_name(name: str) -> str:
    """A run name is one folder name: no separator, no '..', not absolute (it may not escape
    output_dir)."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name
            or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()):
        raise ValueError(f"run name {name!r} must be a single folder name (no '/', '\\\\' or "
                         "'..', not absolute); use output_dir or --output to choose the folder")
    return name


def run_kind(folder: Path) -> str | None:
    """'train' or 'pretrain' for a folder genctr created, None for any other folder."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError):
        return None


def _write_marker(folder: Path, kind: Kind) -> None:
    (folder / MARKER).write_text(json.dumps({"kind": kind, "created_at": now_iso()}) + "\n")


@contextlib.contextmanager
def open_run_folder(target: str | Path, kind: Kind, resume: bool = False,
                    overwrite: bool = False) -> Iterator[tuple[Path, bool]]:
    """Yield (folder to write into, whether it is an existing run being continued).

    Call it only after the config and data have been validated: nothing is created before."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise DataError(f"{target}: exists and is not a folder; choose another run folder")
    existing = target.is_dir() and any(target.iterdir())
    found = run_kind(target) if existing else None
    if existing and found is None:
        raise DataError(f"{target}: the folder holds files genctr did not create; genctr never "
                        "writes into or replaces such a folder: choose another output folder")
    if found is not None and found != kind:
        raise DataError(f"{target}: is a genctr {found} run, not a {kind} run")
    if found is not None and not (resume or overwrite):
        raise DataError(f"{target}: a {kind} run already exists there; pass --resume to continue "
                        "it or --overwrite to replace it once the new run has succeeded")
    if found is not None and resume:
        with exclusive_lock(target / LOCK, f"run folder {target}"):
            yield target, True
        return
    if found is not None:  # overwrite: build beside it, swap at the end
        with exclusive_lock(target / LOCK, f"run folder {target}"):
            staging = target.parent / f".{target.name}.staging-{os.getpid()}"
            staging.mkdir()
            _write_marker(staging, kind)
            try:
                with exclusive_lock(staging / LOCK, f"run folder {staging}"):
                    yield staging, False
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            trash = target.parent / f".{target.name}.replaced-{os.getpid()}"
            os.replace(target, trash)
            os.replace(staging, target)
        shutil.rmtree(trash, ignore_errors=True)
        return
    target.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target / LOCK, f"run folder {target}"):
        _write_marker(target, kind)
        yield target, False


@contextlib.contextmanager
def open_run_folder_on_ranks(target: str | Path, kind: Kind, resume: bool, overwrite: bool,
                             ranks: Distributed) -> Iterator[tuple[Path, bool]]:
    """open_run_folder on rank 0 of a torchrun group; the other ranks learn its folder (to read
    its checkpoint and weights) and never write there. A single process: open_run_folder."""
    if not ranks.active:
        with open_run_folder(target, kind, resume, overwrite) as opened:
            yield opened
        return
    if ranks.is_main:
        with open_run_folder(target, kind, resume, overwrite) as (folder, existing):
            ranks.broadcast([str(folder), existing])
            yield folder, existing
            ranks.barrier()  # the others have finished reading before the folder is closed
        return
    folder, existing = ranks.broadcast(None)
    yield Path(folder), existing
    ranks.barrier()


def require_run_file(folder: Path, name: str, what: str) -> Path:
    """A part of a saved run, or one line saying which part is missing."""
    path = folder / name
    if not folder.is_dir():
        raise DataError(f"{folder}: no such run folder")
    if not path.is_file():
        raise DataError(f"{folder}: not a complete {what} (missing {name})")
    return path


def check_config_unchanged(saved: dict, new: BaseModel, may_change: set[str], where: Path) -> None:
    """Refuse to continue a run whose config differs in anything but `may_change` keys.

    The saved config is read through the new config's schema first, so that an option added to
    genctr after the run was made counts as unchanged when it keeps its default (defaults keep
    the old behaviour); a saved config the schema no longer reads is compared as it is."""
    try:
        saved = type(new).model_validate(saved).model_dump(mode="json")
    except ValidationError:
        pass
    flat_saved, flat_new = _flatten(saved), _flatten(new.model_dump(mode="json"))
    differing = sorted(k for k in flat_saved.keys() | flat_new.keys()
                       if flat_saved.get(k) != flat_new.get(k) and k not in may_change)
    if differing:
        raise ConfigError(f"{where}: the config differs from the saved run in {differing}; "
                          f"only {sorted(may_change)} may change on --resume (use --overwrite or "
                          "another output folder to train with the new config)")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat
