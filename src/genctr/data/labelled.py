"""The label-scarce regime: which train rows keep their labels.

A seeded fraction of the train rows is labelled; fine-tuning trains on those rows only
(`train.label_fraction`), and a label-aware pre-training (`pretrain.label_fraction`, same
fraction and seed) may learn from their labels while it reads every row's fields. Both draw the
same rows from (fraction, seed), so no held-back label is ever used.
"""

from __future__ import annotations

import numpy as np

from genctr.data.encoded import EncodedSplit


def labelled_count(rows: int, fraction: float) -> int:
    return rows if fraction >= 1.0 else max(1, int(round(fraction * rows)))


def labelled_positions(rows: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of the seeded `fraction` of `rows` that keep their labels."""
    count = labelled_count(rows, fraction)
    if count == rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng([seed, 7177]).choice(rows, count, replace=False))


def labelled_rows(train: EncodedSplit, fraction: float, seed: int) -> EncodedSplit:
    """The labelled rows, in their original order (what a label-scarce fine-tuning trains on).
    Every training passes here: with all rows labelled (the default) nothing is allocated."""
    if labelled_count(len(train), fraction) == len(train):
        return train
    return train.take(labelled_positions(len(train), fraction, seed))


def labels_held_back(train: EncodedSplit, fraction: float, seed: int) -> EncodedSplit:
    """Every row, with the labels outside the labelled fraction replaced by NaN (unknown)."""
    label = np.full(len(train), np.nan, dtype=np.float32)
    kept = labelled_positions(len(train), fraction, seed)
    label[kept] = np.asarray(train.label)[kept]
    return EncodedSplit(train.tokens, train.values, train.lengths, label, train.group, train.segments)
