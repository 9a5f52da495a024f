"""Batch: torch tensors of one mini-batch, cut from encoded columns by index slicing."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from genctr.data.encoded import EncodedSplit
from genctr.schema import OOV


@dataclass
class Batch:
    """tokens: field -> int32 [B] or [B, L] (0 = padding); values: numeric field -> float32 [B];
    label: float32 [B]; group: int64 [B] (hashed raw user id) or None."""

    tokens: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    label: torch.Tensor
    group: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, rows: torch.Tensor) -> "Batch":
        """The given rows (int64 [R], repeats allowed), in that order (index_select: half the
        cost of indexing on a served micro-batch's few rows)."""
        rows = rows.to(self.label.device)
        pick = lambda d: {k: v.index_select(0, rows) for k, v in d.items()}  # noqa: E731
        return Batch(pick(self.tokens), pick(self.values), self.label.index_select(0, rows),
                     None if self.group is None else self.group.index_select(0, rows))

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return Batch(move(self.tokens), move(self.values), self.label.to(device),
                     None if self.group is None else self.group.to(device))


# a pytree, so that torch.export takes a Batch as a model's input (genctr export --format pt2)
torch.export.register_dataclass(Batch, serialized_type_name="genctr.data.batches.Batch")


def with_unknown(batch: Batch, chosen: torch.Tensor, names: list[str]) -> Batch:
    """The batch with the chosen fields [B, F] (F: `names`, in order) set to the
    out-of-vocabulary token, as an unseen value arrives: a list field becomes the one item OOV,
    a numeric field's value is missing (its token OOV)."""
    tokens = dict(batch.tokens)
    for i, name in enumerate(names):
        rows, original = chosen[:, i], batch.tokens[name]
        if original.dim() == 1:
            tokens[name] = torch.where(rows, torch.full_like(original, OOV), original)
        else:
            unknown = torch.zeros_like(original)
            unknown[:, 0] = OOV
            tokens[name] = torch.where(rows.unsqueeze(1), unknown, original)
    return Batch(tokens, batch.values, batch.label, batch.group)


def batch_of(split: EncodedSplit, rows: np.ndarray | slice) -> Batch:
    """The given rows of every column as tensors (one gather per column, no Python row loop)."""
    def tensor(column: np.ndarray) -> torch.Tensor:
        # memory-mapped columns are read-only: a slice of one is copied, a gather already is
        # (the flags read directly: np.require's checks cost a served micro-batch ~30 µs)
        picked = column[rows]
        flags = picked.flags
        return torch.from_numpy(picked if flags.c_contiguous and flags.writeable else picked.copy())

    take = lambda cols: {k: tensor(v) for k, v in cols.items()}  # noqa: E731
    group = None if split.group is None else tensor(split.group)
    return Batch(take(split.tokens), take(split.values), tensor(split.label), group)


def whole_split(split: EncodedSplit) -> Batch:
    """Every row of a split as one Batch (to keep it resident on a device, `train.split_on_device`)."""
    return batch_of(split, slice(0, len(split)))


def batch_order(n: int, seed: int, block_rows: int | None = None) -> np.ndarray:
    """A seeded order of n rows: a full permutation, or with `block_rows` the blocks of that many
    consecutive rows in a permuted order, each block's rows permuted (reads stay within one
    block at a time: what a split larger than memory needs from the page cache)."""
    rng = np.random.default_rng(seed)
    if block_rows is None or block_rows >= n:
        return rng.permutation(n)
    starts = np.arange(0, n, block_rows)[rng.permutation(-(-n // block_rows))]
    return np.concatenate([start + rng.permutation(min(block_rows, n - start)) for start in starts])


def iterate_batches(split: EncodedSplit | Batch, batch_size: int, shuffle: bool = False,
                    seed: int = 0, drop_last: bool = False, block_rows: int | None = None,
                    start_batch: int = 0) -> Iterator[Batch]:
    """Mini-batches in row order, or shuffled by a generator seeded with `seed` (`block_rows`:
    by blocks, batch_order). `start_batch` skips the first batches of that same order without
    reading them (a run resumed mid-epoch). From a resident Batch (whole_split) they are
    gathered where it lives, in the same order as from the split."""
    n = len(split)
    order = batch_order(n, seed, block_rows) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    first = start_batch * batch_size
    if isinstance(split, Batch):
        device = split.label.device
        index = torch.from_numpy(order).to(device) if order is not None else torch.arange(n, device=device)
        for start in range(first, stop, batch_size):
            yield split.take(index[start:start + batch_size])
        return
    for start in range(first, stop, batch_size):
        end = min(start + batch_size, n)
        yield batch_of(split, order[start:end] if order is not None else slice(start, end))


def prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """The same batches, gathered `depth` ahead by a background thread, so that reading the
    next batch's rows (numpy releases the GIL while it copies) overlaps the current step."""
    if depth < 1:
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def fill() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        ready.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(done)
        except BaseException as error:  # handed to the consumer, raised there
            ready.put(error)

    worker = threading.Thread(target=fill, daemon=True, name="genctr-prefetch")
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early (an error, a kill): let the thread end
        stop.set()
        while worker.is_alive():
            try:
                ready.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)
