"""Where a result came from: the project's git commit, the machine, the time."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


# benchmark outputs: records appended by a running benchmark do not make its code "dirty"
NOT_CODE = (":(exclude,top)benchmarks/results", ":(exclude,top)benchmarks/plots",
            ":(exclude,top)benchmarks/*.md")


def git_commit(folder: str | Path = ".") -> str:
    """The checked-out commit, with '+dirty' when tracked files other than benchmark outputs
    (records, plots, rendered markdown) have uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=folder,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *NOT_CODE], cwd=folder, capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(device: str | None = None) -> str:
    """e.g. '2 cores, Intel(R) Xeon(R) Platinum 8481C CPU' (nproc and CPU model); for a CUDA
    `device`, the GPU first: 'NVIDIA H200, 16 cores, ...'."""
    if device and device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(torch.device(device))}, {machine()}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
