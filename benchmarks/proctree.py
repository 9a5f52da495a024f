"""Run a command and measure the peak resident memory of its whole process tree.

Ray (used by FuxiCTR) does its work in worker processes, so the peak RSS of the parent alone
would under-count; both tools are measured the same way, by polling /proc every 50 ms.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _tree_rss_kb(root: int, field: str = "VmRSS") -> int:
    """The sum of a /proc status field (kB) over a process tree: VmRSS (all resident pages, the
    page cache a process has memory-mapped included) or RssAnon (its own memory only)."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
        stack += _children(pid)
    return total


def run_measured(command: list[str], timeout: float = 1800) -> tuple[dict, float]:
    """Run `command`, which prints one JSON object as its last stdout line.

    Returns that object and the peak RSS of the process tree in MB.
    """
    result, peaks = run_measured_detail(command, timeout)
    return result, peaks["peak_rss_mb"]


def run_measured_detail(command: list[str], timeout: float = 1800) -> tuple[dict, dict[str, float]]:
    """As run_measured; the peaks are {peak_rss_mb, peak_anon_mb} (VmRSS and RssAnon)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, peak_anon = 0, 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak, peak_anon
        while not done.is_set():
            peak = max(peak, _tree_rss_kb(process.pid))
            peak_anon = max(peak_anon, _tree_rss_kb(process.pid, "RssAnon"))
            time.sleep(0.05)

    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    last = [line for line in stdout.strip().splitlines() if line.startswith("{")][-1]
    return json.loads(last), {"peak_rss_mb": peak / 1024, "peak_anon_mb": peak_anon / 1024}
