"""Where tensors compute: the device, bf16 autocast and moving batches, decided once.

`device: auto | cpu | cuda | cuda:N` (auto: the first CUDA device when there is one). Training,
pre-training, evaluation, prediction and serving take a Runtime and nothing below it assumes
a CPU: models and batches are moved to its device (pinned host memory, non-blocking copies on
CUDA), and bf16 autocast runs on the device's own type. On a CPU without bf16 instructions
autocast is emulated and slower than fp32 (measured: about 3x on an AMD EPYC without them), so
the Runtime says so once.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from genctr.data.batches import Batch, whole_split
from genctr.data.encoded import EncodedSplit
from genctr.distributed import local_device_index
from genctr.errors import ConfigError

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
DEVICE_HELP = "auto (a CUDA device when there is one), cpu, cuda or cuda:N"


def resolve_device(spec: str) -> torch.device:
    if not re.fullmatch(DEVICE_PATTERN, spec):
        raise ConfigError(f"device {spec!r}: choose auto, cpu, cuda or cuda:N")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda" and device.index is None and local_device_index() is not None:
        device = torch.device("cuda", local_device_index())  # a torchrun worker's own GPU
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"device {spec!r}: this machine has {count} CUDA device(s); use "
                              "device: cpu or auto")
    return device


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); Linux flags only."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = cpuinfo.read_text(errors="replace")
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool = False

    @classmethod
    def create(cls, device: str = "auto", bf16: bool = False,
               log: Callable[[str], None] | None = None) -> "Runtime":
        runtime = cls(resolve_device(device), bf16)
        if bf16 and runtime.device.type == "cpu" and not cpu_has_bf16() and log is not None:
            log("note: bf16 is on but this CPU has no bf16 instructions: autocast is emulated "
                "and slower than fp32 here (set bf16: false)")
        return runtime

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16)

    def rng_state(self) -> dict[str, torch.Tensor]:
        """torch's CPU generator, and this CUDA device's, for a checkpoint."""
        state = {"torch_rng": torch.get_rng_state()}
        if self.is_cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, saved: dict) -> None:
        """Restore what rng_state() saved (a CUDA state only on a CUDA runtime)."""
        torch.set_rng_state(saved["torch_rng"])
        if self.is_cuda and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)

    def move(self, batch: Batch) -> Batch:
        """The batch on this device (unchanged on CPU)."""
        return move_batch(batch, self.device)

    def resident(self, split: EncodedSplit, what: str, log: Callable[[str], None]) -> EncodedSplit | Batch:
        """The whole split as one Batch on this device when it takes at most half the device's
        free memory (host memory for the CPU); else the split itself, with a note."""
        columns = [*split.tokens.values(), *split.values.values(), split.label]
        size = sum(c.nbytes for c in columns) + (0 if split.group is None else split.group.nbytes)
        if self.is_cuda:
            free = torch.cuda.mem_get_info(self.device)[0]
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if size > free / 2:
            log(f"note: the {what} ({size / 2 ** 20:,.0f} MiB) does not fit in half the free "
                f"memory of {self.device} ({free / 2 ** 20:,.0f} MiB); batches are copied from the host")
            return split
        return move_batch(whole_split(split), self.device)


def move_batch(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on `device`; from the host through pinned memory, non-blocking."""
    if batch.label.device == device:
        return batch

    def to(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "cpu" and device.type == "cuda":
            return tensor.pin_memory().to(device, non_blocking=True)
        return tensor.to(device)

    group = None if batch.group is None else to(batch.group)
    return Batch({k: to(v) for k, v in batch.tokens.items()},
                 {k: to(v) for k, v in batch.values.items()}, to(batch.label), group)


def model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
