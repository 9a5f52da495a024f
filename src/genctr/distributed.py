"""Training across processes: `torchrun --nproc_per_node N -m genctr train CONFIG`.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; genctr then joins a process group (gloo on CPU,
nccl on CUDA, one GPU per process: cuda:LOCAL_RANK). Every rank walks the same seeded
permutation of the train rows; each global batch of `batch_size` rows is cut into contiguous
per-rank shards, and each rank's loss is weighted by its share of the batch so that the
gradient DDP averages is the gradient of the whole batch's mean loss: the same step a single
process takes with the same global batch (batch norm and dropout excepted, which see a rank's
rows only). Rank 0 alone writes the run folder (config, checkpoints, history, metrics) and
evaluates valid and test, each row exactly once; the others wait, then read its weights.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: int) -> slice:
        """This rank's contiguous part of a global batch of `rows` rows (sizes differ by ≤ 1)."""
        base, extra = divmod(rows, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank: JSON through a byte tensor (nothing is ever unpickled,
        so torch's object collectives are not used)."""
        if not self.active:
            return value
        data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8) \
            if self.is_main else torch.zeros(0, dtype=torch.uint8)
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0)
        if not self.is_main:
            data = torch.zeros(int(size.item()), dtype=torch.uint8)
        dist.broadcast(data, src=0)
        return json.loads(bytes(data.numpy()).decode())

    def total(self, value: float) -> float:
        """The sum of `value` over the ranks."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def total_array(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of `values` over the ranks."""
        if not self.active:
            return values
        tensor = torch.from_numpy(np.asarray(values, dtype=np.float64).copy())
        dist.all_reduce(tensor)
        return tensor.numpy()

    def gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's bytes, in rank order, on rank 0 ([] on the others): sizes first, then
        the payloads padded to the largest (gloo and nccl gather equal shapes only)."""
        if not self.active:
            return [data]
        size = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else padded[:0]
        parts = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        if not self.is_main:
            return []
        return [bytes(part[:int(n.item())].numpy()) for part, n in zip(parts, sizes)]

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (for a step that does not go
        through DistributedDataParallel's forward, e.g. pre-training's losses())."""
        if not self.active:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= self.world

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the body before the others (e.g. it writes a cache the others then read)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


_CURRENT: Distributed | None = None


def current(device: torch.device | None = None) -> Distributed:
    """The process group torchrun described, joined on first use (nccl when `device` is a GPU,
    else gloo); a single process outside torchrun."""
    global _CURRENT
    if _CURRENT is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            _CURRENT = Distributed()
        else:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo")
            _CURRENT = Distributed(dist.get_rank(), dist.get_world_size())
    return _CURRENT


def local_device_index() -> int | None:
    """The GPU a torchrun worker owns (LOCAL_RANK), or None outside torchrun."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
