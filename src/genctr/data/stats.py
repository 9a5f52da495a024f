"""Row counts, positive rates and segment sizes of encoded splits (`genctr datasets stats`)."""

from __future__ import annotations

from typing import Any

from genctr.data.store import EncodedDataset


def split_stats(dataset: EncodedDataset) -> list[dict[str, Any]]:
    """One record per split: rows, positives, positive rate, and rows per segment."""
    records = []
    for name in ("train", "valid", "test"):
        split = dataset.splits.get(name)
        if split is None:
            continue
        rows = len(split)
        positives = int(split.label.sum())
        records.append({
            "split": name, "rows": rows, "positives": positives,
            "positive_rate": positives / rows if rows else 0.0,
            "segments": {seg: int(mask.sum()) for seg, mask in split.segments.items()},
        })
    return records


def vocabulary_sizes(dataset: EncodedDataset) -> dict[str, int]:
    return {f.name: dataset.encoder.vocab_size(f.name) for f in dataset.encoder.schema.fields}
