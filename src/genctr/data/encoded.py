"""EncodedSplit: the numpy columns of one split, saved as .npy files and memory-mapped back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class EncodedSplit:
    """Columns of N rows.

    tokens:   field -> int32 [N] (one token) or [N, max_len] (multi, sequence; 0 = padding)
    values:   numeric field -> float32 [N] (transformed value; its bin is in `tokens`)
    lengths:  multi/sequence field -> int32 [N]
    label:    float32 [N] in {0, 1}
    group:    int64 [N] hashes of the raw value of the schema's group field (the user), or None
    segments: segment name -> bool [N]
    """

    tokens: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    label: np.ndarray
    group: np.ndarray | None
    segments: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, rows: np.ndarray) -> "EncodedSplit":
        """The given rows, in order (index slicing of every column at once)."""
        pick = lambda cols: {k: v[rows] for k, v in cols.items()}  # noqa: E731
        return EncodedSplit(
            pick(self.tokens), pick(self.values), pick(self.lengths), self.label[rows],
            None if self.group is None else self.group[rows], pick(self.segments),
        )

    def columns(self) -> dict[str, np.ndarray]:
        """Every column by its saved name (tokens.F, values.F, lengths.F, segments.S, label,
        group), in the order `save` numbers the files."""
        cols = {f"tokens.{k}": v for k, v in self.tokens.items()}
        cols |= {f"values.{k}": v for k, v in self.values.items()}
        cols |= {f"lengths.{k}": v for k, v in self.lengths.items()}
        cols |= {f"segments.{k}": v for k, v in self.segments.items()}
        cols["label"] = self.label
        if self.group is not None:
            cols["group"] = self.group
        return cols

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for i, (name, array) in enumerate(self.columns().items()):
            np.save(folder / f"{i}.npy", np.ascontiguousarray(array))
            names.append(name)
        (folder / "columns.json").write_text(json.dumps(names))

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> "EncodedSplit":
        """Load a saved split; with `mmap` the columns are read lazily from disk."""
        folder = Path(folder)
        names = json.loads((folder / "columns.json").read_text())
        parts: dict[str, dict[str, np.ndarray]] = {"tokens": {}, "values": {}, "lengths": {},
                                                    "segments": {}}
        label, group = None, None
        for i, name in enumerate(names):
            array = np.load(folder / f"{i}.npy", mmap_mode="r" if mmap else None)
            kind, _, field = name.partition(".")
            if kind == "label":
                label = array
            elif kind == "group":
                group = array
            else:
                parts[kind][field] = array
        return cls(parts["tokens"], parts["values"], parts["lengths"], label, group,
                   parts["segments"])
